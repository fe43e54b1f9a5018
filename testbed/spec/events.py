"""The experiment's event schema: written once, by the agent and the simulator
alike, read once, by the analysis.

An emulated run and its simulated baseline are compared record by record, so
both sides build their records here and nowhere else. One JSON object per
line (``events-<name>.jsonl``; recorded test data may be gzipped):

  send      flow msg src dst size ensure t            the sender handed it to ttnet
  deliver   flow msg src dst size ensure t intact     the receiver got it
                                                      (size: bytes received)
  complete  flow msg src dst size ensure t            the sender's ``after`` fired
  fail      flow msg src dst size ensure t reason     the sender's ``on_failure`` fired
  unknown   src dst size t                            a payload matching no planned message

``t`` is epoch seconds in emulation, simulated seconds in simulation. The
simulator adds ``replication`` to each record. ``events-<name>.jsonl`` is
written by ensemble <name>, on its clock: when the run's ``meta.json`` has
measured clocks (:mod:`testbed.spec.clocks`, method "ntp-probe"), the
reader moves each file's times onto the reference clock (its ensemble's
offset, linear between its start and end measurements); without them
(one kernel, older runs) times are read as written. Readers skip (and count) lines
that are not valid records; they never fail a run for one bad line.

Must never: import another testbed layer (the guest agent carries this
module into a container), or change a key without changing both sides.
"""
from __future__ import annotations

import functools
import gzip
import json
import logging
import math
import operator
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from testbed.spec import clocks
from testbed.spec.plan import message_size

log = logging.getLogger(__name__)

#: The kinds the analysis counts; other kinds are kept but not counted.
EVENT_KINDS = ("send", "deliver", "complete", "fail")
EVENT_GLOB = "events*.jsonl"
#: Recorded runs kept as test data are compressed.
EVENT_GLOB_GZ = "events*.jsonl.gz"


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One planned message: which flow, which number, between whom, how big."""

    flow: str
    msg: int
    src: str
    dst: str
    size: int
    ensure: bool

    @classmethod
    def planned(cls, flow: dict, k: int) -> "MessageRef":
        """Message ``k`` of a flow of the plan (:func:`testbed.spec.plan.flows_plan`)."""
        return cls(flow["name"], k, flow["src"], flow["dst"], message_size(flow, k),
                   flow["ensure"])


class _Record:
    """A record is ``{"event": KIND}``, then the message's fields (``ref``),
    then the event's own fields in declaration order (a later field of the
    same name, e.g. Deliver's received ``size``, wins)."""

    __slots__ = ()
    KIND: ClassVar[str]

    def record(self) -> dict[str, Any]:
        d: dict[str, Any] = {"event": self.KIND}
        for names, values in _record_plan(type(self)):
            d.update(zip(names, values(self)))
        return d


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


#: A MessageRef's field values in declaration order (one C call per record).
_ref_values = operator.attrgetter(*_field_names(MessageRef))


