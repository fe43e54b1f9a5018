"""Per-flow statistics from the JSON event logs of one run.

This module owns reading ``events-*.jsonl`` files and turning events into
counts, delivery ratios and latency percentiles. It never runs experiments,
never plots and never compares runs (see ``testbed.compare``). A malformed
line (an agent killed mid-write, a stray print) is skipped and counted, not
fatal: one bad line must not lose a whole run's measurements.

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

import gzip
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

EVENT_KINDS = ("send", "deliver", "complete", "fail")
EVENT_GLOB = "events*.jsonl"
#: Recorded runs kept as test data are compressed.
EVENT_GLOB_GZ = "events*.jsonl.gz"


@dataclass
class LoadedEvents:
    """Events of one run, with how many lines had to be skipped."""

    events: list[dict[str, Any]]
    malformed: int = 0
    files: list[Path] = field(default_factory=list)


def _valid(obj: Any) -> bool:
    """Whether a parsed line is an event stats can use (or safely ignore)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return False
    if obj["event"] not in EVENT_KINDS:
        return True  # other agent events (start, ready...) are kept, not counted
    t = obj.get("t")
    return (isinstance(obj.get("flow"), str)
            and isinstance(obj.get("msg"), int) and not isinstance(obj.get("msg"), bool)
            and isinstance(t, (int, float)) and not isinstance(t, bool)
            and math.isfinite(t))


def load_run(run_dir: Path) -> LoadedEvents:
    """All events of a run directory (every ``events*.jsonl`` in it, or
    ``events*.jsonl.gz``), or of a single such file. Malformed lines are skipped, counted and logged."""
    run_dir = Path(run_dir)
    files = [run_dir] if run_dir.is_file() else sorted(
        list(run_dir.glob(EVENT_GLOB)) + list(run_dir.glob(EVENT_GLOB_GZ)))
    loaded = LoadedEvents(events=[], files=files)
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                if _valid(obj):
                    loaded.events.append(obj)
                else:
                    loaded.malformed += 1
                    log.debug("%s:%d: skipped malformed event line", path, lineno)
    if loaded.malformed:
        log.warning("%s: skipped %d malformed event line(s)", run_dir, loaded.malformed)
    if not files:
        log.warning("%s: no %s files", run_dir, EVENT_GLOB)
    return loaded


def load_events(run_dir: Path) -> list[dict[str, Any]]:
    """The valid events of a run; see ``load_run`` for the skipped count."""
    return load_run(run_dir).events


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order
    statistics, as ``numpy.percentile(values, q)``; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} is outside 0..100")
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


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


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; first column left, rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def summary_table(stats: dict[str, FlowStats]) -> str:
    """Plain-text table, one line per flow; latencies in milliseconds."""
    header = ["flow", "link", "ensure", "sent", "deliv", "dup", "fail",
              "compl", "ratio", "mean ms", "p50 ms", "p95 ms", "p99 ms"]
    rows = [[s.flow, f"{s.src}->{s.dst}",
             "-" if s.ensure is None else ("yes" if s.ensure else "no"),
             str(s.sent), str(s.delivered), str(s.duplicates), str(s.failed),
             str(s.completed), fmt_ratio(s.delivery_ratio), fmt_ms(s.mean),
             fmt_ms(s.p50), fmt_ms(s.p95), fmt_ms(s.p99)]
            for s in stats.values()]
    return render_table(header, rows)
