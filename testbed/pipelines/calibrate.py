"""Calibrating the simulator's host model on this machine.

Owns measuring what the emulating host adds to every datagram beyond the
link model -- ttnet's Python engine, threads and socket calls on each side
and, on kernels without netem, the NFQUEUE verdict daemon -- and storing it
in ``results/calibration.json`` as a :class:`testbed.simulate.simulator.HostModel`.

Measured directly: ``host_cost_s``, each agent's process CPU time per
datagram sent or received (serialised per host: it limits bulk transfers);
``emulator_cost_s``, the NFQUEUE daemon's CPU time per packet (one process
serving every impaired packet in turn); ``cores``, the machine's cores that
all of that CPU work shares. Fitted: ``hop_latency_s``, the median extra
latency per datagram that occupies no CPU, and ``hop_noise_s``, the spread
around it, a distribution (quantiles), so simulated tails come from the
host as measured, not from a constant. Method: emulate two ensembles on a
1 ms lossless link (LAN-class: there the host, not the link, limits a
bulk transfer), first small messages alone (nothing else competing), then
a bulk flow (1 MB messages, long enough to be CPU-bound). A small message
crosses three hops (REQ, ACK_START, DATA): its latency minus the link
delays, centred on its median and scaled by 1/sqrt(3), gives per-hop
deviations whose sum over three hops has the measured variance; the median
fixes the hop latency (linear: solved directly). The bulk flow is then
simulated with the finished model as its check (nothing was fitted to it).
Without the agents' CPU times the CPU cost is fitted by bisection on the
bulk median instead (ill-determined; the old method).
Recalibrate with ``python -m testbed calibrate`` after changing the
machine, the kernel or ttnet's engine.

Must never: be silently skipped -- an uncalibrated simulation says so in its
metadata (``host_cost.source == "default"``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

from testbed.simulate.host import CALIBRATION_NAME, HostModel, calibration_name
from testbed.simulate.simulator import simulate_host
from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.spec.quantiles import percentile

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path("results") / CALIBRATION_NAME
#: Levels at which the per-hop spread is stored (0, 1, ..., 100 %).
NOISE_LEVELS = 101
#: When the small-message phase ends and the bulk phase starts (s).
BULK_START_S = 7.0


def calibration_topology(size: int = 1_000_000, count: int = 20, delay_s: float = 0.001) -> Topology:
    """Two ensembles, one impaired (so the NFQUEUE path is exercised) but
    lossless link: small messages alone first (they fit the per-hop latency
    and its spread), then a bulk flow (it fits the per-datagram CPU cost)."""
    link = LinkSpec(delay_s=delay_s)
    small = Flow(name="small", src="c1", dst="c0", sizes=(64,), count=160,
                 interval_s=0.04, ensure=True, deadline_s=5.0)
    # 1 MB (834 datagrams) is long enough to be limited by the hosts' CPUs,
    # not by round trips: its latency identifies the per-datagram cost.
    bulk = Flow(name="bulk", src="c0", dst="c1", sizes=(size,), count=count,
                interval_s=0.3, ensure=True, deadline_s=10.0, start_s=BULK_START_S)
    return Topology(name="calibration", ensembles=("c0", "c1"), default_link=link,
                    flows=(bulk, small), seed=7)


def _latencies(events: list[dict], flow: str) -> list[float]:
    sends = {(e["flow"], e["msg"]): e["t"] for e in events if e["event"] == "send"}
    lat = [e["t"] - sends[(e["flow"], e["msg"])] for e in events
           if e["event"] == "deliver" and e.get("flow") == flow
           and (e["flow"], e["msg"]) in sends]
    if not lat:
        raise RuntimeError(f"calibration flow {flow!r} delivered nothing; check the testbed "
                           "with `python -m testbed run pair`")
    return lat


def _median_latency(events: list[dict], flow: str) -> float:
    return statistics.median(_latencies(events, flow))


def hop_noise(small_latencies: list[float], hops: int = 3) -> tuple[float, ...]:
    """Per-hop deviations (median 0) whose sum over ``hops`` independent
    hops has the variance of the measured message latencies."""
    med = statistics.median(small_latencies)
    scale = 1 / math.sqrt(hops)
    dev = [(x - med) * scale for x in small_latencies]
    return tuple(percentile(dev, 100 * i / (NOISE_LEVELS - 1)) for i in range(NOISE_LEVELS))


def _sim_median(topology: Topology, flow: str, host: HostModel) -> float:
    """The simulated median; infinite when the model delivers nothing (at
    a CPU cost far too high, timeouts fire before any acknowledgement)."""
    try:
        return _median_latency(simulate_host(topology, host)[0], flow)
    except RuntimeError:
        return math.inf


def _with(host: HostModel, **changes) -> HostModel:
    from dataclasses import replace
    return replace(host, **changes)


def fit_host_cost(topology: Topology, target_s: float, host: HostModel, lo: float = 0.0,
                  hi: float = 1e-3, steps: int = 18) -> float:
    """Per-datagram CPU cost for which the simulated bulk median equals
    target_s (latency grows monotonically with the cost: bisection)."""
    if _sim_median(topology, "bulk", _with(host, host_cost_s=lo)) >= target_s:
        return lo
    while _sim_median(topology, "bulk", _with(host, host_cost_s=hi)) < target_s and hi < 0.05:
        hi *= 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        if _sim_median(topology, "bulk", _with(host, host_cost_s=mid)) < target_s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fit_hop_latency(topology: Topology, target_s: float, host: HostModel) -> float:
    """A small message crosses three datagram hops (REQ, ACK_START, DATA),
    so its median latency moves by three hop latencies: solve directly."""
    now = _sim_median(topology, "small", host)
    return max(0.0, host.hop_latency_s + (target_s - now) / 3)


def fit(topology: Topology, events: list[dict], emulator_cost_s: float = 0.0,
        host_cost_s: float | None = None, cores: int | None = None) -> HostModel:
    """The host model that reproduces an emulated calibration run whose
    impairment emulator was measured to cost ``emulator_cost_s`` per packet
    on a machine of ``cores`` cores. With ``host_cost_s`` (the agents' CPU
    per datagram, measured) only the hop latency is fitted; without it the
    CPU cost is fitted too, by bisection on the bulk median (ill-determined:
    near the measured latency the model hardly depends on it)."""
    small = _latencies(events, "small")
    emu_bulk, emu_small = _median_latency(events, "bulk"), statistics.median(small)
    host = HostModel(host_cost_s or 0.0, 0.0, hop_noise(small), "calibrated",
                     emulator_cost_s=emulator_cost_s, cores=cores)
    if host_cost_s is not None:
        for _ in range(2):      # linear in the hop latency; twice for the FIFO's nonlinearity
            host = _with(host, hop_latency_s=fit_hop_latency(topology, emu_small, host))
        return host
    for _ in range(3):          # the parameters interact a little; iterate
        host = _with(host, hop_latency_s=fit_hop_latency(topology, emu_small, host))
        host = _with(host, host_cost_s=fit_host_cost(topology, emu_bulk, host))
    return host


def daemon_work(meta: dict) -> tuple[float, int] | None:
    """(CPU seconds, packets) of the run's NFQUEUE daemon while the flows
    ran: the difference between the snapshot taken at the start of the
    flows and the one at their end (``meta.json``'s ``impair_stats``). None
    without a daemon (netem) or without both snapshots (runs recorded
    before they were taken)."""
    stats = meta.get("impair_stats") or {}
    end, start = stats.get("daemon"), stats.get("daemon_at_start")
    if not end or not start:
        return None
    return end["cpu_s"] - start["cpu_s"], end["packets"] - start["packets"]


def emulator_cost(meta: dict) -> float | None:
    """CPU per packet of the run's NFQUEUE daemon while the flows ran
    (:func:`daemon_work`); None where it handled no packet or was not measured."""
    work = daemon_work(meta)
    if work is None or work[1] <= 0:
        return None
    return work[0] / work[1]


def agents_work(counters: dict[str, dict], flows_only: bool = False
                ) -> dict[str, tuple[float, int]]:
    """Per ensemble: (process CPU seconds, datagrams sent and received) of
    its agent (all its threads: engine, socket calls, callbacks), from its
    ``counters-<name>.json``; counted from the start of the flows where the
    agent recorded it (``process_cpu_at_go_s``, ``packets_at_go``: the
    interpreter's start-up is not the traffic's cost). Ensembles whose
    counters lack the CPU time are left out; with ``flows_only``, so are
    agents that did not record the start of the flows (older runs: their
    totals include start-up, too much for a figure per second of flows)."""
    out = {}
    for name, c in sorted(counters.items()):
        if flows_only and "process_cpu_at_go_s" not in c:
            continue
        if "process_cpu_s" in c:
            n = (c.get("packets_sent", 0) + c.get("packets_received", 0)
                 - c.get("packets_at_go", 0))
            out[name] = (c["process_cpu_s"] - c.get("process_cpu_at_go_s", 0.0), n)
    return out


def cpu_per_datagram(counters: dict[str, dict]) -> dict[str, float]:
    """Per ensemble: the agent's CPU per datagram over the flows
    (:func:`agents_work`); ensembles that handled no datagram are left out."""
    return {name: cpu / n for name, (cpu, n) in agents_work(counters).items() if n > 0}


def machine_work(meta: dict) -> dict | None:
    """How busy this whole machine was while the flows ran (``meta.json``'s
    ``machine_cpu`` snapshots of /proc/stat): ``wall_s``, ``busy_cores``
    and ``steal_cores`` (CPU seconds per second of wall time) and ``cores``.
    None for runs recorded without both snapshots."""
    from testbed.emulate.run import cores_between
    m = meta.get("machine_cpu") or {}
    used = cores_between(m.get("at_start"), m.get("at_end"))
    return None if used is None else {**used, "cores": m.get("cores")}


def _rounded(work: dict | None) -> dict | None:
    return None if work is None else {k: round(v, 3) if isinstance(v, float) else v
                                      for k, v in work.items()}


def calibrate(backend: str | None = None, results_root: Path = Path("results"),
              progress=None) -> dict:
    from testbed.emulate.run import run_emulation
    from testbed.analysis.stats import load_events

    topo = calibration_topology()
    res = run_emulation(topo, backend, results_root=results_root, progress=progress)
    events = load_events(res.run_dir)
    emu_cost = emulator_cost(res.meta)
    cpu = cpu_per_datagram(res.meta.get("counters", {}))
    measured = statistics.mean(cpu.values()) if len(cpu) == len(topo.ensembles) else None
    cores = os.cpu_count()
    host = fit(topo, events, emu_cost or 0.0, measured, cores)
    small = _latencies(events, "small")
    bulk_s = _median_latency(events, "bulk")
    datagrams = -(-topo.flows[0].sizes[0] // 1200)
    info = {"host_cost_s": host.host_cost_s, "hop_latency_s": host.hop_latency_s,
            "hop_noise_s": list(host.hop_noise_s), "source": "calibrated",
            # how host_cost_s was found: "measured" (the agents' CPU time per
            # datagram) or "fitted" (bisection on the bulk median)
            "host_cost_method": "measured" if measured is not None else "fitted",
            # measured, not fitted: the NFQUEUE daemon's CPU per packet
            # (None: no daemon, the kernel's netem impairs)
            "emulator_cost_s": emu_cost,
            # the most packets per second the emulator can impair (all links)
            "emulator_capacity_pps": 1 / emu_cost if emu_cost else None,
            "cores": cores,
            # how busy the whole machine was during the calibration's flows
            # (busy_cores, steal_cores): a calibration made while the
            # hypervisor took the CPUs measures that, not the machine
            "machine": _rounded(machine_work(res.meta)),
            "measured_bulk_median_s": bulk_s,
            # the model's own check: the bulk flow simulated with it
            "model_bulk_median_s": _sim_median(topo, "bulk", host),
            "measured_small_median_s": statistics.median(small),
            "measured_small_p95_s": percentile(small, 95),
            # DATA one way and an ACK for each the other, through the
            # impairment engine, while one CPU-bound transfer runs
            "capacity_pps": 2 * datagrams / bulk_s,
            # Each agent's process CPU time over the datagrams it sent and
            # received (the measured host_cost_s is their mean).
            "measured_cpu_per_datagram_s": cpu,
            "bulk_size": topo.flows[0].sizes[0], "link_delay_s": topo.default_link.delay_s,
            "backend": res.meta.get("backend"), "impairment_engine": res.meta.get("impairment_engine"),
            "run_dir": str(res.run_dir), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    results_root.mkdir(parents=True, exist_ok=True)
    for name in (calibration_name(info["backend"]), CALIBRATION_NAME):
        (results_root / name).write_text(json.dumps(info, indent=1))
    return info
