"""Emulated run -> simulated baseline -> comparison, plots and report.md.

Owns the last step of an experiment: given an emulated run directory,
simulate the same topology into ``<run>/sim/`` (unless a simulation made by
the same model is already there), compare per flow, judge fidelity
(:mod:`testbed.analysis.fidelity`) for every flow whose links both ways have at
least 0.5 ms of delay, draw CDFs and write ``report.md``, which leads with
the verdict. Never runs an emulation.

The report also says how well the ensembles' clocks agreed (meta.json
``clocks``, :mod:`testbed.spec.clocks`): the largest uncertainty, and a
WARNING when it is more than CLOCK_WARN_SHARE of a link's delay.

The host model a run is judged with is pinned in the run directory
(``calibration.json``) the first time it is compared, so the same run gets
the same verdict whichever calibration is found beside it later.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.spec.topology import load_topology

if TYPE_CHECKING:
    from testbed.analysis.fidelity import Verdict

#: The fidelity target covers every link class from a LAN up: flows whose
#: links both ways have at least this much delay are judged. Below it the
#: latency is all host (scheduling, Python), which the model only sketches.
FIDELITY_MIN_DELAY_S = 0.0005
CALIBRATION_NAME = "calibration.json"


class NotAnEmulatedRun(ValueError):
    """compare was pointed at something that is not an emulated run."""


def _sim_is_current(sim_dir: Path, host_key: dict, replications: int, topo_yaml: str) -> bool:
    from testbed.simulate.simulator import model_version
    try:
        meta = json.loads((sim_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return ((sim_dir / "events-sim.jsonl").exists()
            and meta.get("host_model") == host_key
            and meta.get("replications") == replications
            and meta.get("model_version") == model_version()
            and (sim_dir / "topology.yaml").exists()
            and (sim_dir / "topology.yaml").read_text() == topo_yaml)


def run_calibration(run_dir: Path, calibration: dict | None,
                    emu_meta: dict | None = None) -> tuple[dict | None, str]:
    """The calibration to judge ``run_dir`` with, and where it came from:
    an explicit one (then pinned), the one pinned in the run, or the one
    under the results root (then pinned)."""
    from testbed.simulate.host import load_calibration
    pinned = run_dir / CALIBRATION_NAME
    if calibration is not None:
        where = "given"
    elif pinned.exists() and (got := load_calibration(run_dir)) is not None:
        return got, "pinned in the run"
    else:
        meta = emu_meta or {}
        calibration = load_calibration(run_dir.parent.parent, meta.get("backend"),
                                       meta.get("impairment_engine"))
        where = "results root" if calibration is not None else "none (default host model)"
    if calibration is not None:
        pinned.write_text(json.dumps(calibration, indent=1))
    return calibration, where


def compare_run(run_dir: Path, simulate_if_missing: bool = True,
                calibration: dict | None = None,
                replications: int | None = None) -> tuple[list, "Verdict | None", Path]:
    """Simulate (into run_dir/sim) if needed, compare, judge, plot, write
    report.md. Returns (rows, verdict, report); the verdict is None when no
    flow is in the fidelity target.

    Raises NotAnEmulatedRun for a simulated run directory or a directory
    without an emulated run's files."""
    from testbed.analysis.compare import (compare, delay_floor_violations, flow_ends, plot_cdfs,
                                          record_comparison, write_report)
    from testbed.analysis.fidelity import judge
    from testbed.simulate.host import HostModel, enforces_cpu_limits
    from testbed.simulate.simulator import REPLICATIONS, run_simulation
    from testbed.analysis.stats import flow_stats, load_events

    run_dir = Path(run_dir)
    meta_path = run_dir / "meta.json"
    if not (run_dir / "topology.yaml").exists() or not meta_path.exists():
        raise NotAnEmulatedRun(f"{run_dir} is not a run directory (no topology.yaml and "
                               "meta.json); pass results/<topology>/<run-id>")
    emu_meta = json.loads(meta_path.read_text())
    if emu_meta.get("kind") == "simulated" or emu_meta.get("backend") == "sim":
        raise NotAnEmulatedRun(f"{run_dir} is a simulated run: compare judges an emulated "
                               "run against its simulation; pass the emulated run directory")
    replications = replications or REPLICATIONS
    topo = load_topology(run_dir / "topology.yaml")
    calibration, cal_source = run_calibration(run_dir, calibration, emu_meta)
    # cpus: limits are simulated only if the run's backend enforced them.
    host = replace(HostModel.from_calibration(calibration),
                   cpu_limits=enforces_cpu_limits(emu_meta.get("backend")))
    sim_dir = run_dir / "sim"
    if not _sim_is_current(sim_dir, host.key(), replications,
                           (run_dir / "topology.yaml").read_text()):
        if not simulate_if_missing:
            raise FileNotFoundError(f"{sim_dir} has no current simulation; "
                                    "run `python -m testbed compare` to make it")
        shutil.rmtree(sim_dir, ignore_errors=True)
        run_simulation(topo, out_dir=sim_dir, host=host, replications=replications)
    emu, sim = load_events(run_dir), load_events(sim_dir)
    rows = compare(emu, sim)
    sim_meta = json.loads((sim_dir / "meta.json").read_text())
    floor = delay_floor_violations(topo, emu)
    ends = {r.flow: (r.emu.src or r.sim.src, r.emu.dst or r.sim.dst) for r in rows}

    def in_target(flow_name: str) -> bool:
        # A message crosses both directions (REQ out, ACK_START back).
        src, dst = flow_ends(topo, flow_name, ends.get(flow_name, ("", "")))
        if src not in topo.ensembles or dst not in topo.ensembles:
            return False
        return min(topo.link(src, dst).delay_s,
                   topo.link(dst, src).delay_s) >= FIDELITY_MIN_DELAY_S

    cal_backend = (calibration or {}).get("backend")
    notes = [f"emulated on {emu_meta.get('backend', '?')} with impairments via "
             f"{emu_meta.get('impairment_engine', '?')}; simulated with host model "
             f"{host.host_cost_s * 1e6:.1f} us CPU/datagram + {host.hop_latency_s * 1e6:.0f} us/hop"
             f"{' (+ measured spread)' if host.hop_noise_s else ''}"
             + (f" + {host.emulator_cost_s * 1e6:.1f} us emulator CPU/packet"
                if host.emulator_cost_s else "")
             + (f" on {host.cores} shared cores" if host.cores else "")
             + f" ({host.source}, calibration: {cal_source}), {sim_meta.get('replications', 1)} "
             f"replications, {sim_meta.get('speedup_span')}x faster than real time"]
    if cal_backend and cal_backend != emu_meta.get("backend"):
        notes.append(f"the calibration was measured on {cal_backend}, the run on "
                     f"{emu_meta.get('backend')}: recalibrate on the run's backend")
    if topo.limits and any(s.cpus is not None for s in topo.limits.values()):
        notes.append("cpus: limits simulated as a CPU quota per 100 ms period (enforced on "
                     f"{emu_meta.get('backend')})" if host.cpu_limits else
                     f"cpus: limits not simulated: {emu_meta.get('backend', '?')} does not "
                     "enforce them")
    notes += load_notes(emu_meta, calibration)
    notes += clock_notes(emu_meta, topo)
    notes += floor
    judged = [r for r in rows if in_target(r.flow)]
    skipped = sorted(r.flow for r in rows if not in_target(r.flow))
    verdict = None
    if skipped:
        notes.append(f"not judged (a link under {FIDELITY_MIN_DELAY_S * 1000:g} ms): "
                     f"{', '.join(skipped)}")
    if judged:
        by_rep: dict[int, list[dict]] = {}
        for e in sim:
            by_rep.setdefault(e.get("replication", 0), []).append(e)
        replicated = [flow_stats(evs) for evs in by_rep.values()]
        structural = [f"impairment not applied: {p}" for p in floor]
        verdict = judge(judged, replicated, structural)
    plots = plot_cdfs(rows, run_dir, title=topo.name)
    timeline = timeline_plots(run_dir, topo, emu_meta, emu, sim, notes)
    records = record_comparison(emu, sim, int(sim_meta.get("replications") or 1))
    report = write_report(run_dir, rows, plots, notes, verdict=verdict,
                          title=f"{topo.name}: emulated vs simulated", records=records,
                          timeline=timeline)
    (run_dir / "verdict.json").write_text(json.dumps(
        verdict_summary(verdict), indent=1, sort_keys=True))
    return rows, verdict, report


