"""The fault timeline of a running emulation: link changes and ensemble actions.

Owns one helper thread per run that applies ``topology.events`` (as
:func:`testbed.spec.timeline.steps` reads them) at ``start_at + at``: a
link change goes to the running impairment engine
(:meth:`testbed.emulate.impair.Impairments.update`, in place, nothing
restarted), an ensemble action to the backend (``pause``/``resume``/
``kill``/``restart``). Every applied event is recorded with the time it was
applied (``applied``: what meta.json keeps as ``events_applied``).

A restart writes ``restart-<name>.json`` (``incarnation``: 2, 3, ...;
``at``: the event's time from the start) into the run directory just before
the backend kills the agent and starts a fresh one, which reads it (see
:mod:`testbed.guest.agent`). The backend is told at start which restarts
are to come (before the end time), so its wait for the agents' exit codes
waits for the restarted agents too; at stop, that none are.

An ensemble still paused when the run's end time comes (or when the run
stops early) is resumed, so its agent can write its results and exit.

Must never: change a link or a host of another run, or outlive the run:
:meth:`TimelineRunner.stop` joins the thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from testbed.spec.jsonio import write_json_atomic
from testbed.spec.model import Topology
from testbed.spec.timeline import Step, steps

log = logging.getLogger(__name__)


class TimelineRunner:
    """Applies a topology's events to hosts, impairments and a backend."""

    def __init__(self, topology: Topology, hosts: dict[str, Any], impair: Any,
                 backend: Any, start_at: float, end_at: float,
                 say: Callable[[str], None] | None = None,
                 run_dir: Path | None = None) -> None:
        self.topology = topology
        self.hosts, self.impair, self.backend = hosts, impair, backend
        self.start_at, self.end_at = start_at, end_at
        self.say = say or (lambda msg: log.info("%s", msg))
        self.steps = steps(topology)
        #: One record per event, in order: planned ``at``, the offset from
        #: the start at which it was applied (``t``) and how long applying
        #: took (``took_s``); ``error`` when it failed.
        self.applied: list[dict[str, Any]] = []
        self.paused: set[str] = set()
        self.run_dir = run_dir
        #: The incarnation each restarted ensemble's agent is in (1: the first).
        self.incarnations: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.steps:
            return
        due = Counter(s.action[0] for s in self.steps if s.action is not None
                      and s.action[1] == "restart" and self.start_at + s.at_s < self.end_at)
        if due:
            self.backend.expect_restarts(dict(due))
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop applying events (those not yet due are skipped) and resume
        any paused ensemble. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if hasattr(self.backend, "expect_restarts"):
            self.backend.expect_restarts({})
        self._resume_paused("the run ended")

    def _run(self) -> None:
        for step in self.steps:
            if self._stop.wait(max(0.0, self.start_at + step.at_s - time.time())):
                return
            self._apply(step)
        # Hold until the end time, then let paused ensembles finish.
        if not self._stop.wait(max(0.0, self.end_at - time.time())):
            self._resume_paused("the end time came")

    def _apply(self, step: Step) -> None:
        began = time.time()
        record: dict[str, Any] = {"at": step.at_s, "event": step.describe(),
                                  "t": round(began - self.start_at, 4)}
        try:
            for (src, dst), spec in step.links.items():
                a, b = self.hosts[src], self.hosts[dst]
                self.impair.update(a.netns_path, a.ifname, b.ip, spec)
            if step.action is not None:
                name, action = step.action
                if action == "restart":
                    self._mark_restart(name, step.at_s)
                getattr(self.backend, action)(name)
                if action == "pause":
                    self.paused.add(name)
                else:
                    self.paused.discard(name)
        except Exception as exc:   # record it and go on: the run itself continues
            log.exception("timeline event %s failed", step.describe())
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["took_s"] = round(time.time() - began, 4)
        self.applied.append(record)
        late = record["t"] - step.at_s
        self.say(f"[{self.topology.name}] t={record['t']:.3f}s {step.describe()}"
                 + (f" FAILED: {record['error']}" if "error" in record else "")
                 + (f" ({late * 1000:.0f} ms late)" if late > 0.05 else ""))

    def _mark_restart(self, name: str, at_s: float) -> None:
        n = self.incarnations[name] = self.incarnations.get(name, 1) + 1
        if self.run_dir is None:
            raise RuntimeError("a restart needs the run directory (run_dir=) for "
                               f"restart-{name}.json")
        write_json_atomic(self.run_dir / f"restart-{name}.json",
                          {"incarnation": n, "at": at_s, "written": time.time()})

    def _resume_paused(self, why: str) -> None:
        for name in sorted(self.paused):
            try:
                self.backend.resume(name)
                log.info("resumed %s: %s", name, why)
            except Exception:
                log.exception("resuming %s failed", name)
        self.paused.clear()
