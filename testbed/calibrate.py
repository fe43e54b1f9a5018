"""Calibrating the simulator's per-datagram host cost on this machine.

Owns measuring what one datagram costs the real stack end to end beyond
the link model -- ttnet's Python engine and socket calls on each side plus,
on kernels without netem, the NFQUEUE verdict daemon -- and storing it in
``results/calibration.json`` for :mod:`testbed.simulate`.

Method: emulate a two-ensemble topology whose link has a known, small
delay, send ``ensure=True`` messages of one size back to back, and take the
median one-way latency. Then search the host cost for which the simulator,
running the same topology, gives the same median (latency grows
monotonically with the cost, so bisection converges). Recalibrate with
``python -m testbed calibrate`` after changing the machine, the kernel or
ttnet's engine.

Must never: be silently skipped -- an uncalibrated simulation says so in its
metadata (``host_cost.source == "default"``).
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from testbed.model import Flow, LinkSpec, Topology

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path("results") / "calibration.json"
#: Used when no calibration exists: roughly what the UDP stack alone costs
#: per datagram on a 2-core VM (measured once here; recalibrate!).
DEFAULT_HOST_COST_S = 40e-6


def calibration_topology(size: int = 120_000, count: int = 25, delay_s: float = 0.005) -> Topology:
    link = LinkSpec(delay_s=delay_s)
    flow = Flow(name="bulk", src="c0", dst="c1", sizes=(size,), count=count,
                interval_s=0.25, ensure=True, deadline_s=10.0)
    return Topology(name="calibration", ensembles=("c0", "c1"), default_link=link,
                    flows=(flow,), seed=7)


def _median_latency(events: list[dict]) -> float:
    sends = {(e["flow"], e["msg"]): e["t"] for e in events if e["event"] == "send"}
    lat = [e["t"] - sends[(e["flow"], e["msg"])] for e in events
           if e["event"] == "deliver" and (e["flow"], e["msg"]) in sends]
    if not lat:
        raise RuntimeError("calibration run delivered nothing; check the testbed with "
                           "`python -m testbed run pair`")
    return statistics.median(lat)


def fit_host_cost(topology: Topology, target_s: float, lo: float = 0.0, hi: float = 1e-3,
                  steps: int = 18) -> float:
    """Host cost for which the simulated median latency equals target_s."""
    from testbed.simulate import simulate_events

    def median_at(c: float) -> float:
        return _median_latency(simulate_events(topology, host_cost_s=c)[0])

    if median_at(lo) >= target_s:
        return lo
    while median_at(hi) < target_s and hi < 0.05:
        hi *= 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        if median_at(mid) < target_s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate(backend: str | None = None, results_root: Path = Path("results"),
              progress=None) -> dict:
    from testbed.run import run_emulation
    from testbed.stats import load_events

    topo = calibration_topology()
    res = run_emulation(topo, backend, results_root=results_root, progress=progress)
    events = load_events(res.run_dir)
    emu = _median_latency(events)
    cost = fit_host_cost(topo, emu)
    info = {"host_cost_s": cost, "source": "calibrated", "measured_median_s": emu,
            "message_size": topo.flows[0].sizes[0], "link_delay_s": topo.default_link.delay_s,
            "backend": res.meta.get("backend"), "impairment_engine": res.meta.get("impairment_engine"),
            "run_dir": str(res.run_dir), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = results_root / CALIBRATION_FILE.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1))
    return info


def load_host_cost(results_root: Path = Path("results")) -> dict:
    path = results_root / CALIBRATION_FILE.name
    if path.exists():
        try:
            info = json.loads(path.read_text())
            float(info["host_cost_s"])
            return info
        except (ValueError, KeyError):
            log.warning("%s is unreadable; using the default host cost", path)
    return {"host_cost_s": DEFAULT_HOST_COST_S, "source": "default"}