def timeline_plots(run_dir: Path, topo, emu_meta: dict, emu: list, sim: list,
                   notes: list[str]) -> list[Path]:
    """The latency-over-time plots of a run with a fault timeline (none
    without one), and a note on when its events were applied."""
    from testbed.analysis.compare import plot_timeline
    from testbed.spec.timeline import describe_event
    if not topo.events:
        return []
    start = emu_meta.get("start_at")
    if start is None:
        try:
            start = json.loads((run_dir / "go.json").read_text())["start_at"]
        except (OSError, ValueError, KeyError):
            notes.append("fault timeline: the run recorded no start time; "
                         "no latency-over-time plot")
            return []
    applied = emu_meta.get("events_applied") or []
    failed = [a for a in applied if a.get("error")]
    late = max((a["t"] - a["at"] for a in applied if "t" in a), default=0.0)
    notes.append(f"fault timeline: {len(applied)} of {len(topo.events)} events applied in "
                 f"emulation, at most {late * 1000:.1f} ms after their time"
                 + (f"; FAILED: {', '.join(a['event'] for a in failed)}" if failed else ""))
    # A restart: the emulated agent boots for a while (still down), the
    # simulated one is up at once; messages to it then arrive later emulated.
    boots = {name: (o.get("restart") or {}).get("boot_s")
             for name, o in (emu_meta.get("outcomes") or {}).items() if o.get("restart")}
    if boots:
        notes.append("restart: the fresh agent's boot time after its (last) restart: " +
                     ", ".join(f"{name} {b:.2f} s" if isinstance(b, (int, float))
                               else f"{name} not recorded" for name, b in sorted(boots.items()))
                     + "; the simulated reboot is instantaneous, so messages to it in that "
                     "window arrive later emulated than simulated")
    events = [(e.at_s, describe_event(e)) for e in topo.events]
    return plot_timeline(emu, sim, run_dir, float(start), events, title=topo.name)


