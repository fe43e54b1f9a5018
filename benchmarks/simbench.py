"""Simulator speed: simulated seconds per wall second on the shipped topologies.

Owns the one place the benchmarks use the testbed's simulator, its
calibration and its topology files (the imports below; keep them here, so
a move of those testbed modules is fixed in one place).

Must never: touch the network or start a process; it runs the simulator in
this process.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any



def run_sim_speed(results: Path = Path("results")) -> dict[str, Any]:
    """Simulated seconds per wall second for every shipped topology (one
    replication each, calibrated host cost if present under ``results``).
    Raises ImportError when the testbed's simulator cannot be imported."""
    from testbed.simulate.host import HostModel, load_calibration
    from testbed.simulate.simulator import simulate_host
    from testbed.spec.topology import SHIPPED_DIR, list_topologies, load_topology
    host = HostModel.from_calibration(load_calibration(results))
    out = {}
    for name in list_topologies(SHIPPED_DIR):
        topo = load_topology(SHIPPED_DIR / f"{name}.yaml")
        t0 = time.perf_counter()
        events, _ = simulate_host(topo, host)
        wall = time.perf_counter() - t0
        span = max(e["t"] for e in events)
        out[name] = {"wall_s": wall, "simulated_s": span, "speedup": span / wall,
                     "events": len(events)}
    return out
