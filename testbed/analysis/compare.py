"""Emulated vs simulated: per-flow comparison, CDF plots, report, fidelity.

This module owns the judgement "does the simulator predict the emulation?":
it pairs the flows of two event sets, computes relative errors
``(sim - emu) / emu``, draws latency CDFs and writes ``report.md``. It never
runs an experiment or a simulation and never reads a topology file; it gets
events (and, for the delay floor check, a ``Topology``) from its caller.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from testbed.spec.model import Topology
from testbed.analysis.stats import FlowStats, Table, flow_stats, fmt_ms, fmt_ratio
from testbed.spec.quantiles import percentile
from testbed.spec.timeline import link_history

log = logging.getLogger(__name__)

METRICS = ("delivery_ratio", "mean", "p50", "p95", "p99")
METRIC_LABELS = {"delivery_ratio": "delivery ratio", "mean": "mean latency",
                 "p50": "p50 latency", "p95": "p95 latency", "p99": "p99 latency"}
# Panels per CDF page: 12 small multiples (4 x 3) stay legible on a laptop
# screen; mesh-20's 60 flows become five pages instead of one unreadable one.
PANELS_PER_PAGE = 12
# The kernel and the NFQUEUE hop add a little scheduling noise; a latency up
# to this far under the configured delay still counts as honouring it.
DELAY_FLOOR_SLACK_S = 0.0005


def relative_error(emu: float | None, sim: float | None) -> float | None:
    """(sim - emu) / emu; None when either is missing or emu is 0."""
    if emu is None or sim is None or emu == 0:
        return None
    return (sim - emu) / emu


@dataclass
class FlowComparison:
    """One flow measured twice. ``emu``/``sim`` are empty stats (sent=0)
    when the flow is missing from that side."""

    flow: str
    emu: FlowStats
    sim: FlowStats

    def value(self, side: str, metric: str) -> float | None:
        return getattr(self.emu if side == "emu" else self.sim, metric)

    def error(self, metric: str) -> float | None:
        """Relative error of the simulation for one of METRICS."""
        return relative_error(self.value("emu", metric), self.value("sim", metric))

    @property
    def delivery_ratio_error(self) -> float | None:
        return self.error("delivery_ratio")

    @property
    def mean_error(self) -> float | None:
        return self.error("mean")

    @property
    def p50_error(self) -> float | None:
        return self.error("p50")

    @property
    def p95_error(self) -> float | None:
        return self.error("p95")

    @property
    def p99_error(self) -> float | None:
        return self.error("p99")


def compare_stats(emu: dict[str, FlowStats],
                  sim: dict[str, FlowStats]) -> list[FlowComparison]:
    """Pair flows by name (union of both sides), sorted by flow name."""
    return [FlowComparison(name, emu.get(name) or FlowStats(flow=name),
                           sim.get(name) or FlowStats(flow=name))
            for name in sorted(set(emu) | set(sim))]


def compare(emu_events: Iterable[dict[str, Any]],
            sim_events: Iterable[dict[str, Any]]) -> list[FlowComparison]:
    """Per-flow emulated vs simulated statistics from two event lists."""
    return compare_stats(flow_stats(emu_events), flow_stats(sim_events))


def _fmt_error(err: float | None) -> str:
    return "-" if err is None else f"{err * 100:+.1f}%"


def _fmt_metric(metric: str, value: float | None) -> str:
    return fmt_ratio(value) if metric == "delivery_ratio" else fmt_ms(value)


def table_rows(rows: list[FlowComparison]) -> list[list[str]]:
    """One line per flow x metric: flow, metric, emulated, simulated, error."""
    out = []
    for row in rows:
        for metric in METRICS:
            unit = "" if metric == "delivery_ratio" else " (ms)"
            out.append([row.flow, METRIC_LABELS[metric] + unit,
                        _fmt_metric(metric, row.value("emu", metric)),
                        _fmt_metric(metric, row.value("sim", metric)),
                        _fmt_error(row.error(metric))])
    return out


TABLE_HEADER = ["flow", "metric", "emulated", "simulated", "rel. error"]


def comparison_rows(rows: list[FlowComparison], title: str = "") -> Table:
    """The comparison as a :class:`~testbed.analysis.stats.Table`, long
    format: one row per flow and metric (see :func:`table_rows`)."""
    return Table(list(TABLE_HEADER), table_rows(rows), title=title)


def format_table(rows: list[FlowComparison], markdown: bool = False) -> str:
    """The comparison as a plain-text (or Markdown) table, long format: one
    line per flow and metric, so 60 flows stay readable in a terminal."""
    table = comparison_rows(rows)
    if not markdown:
        return table.text()
    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * 3) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table.rows]
    return "\n".join(lines)


def _markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---" if a == "left" else "---:" for a in table.alignments()) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in table.rows])


def _cdf(values: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(v * 1000 for v in values)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def plot_cdfs(rows: list[FlowComparison], out_dir: Path,
              title: str = "latency") -> list[Path]:
    """Latency CDF PNGs: page 1 pools all flows (log x), then one small panel
    per flow with the emulated (solid) and simulated (dashed) curves, up to
    PANELS_PER_PAGE panels a page. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")  # no display in containers or CI
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    emu_all = [v for r in rows for v in r.emu.latencies]
    sim_all = [v for r in rows for v in r.sim.latencies]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw(ax, emu_all, sim_all, f"{title}: all flows pooled")
    # Log x keeps 20 ms tokens and 2 s bulk transfers on one readable axis;
    # skewed clocks can make latencies <= 0, which a log axis cannot show.
    if emu_all + sim_all and min(emu_all + sim_all) > 0:
        from matplotlib.ticker import LogLocator, ScalarFormatter
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter("")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out_dir / "cdf-all.png", plt))
    flows = [r for r in rows if r.emu.latencies or r.sim.latencies]
    paths += _pages(plt, flows, 3, (4.2, 3.0),
                    lambda ax, row: _draw(ax, row.emu.latencies, row.sim.latencies, row.flow),
                    dict(loc="lower right", fontsize="small"),
                    f"{title}: one-way latency CDF per flow", out_dir / "cdf-flows")
    return paths