#: Above this share of the emulator's measured capacity, queueing inside the
#: emulator itself (the NFQUEUE daemon, the hosts' two cores) starts to show
#: in latencies: the report warns.
CAPACITY_WARN_SHARE = 0.5
#: More CPU than this (cores) used on the machine during the flows by
#: anything but the run's agents and NFQUEUE daemon: the report warns.
OTHER_WORK_WARN_CORES = 0.5
#: Steal (cores the hypervisor ran something else on while this machine's
#: vCPUs wanted them) from which the report warns: a vCPU that is not running
#: holds every packet queued on it. Measured on this 2-core VM (make testbed,
#: 2026-12-03): 0.30 cores of steal during edge-cloud's flows came with its
#: sensors' LAN p50 at 8.8 ms against 7.1 an hour earlier and p95 doubled,
#: 0.13 during mesh-20's with 40 p95 FAILs; quiet runs measured 0.02-0.07.
STEAL_WARN_CORES = 0.1


def machine_warning(whole: dict, other: float | None) -> str | None:
    """The warning a machine record earns (``whole`` from
    ``calibrate.machine_work``; ``other``: cores of work that was not the
    run's own, None when unknown), or None."""
    if whole["steal_cores"] >= STEAL_WARN_CORES:
        return (f"WARNING: the hypervisor took {whole['steal_cores']:.2f} cores (steal, at most "
                f"{STEAL_WARN_CORES} on a quiet host): this VM's CPUs were not running while "
                "packets waited on them, and the latencies include that; rerun when its host "
                "is quiet")
    if (other or 0.0) + whole["steal_cores"] > OTHER_WORK_WARN_CORES:
        return ("WARNING: other work on this machine competed with the emulation: "
                "its latencies include that; rerun on a quiet machine")
    return None


def disturbance(emu_meta: dict) -> str | None:
    """The machine warning of a run (:func:`machine_warning`: steal or other
    work over their bounds during the flows), None for an undisturbed run or
    one recorded without a machine record. Depends on /proc/stat and the
    run's own CPU counters only, never on its latencies or verdict."""
    from testbed.pipelines.calibrate import machine_work
    whole, run_s = machine_work(emu_meta), emu_meta.get("run_s") or 0
    if whole is None or run_s <= 0:
        return None
    own = _own_cores(emu_meta, run_s)[0]
    return machine_warning(whole, None if own is None else max(0.0, whole["busy_cores"] - own))


