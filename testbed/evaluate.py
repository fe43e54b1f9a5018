"""Emulated run -> simulated baseline -> comparison, plots and report.md.

Owns the last step of an experiment: given an emulated run directory,
simulate the same topology into ``<run>/sim/`` (unless already there),
compare per flow, judge fidelity where the target applies (links of at
least 5 ms), draw CDFs and write ``report.md``. Never runs an emulation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.topology import load_topology

if TYPE_CHECKING:
    from testbed.compare import FidelityVerdict

#: The fidelity target applies to topologies whose links all have at least
#: this much delay: below it, fixed host overheads dominate the latency.
FIDELITY_MIN_DELAY_S = 0.005


def compare_run(run_dir: Path, simulate_if_missing: bool = True,
                calibration: dict | None = None) -> tuple[list, "FidelityVerdict | None", Path]:
    """Simulate (into run_dir/sim) if needed, compare, plot, write report.md.

    Returns (rows, verdict, report). The verdict (compare.judge_fidelity)
    covers the flows whose links both ways have at least 5 ms of delay; it
    is None when no flow does."""
    from testbed.compare import (compare, delay_floor_violations, judge_fidelity,
                                 plot_cdfs, write_report)
    from testbed.simulate import run_simulation
    from testbed.stats import flow_stats, load_events

    topo = load_topology(run_dir / "topology.yaml")
    sim_dir = run_dir / "sim"
    if not (sim_dir / "events-sim.jsonl").exists():
        if not simulate_if_missing:
            raise FileNotFoundError(f"{sim_dir} has no simulation; run `python -m testbed simulate`")
        run_simulation(topo, out_dir=sim_dir, calibration=calibration,
                       results_root=run_dir.parent.parent)
    emu, sim = load_events(run_dir), load_events(sim_dir)
    rows = compare(emu, sim)
    sim_meta = json.loads((sim_dir / "meta.json").read_text())
    emu_meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    floor = delay_floor_violations(topo, emu)
    by_name = {f.name: f for f in topo.flows}

    def in_target(flow_name: str) -> bool:
        # A message crosses both directions (REQ out, ACK_START back).
        f = by_name.get(flow_name)
        return f is not None and min(topo.link(f.src, f.dst).delay_s,
                                     topo.link(f.dst, f.src).delay_s) >= FIDELITY_MIN_DELAY_S

    notes = [f"emulated on {emu_meta.get('backend', '?')} with impairments via "
             f"{emu_meta.get('impairment_engine', '?')}; simulated with host cost "
             f"{sim_meta['host_cost_s'] * 1e6:.1f} us/datagram + {sim_meta.get('hop_latency_s', 0) * 1e6:.0f} us/hop "
             f"({sim_meta['host_cost']['source']}), {sim_meta.get('replications', 1)} replications, "
             f"{sim_meta.get('speedup_span')}x faster than real time"]
    notes += floor
    judged = [r for r in rows if in_target(r.flow)]
    skipped = sorted(r.flow for r in rows if not in_target(r.flow))
    verdict = None
    if skipped:
        notes.append(f"outside the fidelity target (a link under 5 ms): {', '.join(skipped)}")
    if judged:
        by_rep: dict[int, list[dict]] = {}
        for e in sim:
            by_rep.setdefault(e.get("replication", 0), []).append(e)
        replications = [flow_stats(evs) for evs in by_rep.values()]
        verdict = judge_fidelity(judged, not floor, sim_replications=replications)
        notes += [f"fidelity FAIL: {p}" for p in verdict.failures]
        notes += [f"fidelity outside tolerance, explained: {p}"
                  for p in verdict.explained]
        notes += [f"fidelity outside tolerance, undetermined by one run: {p}"
                  for p in verdict.undetermined]
        if not verdict.violations and verdict.ok:
            notes.append("fidelity: every judged flow within p50 +/-5% and p95 +/-10%")
    plots = plot_cdfs(rows, run_dir, title=topo.name)
    report = write_report(run_dir, rows, plots, notes, title=f"{topo.name}: emulated vs simulated")
    return rows, verdict, report