def _pages(plt: Any, items: list[Any], max_cols: int, panel_in: tuple[float, float],
           draw: Any, legend: dict[str, Any], suptitle: str, stem: Path) -> list[Path]:
    """One panel per item (``draw(ax, item)``), PANELS_PER_PAGE panels a
    page, up to ``max_cols`` columns; the legend on the first panel; pages
    saved as ``<stem>.png`` or, when there are several, ``<stem>-<n>.png``."""
    pages = [items[i:i + PANELS_PER_PAGE] for i in range(0, len(items), PANELS_PER_PAGE)]
    paths: list[Path] = []
    for n, page in enumerate(pages, 1):
        cols = min(max_cols, len(page))
        nrows = -(-len(page) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(panel_in[0] * cols, panel_in[1] * nrows),
                                 squeeze=False)
        for ax, item in zip(axes.flat, page):
            draw(ax, item)
        for ax in list(axes.flat)[len(page):]:
            ax.set_visible(False)
        axes.flat[0].legend(**legend)
        suffix = f"-{n}" if len(pages) > 1 else ""
        fig.suptitle(suptitle)
        paths.append(_save(fig, stem.with_name(f"{stem.name}{suffix}.png"), plt))
    return paths


def _send_latency(events: Iterable[dict[str, Any]], t0: float, replication: int | None
                  ) -> dict[str, tuple[list[tuple[float, float]], list[float]]]:
    """Per flow: (send time - t0, latency) of delivered messages and the
    send times of lost ones; simulated events of one ``replication``."""
    sends: dict[tuple[str, int], tuple[float, str]] = {}
    first: dict[tuple[str, int], float] = {}
    for ev in events:
        if replication is not None and ev.get("replication", 0) != replication:
            continue
        kind = ev.get("event")
        if kind == "send":
            sends[(ev["flow"], ev["msg"])] = (float(ev["t"]), ev["flow"])
        elif kind == "deliver" and ev.get("intact", True):
            key = (ev["flow"], ev["msg"])
            first[key] = min(float(ev["t"]), first.get(key, float("inf")))
    out: dict[str, tuple[list[tuple[float, float]], list[float]]] = {}
    for key, (t, flow) in sorted(sends.items()):
        points, lost = out.setdefault(flow, ([], []))
        if key in first:
            points.append((t - t0, first[key] - t))
        else:
            lost.append(t - t0)
    return out


