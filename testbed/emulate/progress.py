"""Live progress of an emulated run: who has sent and received what, so far.

Owns: reading the agents' ``events*.jsonl`` files (the schema of
:mod:`testbed.spec.events`) *incrementally* while they are being written
(:class:`EventTailer`), the snapshot handed to the caller
(:class:`RunProgress`), and running a caller's monitor beside a blocking
wait (:func:`watch`).

Must never: change how or how long a run waits (``watch`` only adds a
thread beside the caller's wait, whose result, timeout and exceptions pass
through untouched), let a monitor's failure reach the run, re-read a whole
file per tick (only the bytes appended since the last tick), print, or
import anything but ``testbed.spec`` and the standard library.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from testbed.spec.events import EVENT_GLOB, valid_record

log = logging.getLogger(__name__)

#: How often a monitor is called while flows run.
MONITOR_INTERVAL_S = 0.5
#: How long the end of a wait waits for a monitor still busy with a tick.
JOIN_TIMEOUT_S = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class FlowProgress:
    """One flow so far: distinct messages sent (a ``send`` record) and
    delivered (at least one intact ``deliver``), as in testbed.analysis.stats."""

    name: str
    src: str
    dst: str
    planned: int
    sent: int = 0
    delivered: int = 0


@dataclass(frozen=True)
class RunProgress:
    """A snapshot of a run while its flows run. ``elapsed_s`` counts from
    the planned start (negative before it); ``planned_s`` is the planned
    end minus start (the topology's duration plus the grace period).
    ``done`` is set on the last snapshot, after the wait returned."""

    topology: str
    elapsed_s: float
    planned_s: float
    flows: tuple[FlowProgress, ...]
    done: bool = False
    malformed: int = 0

    @property
    def planned(self) -> int:
        return sum(f.planned for f in self.flows)

    @property
    def sent(self) -> int:
        return sum(f.sent for f in self.flows)

    @property
    def delivered(self) -> int:
        return sum(f.delivered for f in self.flows)


class EventTailer:
    """Counts sent and delivered messages per flow from the event files of
    a run directory as they grow. Each :meth:`poll` reads only what was
    appended since the previous one; a last line without its newline yet
    (an agent's buffer flushed mid-line) is kept and completed next time.
    Files that appear later are picked up; malformed lines are counted."""

    def __init__(self, run_dir: Path, glob: str = EVENT_GLOB) -> None:
        self.run_dir = Path(run_dir)
        self.glob = glob
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._sent: dict[str, set[int]] = {}
        self._delivered: dict[str, set[int]] = {}
        self.malformed = 0

    def poll(self) -> None:
        """Read what the event files gained since the last poll."""
        for path in sorted(self.run_dir.glob(self.glob)):
            try:
                self._read_new(path)
            except OSError as exc:   # vanished or unreadable: try again next poll
                log.debug("progress: cannot read %s: %s", path, exc)

    def _read_new(self, path: Path) -> None:
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < offset:          # truncated or replaced: start over (sets dedupe)
                log.debug("progress: %s shrank from %d to %d bytes", path, offset, size)
                offset, self._partial[path] = 0, b""
            if size == offset:
                self._offsets[path] = offset
                return
            fh.seek(offset)
            chunk = fh.read(size - offset)
        self._offsets[path] = offset + len(chunk)
        data = self._partial.get(path, b"") + chunk
        *lines, rest = data.split(b"\n")
        self._partial[path] = rest
        for line in lines:
            self._count(line)

    def _count(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except ValueError:         # JSONDecodeError, or bytes that are not UTF-8
            rec = None
        if not valid_record(rec):
            self.malformed += 1
            return
        kind = rec["event"]
        if kind == "send":
            self._sent.setdefault(rec["flow"], set()).add(rec["msg"])
        elif kind == "deliver" and rec.get("intact", True) is not False:
            self._delivered.setdefault(rec["flow"], set()).add(rec["msg"])

    def sent(self, flow: str) -> int:
        return len(self._sent.get(flow, ()))

    def delivered(self, flow: str) -> int:
        return len(self._delivered.get(flow, ()))

    def flows(self) -> list[str]:
        """Every flow seen in the files so far, sorted."""
        return sorted(set(self._sent) | set(self._delivered))


class RunWatcher:
    """Builds :class:`RunProgress` snapshots of one run: the plan's flows
    (``plan.json``'s ``flows``) with the tailer's counts. ``clock`` is the
    epoch clock ``start_at``/``end_at`` are in (injectable for tests)."""

    def __init__(self, run_dir: Path, topology: str, flows: list[dict], start_at: float,
                 end_at: float, clock: Callable[[], float] = time.time) -> None:
        self.topology = topology
        self.flows = flows
        self.start_at = start_at
        self.end_at = end_at
        self.clock = clock
        self.tailer = EventTailer(run_dir)
        self._lock = threading.Lock()   # the final snapshot may race a late tick

    def snapshot(self, done: bool = False) -> RunProgress:
        with self._lock:
            self.tailer.poll()
            t = self.tailer
            flows = [FlowProgress(f["name"], f["src"], f["dst"], int(f["count"]),
                                  t.sent(f["name"]), t.delivered(f["name"]))
                     for f in self.flows]
            planned = {f["name"] for f in self.flows}
            # Records of flows not in the plan (should not happen) still show.
            flows += [FlowProgress(n, "?", "?", 0, t.sent(n), t.delivered(n))
                      for n in t.flows() if n not in planned]
            return RunProgress(self.topology, self.clock() - self.start_at,
                               self.end_at - self.start_at, tuple(flows), done,
                               t.malformed)


def watch(wait: Callable[[], T], snapshot: Callable[..., RunProgress],
          monitor: Callable[[RunProgress], None],
          interval_s: float = MONITOR_INTERVAL_S) -> T:
    """``wait()`` in this thread, returning (or raising) what it does, while
    a daemon thread calls ``monitor(snapshot())`` every ``interval_s``.
    When ``wait`` ends, ticking stops and the monitor gets one last
    ``snapshot(done=True)``. A snapshot or monitor that raises is logged
    (with its traceback the first time) and never reaches the caller; one
    that hangs is left behind after JOIN_TIMEOUT_S."""
    stop = threading.Event()
    failures = [0]

    def tick(done: bool = False) -> None:
        try:
            monitor(snapshot(done=True) if done else snapshot())
        except Exception:
            failures[0] += 1
            if failures[0] == 1:
                log.warning("progress monitor failed (the run goes on)", exc_info=True)
            else:
                log.debug("progress monitor failed again (%d)", failures[0], exc_info=True)

    def loop() -> None:
        while not stop.wait(interval_s):
            tick()

    thread = threading.Thread(target=loop, name="ttnet-progress", daemon=True)
    thread.start()
    try:
        return wait()
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.warning("progress monitor still busy after %.0f s; left behind", JOIN_TIMEOUT_S)
        else:
            tick(done=True)