@functools.cache
def _record_plan(cls: type) -> tuple[tuple[tuple[str, ...], Any], ...]:
    """What ``record()`` does for ``cls``, worked out once: (names, a
    function giving their values) for each run of the fields in
    declaration order, ``ref`` expanded into the MessageRef's fields (the
    simulator writes tens of thousands of records a run)."""
    plan: list[tuple[tuple[str, ...], Any]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            get = operator.attrgetter(*run)
            plan.append((tuple(run), get if len(run) > 1 else lambda obj, g=get: (g(obj),)))
            run.clear()

    for name in _field_names(cls):
        if name == "ref":
            flush()
            plan.append((_field_names(MessageRef), lambda obj: _ref_values(obj.ref)))
        else:
            run.append(name)
    flush()
    return tuple(plan)


@dataclass(frozen=True, slots=True)
class Send(_Record):
    KIND = "send"
    ref: MessageRef
    t: float


@dataclass(frozen=True, slots=True)
class Deliver(_Record):
    KIND = "deliver"
    ref: MessageRef
    size: int           # bytes received (a corrupted copy may differ)
    t: float
    intact: bool


@dataclass(frozen=True, slots=True)
class Complete(_Record):
    KIND = "complete"
    ref: MessageRef
    t: float


@dataclass(frozen=True, slots=True)
class Fail(_Record):
    KIND = "fail"
    ref: MessageRef
    t: float
    reason: str | None


@dataclass(frozen=True, slots=True)
class Unknown(_Record):
    KIND = "unknown"
    src: str
    dst: str
    size: int
    t: float


Event = Send | Deliver | Complete | Fail | Unknown


def dumps(event: Event) -> str:
    """One event as its JSON line (without the newline)."""
    return json.dumps(event.record(), separators=(",", ":"))


class EventFile:
    """An append-only ``events-<name>.jsonl``, safe to write from several
    threads (the agent's sender and ttnet's callback thread).
    ``line_buffered``: every record reaches the file at once (an agent the
    fault timeline kills loses none), at a write per record."""

    def __init__(self, path: Path, line_buffered: bool = False) -> None:
        self._f = open(path, "a", buffering=1 if line_buffered else 1 << 16)
        self._lock = threading.Lock()

    def write(self, event: Event) -> None:
        self.write_record(event.record())

    def write_record(self, record: dict[str, Any]) -> None:
        """An already-built record (e.g. an app's ``record`` event)."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)

    def close(self) -> None:
        with self._lock:
            self._f.close()


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Write already-built records (e.g. the simulator's, with
    ``replication`` added) as one JSON line each."""
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def valid_record(obj: Any) -> bool:
    """Whether a parsed line is a record the analysis can use (or safely ignore)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return False
    if obj["event"] not in EVENT_KINDS:
        return True  # other kinds (unknown, ...) are kept, not counted
    t = obj.get("t")
    return (isinstance(obj.get("flow"), str)
            and isinstance(obj.get("msg"), int) and not isinstance(obj.get("msg"), bool)
            and isinstance(t, (int, float)) and not isinstance(t, bool)
            and math.isfinite(t))


@dataclass
class LoadedEvents:
    """Events of one run, with how many lines had to be skipped."""

    events: list[dict[str, Any]]
    malformed: int = 0
    files: list[Path] = field(default_factory=list)
    #: Ensembles whose event times were moved onto the reference clock.
    corrected: list[str] = field(default_factory=list)


def _writer(path: Path) -> str | None:
    """The ensemble that wrote ``events-<name>.jsonl[.gz]`` (None otherwise)."""
    name = path.name.removesuffix(".gz")
    if name.startswith("events-") and name.endswith(".jsonl"):
        return name[len("events-"):-len(".jsonl")]
    return None


def run_clocks(run_dir: Path) -> dict[str, dict]:
    """The measured clocks of a run directory's ``meta.json`` by ensemble
    (empty without meta.json or without measured clocks)."""
    try:
        meta = json.loads((Path(run_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return clocks.measured(meta.get("clocks")) if isinstance(meta, dict) else {}


def load_run(run_dir: Path, correct_clocks: bool = True) -> LoadedEvents:
    """All records of a run directory (every ``events*.jsonl`` in it, or
    ``events*.jsonl.gz``), or of a single such file. Malformed lines are
    skipped, counted and logged. A run directory with measured clocks has
    its times moved onto the reference clock (see the module docstring)
    unless ``correct_clocks`` is False."""
    run_dir = Path(run_dir)
    files = [run_dir] if run_dir.is_file() else sorted(
        list(run_dir.glob(EVENT_GLOB)) + list(run_dir.glob(EVENT_GLOB_GZ)))
    loaded = LoadedEvents(events=[], files=files)
    measured = run_clocks(run_dir) if correct_clocks and run_dir.is_dir() else {}
    for path in files:
        entry = measured.get(_writer(path) or "")
        if entry is not None and clocks.offset_at(entry, 0.0) is not None:
            loaded.corrected.append(_writer(path) or "")
        else:
            entry = None
        opener: Any = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                if valid_record(obj):
                    if entry is not None and isinstance(obj.get("t"), (int, float)) \
                            and not isinstance(obj["t"], bool):
                        obj["t"] = clocks.corrected(entry, float(obj["t"]))
                    loaded.events.append(obj)
                else:
                    loaded.malformed += 1
                    log.debug("%s:%d: skipped malformed event line", path, lineno)
    if loaded.malformed:
        log.warning("%s: skipped %d malformed event line(s)", run_dir, loaded.malformed)
    if not files:
        log.warning("%s: no %s files", run_dir, EVENT_GLOB)
    return loaded


def load_events(run_dir: Path, correct_clocks: bool = True) -> list[dict[str, Any]]:
    """The valid records of a run; see :func:`load_run` for the skipped
    count and the clock correction."""
    return load_run(run_dir, correct_clocks).events