def _own_cores(emu_meta: dict, run_s: float) -> tuple[float | None, tuple | None]:
    """(cores the run's agents and NFQUEUE daemon used over the flows, None
    when no agent recorded the flows' start; the daemon's work record)."""
    from testbed.pipelines.calibrate import agents_work, daemon_work
    work = daemon_work(emu_meta)
    agents = agents_work(emu_meta.get("counters") or {}, flows_only=True)
    if not agents:
        return None, work
    return (sum(cpu for cpu, _ in agents.values()) + (work[0] if work else 0.0)) / run_s, work


def load_notes(emu_meta: dict, calibration: dict | None) -> list[str]:
    """How hard the run drove the emulator and the machine. The emulator:
    packets through the impairment engine against the capacity measured at
    calibration (the NFQUEUE daemon's packets/s at its measured CPU per
    packet, or, for calibrations made before that was measured, datagrams/s
    while one CPU-bound bulk transfer ran), how busy the daemon itself was
    during the flows (one process: at 100% it is the bottleneck) and the
    cores the agents and the daemon used. The machine: its whole CPU use
    over the flows, and how much of it was not this run's (other work
    competing with the emulation)."""
    from testbed.pipelines.calibrate import machine_work
    cal = calibration or {}
    run_s = emu_meta.get("run_s") or 0
    if run_s <= 0:
        return []
    own, work = _own_cores(emu_meta, run_s)
    daemon_cpu = work[0] if work is not None else 0.0
    whole = machine_work(emu_meta)
    # the run's own machine; calibrations made before runs recorded it say theirs
    cores = (whole or {}).get("cores") or cal.get("cores")
    notes = []
    links = (emu_meta.get("impair_stats") or {}).get("links") or {}
    if links:
        total = sum(v.get("seen", 0) for v in links.values()) / run_s
        busiest, seen = max(((k, v.get("seen", 0)) for k, v in links.items()),
                            key=lambda kv: kv[1])
        text = (f"emulator load: {total:.0f} datagrams/s on average through the impairment "
                f"engine over the run, busiest link {busiest} at {seen / run_s:.0f}/s")
        cap = cal.get("emulator_capacity_pps") or cal.get("capacity_pps")
        share = total / cap if cap else 0.0
        if cap:
            text += f"; measured capacity {cap:.0f} datagrams/s ({share * 100:.0f}% of it)"
        else:
            text += " (no capacity measured: recalibrate)"
        busy = daemon_cpu / run_s if work is not None else None
        if busy is not None:
            text += f"; the NFQUEUE daemon was busy {busy * 100:.0f}% of the run"
        if own is not None:
            text += f"; agents and daemon used {own:.2f} cores"
            if cores:
                text += f" of {cores}"
        crowded = bool(own and cores and own > CAPACITY_WARN_SHARE * cores)
        if max(share, busy or 0.0) > CAPACITY_WARN_SHARE or crowded:
            text += (". WARNING: the emulator or the machine is more than half busy: their "
                     "own queueing shows in latencies; spread the flows or use a bigger machine")
        notes.append(text)
    if whole is not None:
        # about the same window as the agents' and the daemon's figures: all
        # snapshots are taken at the flows' start and end
        note = (f"machine load: this machine was busy {whole['busy_cores']:.2f} cores"
                + (f" of {cores}" if cores else "") + " during the flows")
        other = None
        if own is not None:
            other = max(0.0, whole["busy_cores"] - own)
            note += (f", {other:.2f} of them outside this run's agents and daemon (the "
                     "container engine, the kernel's packet processing, other programs)")
        if whole["steal_cores"] >= 0.01:
            note += f"; the hypervisor took another {whole['steal_cores']:.2f} cores (steal)"
        then = cal.get("machine")
        if then:
            note += (f" (at calibration: busy {then['busy_cores']:.2f} cores, "
                     f"steal {then['steal_cores']:.2f})")
        warning = machine_warning(whole, other)
        if warning:
            note += ". " + warning
        notes.append(note)
    return notes


#: A latency measured across two clocks is uncertain by the sum of their
#: uncertainties; above this share of the link's delay the report warns.
CLOCK_WARN_SHARE = 0.10
#: At most this many links are named in the clock warning.
CLOCK_WARN_LINKS = 5