def plot_timeline(emu_events: Iterable[dict[str, Any]], sim_events: Iterable[dict[str, Any]],
                  out_dir: Path, emu_t0: float, events: list[tuple[float, str]],
                  title: str = "latency") -> list[Path]:
    """Latency over time PNGs for a run with a fault timeline: per flow,
    each message's one-way latency against its send time (seconds from the
    start), emulated (dots) and simulated (replication 0, crosses); lost
    messages as ticks along the bottom; a vertical line at each event
    (``events``: (time, label)). ``emu_t0`` is the emulated start (epoch
    seconds). PANELS_PER_PAGE panels a page. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator
    from matplotlib.transforms import blended_transform_factory

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emu = _send_latency(emu_events, emu_t0, None)
    sim = _send_latency(sim_events, 0.0, 0)
    flows = sorted(set(emu) | set(sim))

    def draw(ax: Any, flow: str) -> None:
        for side, name, marker, colour in ((emu, "emulated", ".", "C0"),
                                           (sim, "simulated", "x", "C1")):
            points, lost = side.get(flow, ([], []))
            if points:
                ax.scatter([p[0] for p in points], [p[1] * 1000 for p in points],
                           s=10 if marker == "." else 14, marker=marker, color=colour,
                           linewidths=0.8, label=f"{name} (n={len(points)})")
            if lost:
                bottom = blended_transform_factory(ax.transData, ax.transAxes)
                y = 0.02 if name == "emulated" else 0.06
                ax.scatter(lost, [y] * len(lost), transform=bottom, marker="|",
                           s=30, color=colour, alpha=0.7,
                           label=f"{name}: lost ({len(lost)})")
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for t, label in events:
            ax.axvline(t, color="0.4", linestyle=":", linewidth=1)
            ax.text(t, 0.98, f" {label}", transform=top, rotation=90, va="top",
                    ha="left", fontsize="x-small", color="0.3")
        ax.set_yscale("log")
        if any(side.get(flow, ([], []))[1] for side in (emu, sim)):
            lo, hi = ax.get_ylim()      # room at the bottom for the lost ticks
            ax.set_ylim(lo / 1.8, hi * 1.2)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(flow, fontsize="medium")
        ax.set_xlabel("send time (s from the start)")
        ax.set_ylabel("one-way latency (ms)")
        ax.grid(True, alpha=0.3)

    return _pages(plt, flows, 2, (6.0, 3.4), draw, dict(loc="upper right", fontsize="x-small"),
                  f"{title}: latency over time (dotted: fault timeline events)",
                  out_dir / "latency-time")


def _draw(ax: Any, emu: list[float], sim: list[float], label: str) -> None:
    for values, name, style in ((emu, "emulated", "-"), (sim, "simulated", "--")):
        if values:
            xs, ys = _cdf(values)
            ax.step(xs, ys, style, where="post", label=f"{name} (n={len(xs)})")
    ax.set_title(label, fontsize="medium")
    ax.set_xlabel("one-way latency (ms)")
    ax.set_ylabel("fraction of messages")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.debug("wrote %s", path)
    return path


def verdict_lines(verdict: Any) -> list[str]:
    """The fidelity verdict as Markdown: outcome and counts first, then
    every FAIL and UNDETERMINED quantity, then a table of all judgements."""
    if verdict is None:
        return ["## Fidelity: not judged", "",
                "No flow crosses links of at least 0.5 ms both ways.", ""]
    tol = verdict.tolerances
    lines = [f"## Fidelity: {verdict.outcome} ({verdict.counts()})", "",
             f"Each quantity is judged at confidence 1 - {verdict.family_alpha:g}/m over the "
             f"m judged quantities (z = {verdict.z:.2f}): p50 within "
             f"+/-{tol.get('p50', 0) * 100:g}%, p95 within +/-{tol.get('p95', 0) * 100:g}%, "
             f"best-effort delivery within +/-{tol.get('delivery_abs', 0):g} "
             f"(or {tol.get('delivery_rel', 0) * 100:g}% of the smaller share). FAIL: the "
             "emulated interval lies wholly outside the band; PASS: wholly inside; "
             "UNDETERMINED: too few samples to tell.", ""]
    for text in verdict.structural:
        lines.append(f"- **FAIL** {text}")
    for j in verdict.failed:
        lines.append(f"- **FAIL** {j.describe()}")
    for j in verdict.undetermined:
        lines.append(f"- UNDETERMINED {j.describe()}")
    lines += ["", "| flow | quantity | outcome | emulated | interval | simulated | band | n | deff |",
              "|---|---|---|---:|---|---:|---|---:|---:|"]
    for j in verdict.judgements:
        c = j.cells()
        unit = f" ({j.unit.strip()})" if j.unit else ""
        lines.append(f"| {j.flow} | {j.quantity}{unit} | {j.outcome} | {c['emu']} | "
                     f"{c['interval']} | {c['sim']} | {c['band']} | {j.n_emu} | {j.deff:.1f} |")
    return lines + [""]


@dataclass
class RecordComparison:
    """One app measurement (``ens.record(name, value)``) emulated vs
    simulated: counts per run (simulated: mean per replication) and the
    values' median and 95th percentile."""

    name: str
    emu_count: int
    sim_count: float
    emu_p50: float | None
    sim_p50: float | None
    emu_p95: float | None
    sim_p95: float | None


