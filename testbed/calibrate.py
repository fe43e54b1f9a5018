"""Calibrating the simulator's per-datagram host cost on this machine.

Owns measuring what one datagram costs the real stack end to end beyond
the link model -- ttnet's Python engine and socket calls on each side plus,
on kernels without netem, the NFQUEUE verdict daemon -- and storing it in
``results/calibration.json`` for :mod:`testbed.simulate`.

Two parameters: ``host_cost_s``, CPU time per datagram on each host
(serialised: it limits bulk transfers), and ``hop_latency_s``, a fixed
extra latency per datagram that occupies no CPU (thread wake-ups, the
NFQUEUE pass). Method: emulate a two-ensemble topology whose link has a
known small delay, with a bulk flow (120 KB messages) and a small-message
flow (64 B); take each flow's median one-way latency; then fit the hop
latency to the small flow (linear: three hops per message) and the host
cost to the bulk flow (bisection: latency grows monotonically with it),
iterating a few times. Recalibrate with
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
    """Two ensembles, one impaired (so the NFQUEUE path is exercised) but
    lossless link: a bulk flow (fits the per-datagram CPU cost) and a
    small-message flow (fits the fixed per-hop latency)."""
    link = LinkSpec(delay_s=delay_s)
    bulk = Flow(name="bulk", src="c0", dst="c1", sizes=(size,), count=count,
                interval_s=0.25, ensure=True, deadline_s=10.0)
    small = Flow(name="small", src="c1", dst="c0", sizes=(64,), count=60,
                 interval_s=0.1, ensure=True, deadline_s=10.0, start_s=0.05)
    return Topology(name="calibration", ensembles=("c0", "c1"), default_link=link,
                    flows=(bulk, small), seed=7)


def _median_latency(events: list[dict], flow: str) -> float:
    sends = {(e["flow"], e["msg"]): e["t"] for e in events if e["event"] == "send"}
    lat = [e["t"] - sends[(e["flow"], e["msg"])] for e in events
           if e["event"] == "deliver" and e.get("flow") == flow
           and (e["flow"], e["msg"]) in sends]
    if not lat:
        raise RuntimeError(f"calibration flow {flow!r} delivered nothing; check the testbed "
                           "with `python -m testbed run pair`")
    return statistics.median(lat)


def _sim_median(topology: Topology, flow: str, cost: float, hop: float) -> float:
    from testbed.simulate import simulate_events
    return _median_latency(simulate_events(topology, cost, hop_latency_s=hop)[0], flow)


def fit_host_cost(topology: Topology, target_s: float, hop: float = 0.0, lo: float = 0.0,
                  hi: float = 1e-3, steps: int = 18) -> float:
    """Per-datagram CPU cost for which the simulated bulk median equals
    target_s (latency grows monotonically with the cost: bisection)."""
    if _sim_median(topology, "bulk", lo, hop) >= target_s:
        return lo
    while _sim_median(topology, "bulk", hi, hop) < target_s and hi < 0.05:
        hi *= 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        if _sim_median(topology, "bulk", mid, hop) < target_s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fit_hop_latency(topology: Topology, target_s: float, cost: float) -> float:
    """A small message crosses three datagram hops (REQ, ACK_START, DATA),
    so its latency is linear in the hop latency: solve directly."""
    return max(0.0, (target_s - _sim_median(topology, "small", cost, 0.0)) / 3)


def calibrate(backend: str | None = None, results_root: Path = Path("results"),
              progress=None) -> dict:
    from testbed.run import run_emulation
    from testbed.stats import load_events

    topo = calibration_topology()
    res = run_emulation(topo, backend, results_root=results_root, progress=progress)
    events = load_events(res.run_dir)
    emu_bulk, emu_small = _median_latency(events, "bulk"), _median_latency(events, "small")
    cost, hop = 0.0, 0.0
    for _ in range(3):          # the two parameters interact a little; iterate
        hop = fit_hop_latency(topo, emu_small, cost)
        cost = fit_host_cost(topo, emu_bulk, hop)
    info = {"host_cost_s": cost, "hop_latency_s": hop, "source": "calibrated",
            "measured_bulk_median_s": emu_bulk, "measured_small_median_s": emu_small,
            "bulk_size": topo.flows[0].sizes[0], "link_delay_s": topo.default_link.delay_s,
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
    return {"host_cost_s": DEFAULT_HOST_COST_S, "hop_latency_s": 0.0, "source": "default"}