def clock_notes(emu_meta: dict, topo) -> list[str]:
    """What the run's clocks (meta.json ``clocks``) mean for its latencies:
    one kernel (nothing to say but that), or the measured offsets -- the
    largest uncertainty, offset and drift -- with a WARNING naming the
    links whose one-way latency is uncertain (the sum of both ends'
    uncertainties) by more than CLOCK_WARN_SHARE of their delay, and one
    naming ensembles without a measurement (their times are uncorrected).
    Nothing for a run that recorded no clocks (older runs)."""
    from testbed.spec import clocks
    rec = emu_meta.get("clocks")
    if not isinstance(rec, dict):
        return []
    if rec.get("method") == clocks.METHOD_ONE_KERNEL:
        return ["clocks: every ensemble ran on this machine's kernel: one clock, "
                "uncertainty 0, nothing corrected"]
    ens = rec.get("ensembles") if isinstance(rec.get("ensembles"), dict) else {}
    unc = {n: clocks.ensemble_uncertainty(ens.get(n)) for n in topo.ensembles}
    worst = clocks.max_uncertainty(rec)
    offsets = [abs(float(m["offset_s"])) for e in ens.values() if isinstance(e, dict)
               for m in (e.get("start"), e.get("end"))
               if isinstance(m, dict) and isinstance(m.get("offset_s"), (int, float))]
    drifts = [(abs(e["drift_ppm"]), e.get("drift_uncertainty_ppm")) for e in ens.values()
              if isinstance(e, dict) and isinstance(e.get("drift_ppm"), (int, float))]
    delays = [topo.link(a, b).delay_s for a in topo.ensembles for b in topo.ensembles
              if a != b and topo.link(a, b).delay_s > 0]
    text = (f"clocks: measured against {rec.get('reference', '?')} ({rec.get('method', '?')}) "
            "at each ensemble's start and end; event times corrected onto it")
    if worst is not None:
        text += (f"; largest uncertainty {worst[0] * 1e3:.3f} ms ({worst[1]}), largest offset "
                 f"{max(offsets, default=0.0) * 1e3:.3f} ms")
        if drifts:
            drift, within = max(drifts, key=lambda d: d[0])
            text += f", largest drift {drift:.1f} ppm" + (
                f" (+-{within:.1f})" if isinstance(within, (int, float)) else "")
    if delays:
        text += f"; smallest link delay {min(delays) * 1e3:g} ms"
    notes = [text]
    uncertain = []
    for a in topo.ensembles:
        for b in topo.ensembles:
            delay = topo.link(a, b).delay_s if a != b else 0.0
            ua, ub = unc.get(a), unc.get(b)
            if delay > 0 and ua is not None and ub is not None \
                    and ua + ub > CLOCK_WARN_SHARE * delay:
                uncertain.append((ua + ub, f"{a}->{b}", delay))
    if uncertain:
        uncertain.sort(reverse=True)
        shown = ", ".join(f"{link} by up to {u * 1e3:.3f} ms of {d * 1e3:g} ms"
                          for u, link, d in uncertain[:CLOCK_WARN_LINKS])
        more = len(uncertain) - CLOCK_WARN_LINKS
        notes.append(f"WARNING: clock uncertainty is more than {CLOCK_WARN_SHARE * 100:g}% "
                     f"of the link delay: one-way latencies on {len(uncertain)} link(s) are "
                     f"uncertain: {shown}" + (f" and {more} more" if more > 0 else ""))
    missing = sorted(n for n, u in unc.items() if u is None)
    if missing:
        notes.append(f"WARNING: no clock measurement for {', '.join(missing)}: "
                     "their event times are uncorrected and latencies to or from them "
                     "may be off by their clocks' offset")
    return notes


def verdict_summary(verdict: "Verdict | None") -> dict:
    """The verdict as plain data (``verdict.json`` beside the report)."""
    if verdict is None:
        return {"outcome": "NOT JUDGED", "judgements": []}
    return {"outcome": verdict.outcome, "z": verdict.z, "family_alpha": verdict.family_alpha,
            "tolerances": verdict.tolerances, "structural": verdict.structural,
            "counts": {"pass": len(verdict.passed), "fail": len(verdict.failed),
                       "undetermined": len(verdict.undetermined)},
            "judgements": [vars(j) for j in verdict.judgements]}
