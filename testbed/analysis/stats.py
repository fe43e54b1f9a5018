"""Per-flow statistics from the JSON event logs of one run.

This module owns turning a run's events (read by :mod:`testbed.spec.events`)
into counts, delivery ratios and latency percentiles. It never runs experiments,
never plots and never compares runs (see ``testbed.analysis.compare``). A malformed
line (an agent killed mid-write, a stray print) is skipped and counted, not
fatal: one bad line must not lose a whole run's measurements.

Tables are data here (:class:`Table`: headers, rows of text cells,
alignment), rendered to plain text by :meth:`Table.text`; the terminal
(``testbed.console``) may render the same Table with ``rich``. This layer
never imports ``rich`` and never prints.

Definitions (docs/topologies.md repeats them):
- a message is identified by (flow, msg);
- sent = distinct messages with a ``send`` event;
- delivered = distinct messages with at least one intact ``deliver``;
- duplicates = intact deliveries beyond the first of a message;
- latency = first intact deliver.t - send.t, for messages that have both;
- percentiles interpolate linearly between order statistics (numpy's
  default, "linear" / Hyndman-Fan type 7).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from testbed.spec.events import EVENT_KINDS, load_events, load_run  # noqa: F401  (re-exported: the reader)
from testbed.spec.quantiles import percentile

log = logging.getLogger(__name__)


@dataclass
class FlowStats:
    """What happened to one flow's messages. Latencies are seconds, in
    message order; the summary fields are None when nothing was measured."""

    flow: str
    src: str = ""
    dst: str = ""
    ensure: bool | None = None
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    corrupted: int = 0
    failed: int = 0
    completed: int = 0
    unmatched: int = 0  # delivered messages whose send was never logged
    latencies: list[float] = field(default_factory=list)

    @property
    def delivery_ratio(self) -> float | None:
        """Delivered share of the sent messages (None if nothing was sent)."""
        if self.sent == 0:
            return None
        return (self.delivered - self.unmatched) / self.sent

    @property
    def mean(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.latencies, 95)

    @property
    def p99(self) -> float | None:
        return percentile(self.latencies, 99)

    @property
    def min(self) -> float | None:
        return min(self.latencies) if self.latencies else None


def flow_stats(events: Iterable[dict[str, Any]]) -> dict[str, FlowStats]:
    """Per-flow statistics, keyed and ordered by flow name."""
    sends: dict[tuple[str, int], float] = {}
    first_delivery: dict[tuple[str, int], float] = {}
    stats: dict[str, FlowStats] = {}
    done: dict[str, dict[str, set[int]]] = {}
    for ev in events:
        kind = ev.get("event")
        if kind not in EVENT_KINDS:
            continue
        name, key = ev["flow"], (ev["flow"], ev["msg"])
        fs = stats.get(name)
        if fs is None:
            fs = stats[name] = FlowStats(flow=name)
            done[name] = {"complete": set(), "fail": set()}
        fs.src = fs.src or ev.get("src", "")
        fs.dst = fs.dst or ev.get("dst", "")
        if fs.ensure is None and isinstance(ev.get("ensure"), bool):
            fs.ensure = ev["ensure"]
        t = float(ev["t"])
        if kind == "send":
            # A repeated send line for the same message keeps the earliest.
            sends[key] = min(t, sends.get(key, t))
        elif kind == "deliver":
            if ev.get("intact", True) is False:
                fs.corrupted += 1
            elif key in first_delivery:
                fs.duplicates += 1
                first_delivery[key] = min(t, first_delivery[key])
            else:
                first_delivery[key] = t
        else:
            done[name][kind].add(ev["msg"])
    for (name, msg), t_send in sends.items():
        stats[name].sent += 1
    for (name, msg), t_deliver in sorted(first_delivery.items()):
        fs = stats[name]
        fs.delivered += 1
        if (name, msg) in sends:
            fs.latencies.append(t_deliver - sends[(name, msg)])
        else:
            fs.unmatched += 1
    for name, kinds in done.items():
        stats[name].completed = len(kinds["complete"])
        stats[name].failed = len(kinds["fail"])
    return dict(sorted(stats.items()))


def fmt_ms(seconds: float | None) -> str:
    """Seconds as milliseconds text for tables; '-' for nothing measured."""
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


#: Column alignments a :class:`Table` knows.
ALIGNS = ("left", "right")


@dataclass(frozen=True)
class Table:
    """A table as data: what to show, not how. ``rows`` are text cells, one
    list per row, as wide as ``headers``. ``align`` is "left" or "right"
    per column; empty means the first column left, the rest right (numbers).
    ``title`` is shown above the table (plain text: on its own line)."""

    headers: list[str]
    rows: list[list[str]]
    title: str = ""
    align: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [r for r in self.rows if len(r) != len(self.headers)]
        if bad:
            raise ValueError(f"table row {bad[0]!r} has {len(bad[0])} cells, "
                             f"not {len(self.headers)}")
        if self.align and (len(self.align) != len(self.headers)
                           or any(a not in ALIGNS for a in self.align)):
            raise ValueError(f"align {self.align!r} must give one of {ALIGNS} per column")

    def alignments(self) -> tuple[str, ...]:
        """One of ALIGNS per column (the default filled in)."""
        if self.align:
            return self.align
        return tuple("left" if i == 0 else "right" for i in range(len(self.headers)))

    def text(self) -> str:
        """The table as plain text (without the title): see :func:`render_table`."""
        return render_table(self.headers, self.rows, self.align)


def render_table(header: list[str], rows: list[list[str]],
                 align: tuple[str, ...] | list[str] = ()) -> str:
    """Columns padded to their widest cell; first column left, rest right
    unless ``align`` gives "left"/"right" per column."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = [a == "left" for a in align] if align else [i == 0 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if left[i] else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


SUMMARY_HEADER = ["flow", "link", "ensure", "sent", "deliv", "dup", "fail",
                  "compl", "ratio", "mean ms", "p50 ms", "p95 ms", "p99 ms"]


def summary_rows(stats: dict[str, FlowStats], title: str = "") -> Table:
    """The per-flow summary as a :class:`Table`, one row per flow;
    latencies in milliseconds."""
    rows = [[s.flow, f"{s.src}->{s.dst}",
             "-" if s.ensure is None else ("yes" if s.ensure else "no"),
             _count(s.sent), _count(s.delivered), _count(s.duplicates), _count(s.failed),
             _count(s.completed), fmt_ratio(s.delivery_ratio), fmt_ms(s.mean),
             fmt_ms(s.p50), fmt_ms(s.p95), fmt_ms(s.p99)]
            for s in stats.values()]
    return Table(list(SUMMARY_HEADER), rows, title=title)


def _count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def per_run(stats: dict[str, FlowStats], runs: int) -> dict[str, FlowStats]:
    """Pooled stats of ``runs`` replications with every count made the mean
    per run (the latencies stay pooled): what one run of the flow looks like."""
    from dataclasses import replace
    counts = ("sent", "delivered", "duplicates", "corrupted", "failed", "completed", "unmatched")
    return {k: replace(s, **{c: getattr(s, c) / runs for c in counts})
            for k, s in stats.items()}


def summary_table(stats: dict[str, FlowStats]) -> str:
    """Plain-text table, one line per flow; latencies in milliseconds."""
    return summary_rows(stats).text()