def record_comparison(emu_events: Iterable[dict[str, Any]],
                      sim_events: Iterable[dict[str, Any]],
                      replications: int = 1) -> list[RecordComparison]:
    """App records by name, emulated vs simulated, sorted by name."""
    def values(events: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for ev in events:
            if ev.get("event") == "record" and isinstance(ev.get("name"), str):
                value = ev.get("value")
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.setdefault(ev["name"], []).append(float(value))
        return out
    emu, sim = values(emu_events), values(sim_events)
    rows = []
    for name in sorted(set(emu) | set(sim)):
        e, s = emu.get(name, []), sim.get(name, [])
        rows.append(RecordComparison(name, len(e), len(s) / max(replications, 1),
                                     percentile(e, 50), percentile(s, 50),
                                     percentile(e, 95), percentile(s, 95)))
    return rows


def record_rows(records: list[RecordComparison], title: str = "") -> Table:
    """App measurements as a Table (values as recorded: the app's units)."""
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.6g}"
    return Table(["measurement", "emulated n", "simulated n/run", "emulated p50",
                  "simulated p50", "p50 rel. error", "emulated p95", "simulated p95",
                  "p95 rel. error"],
                 [[r.name, str(r.emu_count), f"{r.sim_count:.1f}", num(r.emu_p50),
                   num(r.sim_p50), _fmt_error(relative_error(r.emu_p50, r.sim_p50)),
                   num(r.emu_p95), num(r.sim_p95),
                   _fmt_error(relative_error(r.emu_p95, r.sim_p95))] for r in records],
                 title=title)


def write_report(run_dir: Path, rows: list[FlowComparison], plots: list[Path],
                 notes: list[str], title: str | None = None, verdict: Any = None,
                 records: list[RecordComparison] | None = None,
                 timeline: list[Path] | None = None) -> Path:
    """Write ``run_dir/report.md``: the fidelity verdict first (when given),
    notes, the comparison table and the plots (linked relative to run_dir so
    the directory can be moved). Returns it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = run_dir / "report.md"
    lines = [f"# {title or 'Emulated vs simulated: ' + run_dir.name}", ""]
    if verdict is not None or notes:
        lines += verdict_lines(verdict)
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["## Per-flow comparison", "",
              "Relative error is (simulated - emulated) / emulated. Latencies "
              "are one-way, in milliseconds; percentiles interpolate linearly.",
              "", format_table(rows, markdown=True), ""]
    if records:
        lines += ["## App measurements", "",
                  "What the apps recorded with `ens.record(name, value)`, in their own "
                  "units; counts per run (simulated: mean per replication).", "",
                  _markdown(record_rows(records)), ""]
    if plots:
        lines += ["## Latency CDFs", ""]
        for plot in plots:
            rel = Path(os.path.relpath(Path(plot).resolve(), run_dir.resolve()))
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    if timeline:
        lines += ["## Latency over time", "",
                  "Each message's one-way latency against its send time, emulated and "
                  "simulated (replication 0); lost messages are ticks along the bottom; "
                  "dotted lines are the fault timeline's events.", ""]
        for plot in timeline:
            rel = Path(os.path.relpath(Path(plot).resolve(), run_dir.resolve()))
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def flow_ends(topology: Topology, name: str, seen: tuple[str, str]) -> tuple[str, str]:
    """A flow's (src, dst): the topology's, or, for an app's flow (not in
    the topology), ``seen``: the ends its events name."""
    for f in topology.flows:
        if f.name == name:
            return f.src, f.dst
    return seen


def delay_floor_violations(topology: Topology, emu_events: Iterable[dict[str, Any]],
                           slack_s: float = DELAY_FLOOR_SLACK_S) -> list[str]:
    """Flows whose fastest emulated message beat the link's configured delay
    (minus jitter and slack): proof the impairment was not applied. An empty
    list means the impairment was applied."""
    problems = []
    for name, fs in flow_stats(emu_events).items():
        src, dst = flow_ends(topology, name, (fs.src, fs.dst))
        if src not in topology.ensembles or dst not in topology.ensembles or fs.min is None:
            continue
        link = topology.link(src, dst)
        # A fault timeline may lower the delay: the floor is the lowest in force.
        floor = min(max(0.0, spec.delay_s - spec.jitter_s)
                    for _, spec in link_history(topology, src, dst)) - slack_s
        if fs.min < floor:
            problems.append(f"{name}: fastest emulated latency {fs.min * 1000:.2f} ms "
                            f"is below the {src}->{dst} link delay "
                            f"{link.delay_s * 1000:g} ms (jitter {link.jitter_s * 1000:g} ms)")
    return problems
