"""Simulator speed: simulated seconds per wall second on the shipped topologies.

Owns the one place the benchmarks use the testbed's simulator, its
calibration and its topology files (the imports below; keep them here, so
a move of those testbed modules is fixed in one place).

Run alone (prints a table with PASS/FAIL against the target)::

    python -m benchmarks.simbench [--reps 5] [--json out.json] [TOPOLOGY ...]

Must never: touch the network or start a process; it runs the simulator in
this process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: Simulated seconds per wall second every shipped topology should reach
#: (the same figure as ``benchmarks.report.TARGET_SIM_SPEEDUP``).
TARGET_SPEEDUP = 100.0
#: Repetitions per topology in ``make bench`` (the median is reported).
DEFAULT_REPS = 3


def run_sim_speed(results: Path = Path("results"), reps: int = DEFAULT_REPS,
                  names: list[str] | None = None) -> dict[str, Any]:
    """Simulated seconds per wall second for every shipped topology (or
    ``names``): ``reps`` runs of one replication each, calibrated host cost
    if present under ``results``. ``speedup`` and ``wall_s`` are the
    medians; ``speedups`` holds every run. Simulated seconds are up to the
    last logged event (the same in every run: the simulator is seeded).
    Raises ImportError when the testbed's simulator cannot be imported."""
    from testbed.simulate.host import HostModel, load_calibration
    from testbed.simulate.simulator import simulate_host
    from testbed.spec.topology import SHIPPED_DIR, list_topologies, load_topology
    host = HostModel.from_calibration(load_calibration(results))
    out = {}
    for name in names or list_topologies(SHIPPED_DIR):
        topo = load_topology(SHIPPED_DIR / f"{name}.yaml")
        walls, span, n = [], 0.0, 0
        for _ in range(max(1, reps)):
            t0 = time.perf_counter()
            events, _ = simulate_host(topo, host)
            walls.append(time.perf_counter() - t0)
            span = max(e["t"] for e in events)
            n = len(events)
        wall = statistics.median(walls)
        out[name] = {"wall_s": wall, "simulated_s": span, "speedup": span / wall,
                     "speedups": sorted(span / w for w in walls), "events": n,
                     "host_cost_s": host.host_cost_s, "host_source": host.source}
    return out


def format_table(result: dict[str, Any], target: float = TARGET_SPEEDUP) -> str:
    """One line per topology: median speed-up, its range, PASS/FAIL."""
    lines = [f"{'topology':<12} {'simulated':>10} {'wall (median)':>14} "
             f"{'speed-up':>9} {'range':>15}  target {target:.0f}x"]
    passed = 0
    for name, sp in result.items():
        ok = sp["speedup"] >= target
        passed += ok
        lo, hi = sp["speedups"][0], sp["speedups"][-1]
        spread = f"{lo:.0f}x-{hi:.0f}x"
        lines.append(f"{name:<12} {sp['simulated_s']:>9.1f}s {sp['wall_s'] * 1000:>12.0f}ms "
                     f"{sp['speedup']:>8.0f}x {spread:>15}  {'PASS' if ok else 'FAIL'}")
    lines.append(f"{passed} of {len(result)} topologies at >= {target:.0f}x real time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simbench",
                                 description="Simulator speed on the shipped topologies.")
    ap.add_argument("topologies", nargs="*", help="shipped topology names (default: all)")
    ap.add_argument("--reps", type=int, default=5, help="runs per topology (median; default 5)")
    ap.add_argument("--results", type=Path, default=Path("results"),
                    help="results root holding calibration.json (default: results)")
    ap.add_argument("--json", type=Path, help="save the result here")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    from testbed.spec.topology import SHIPPED_DIR, list_topologies
    shipped = list_topologies(SHIPPED_DIR)
    unknown = [t for t in args.topologies if t not in shipped]
    if unknown:
        ap.error(f"no shipped topology {', '.join(unknown)}; choose from {', '.join(shipped)}")
    result = run_sim_speed(args.results, args.reps, args.topologies or None)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
