"""The program each ensemble runs in the testbed (inside a container or netns).

Owns one ensemble's part of a run: bind a ``TTNetwork`` over UDP, wait for
the host's go signal (routes and a common start time), send the flows this
ensemble sources on schedule, and log one JSON line per message event into
the shared results directory. It exits when every ensemble reports its
flows finished, or at the run's end time -- whichever comes first.

Stdlib + ttnet only: the image has nothing else. Must never: run longer
than the end time the host gave it, or send anywhere but its routes.

Files in the results directory (all written by the host unless noted):
  plan.json            flows, ensembles, port, auth key, optional
                       bind {name: "ip"} (default 0.0.0.0), killed [names
                       the fault timeline kills or restarts: their events
                       are written through at once], restarted [names it
                       restarts] (before start)
  go.json              routes {name: "ip:port"}, start_at, end_at (epoch s)
  restart-<name>.json  incarnation (2, 3, ...), at (s from the start),
                       written (epoch s): this agent is a restart's fresh
                       one (written just before the host starts it again;
                       see below)
  ready-<name>         agent: socket bound, waiting for go   (agent)
  events-<name>.jsonl  agent: send/deliver/complete/fail events (agent)
  done-<name>          agent: own flows all resolved          (agent)
  counters-<name>.json agent: ttnet counters at exit, the
                       agent's process_cpu_s, and its CPU time and
                       packets when the flows began (the run's own
                       CPU cost per datagram)                  (agent)
  outcome-<name>.json  agent: what became of its own messages, and
                       ``clock`` when the plan names a clock
                       reference (see below)          (agent)
  apps/                the app files the plan names (copied by the host)
  <name>/              the program's TTNET_RUN_DIR                  (program)
  logs/program-<name>.log  the program's stdout and stderr          (agent)

outcome-<name>.json counts this ensemble's own messages as ``sent``,
``completed`` (``after`` fired), ``failed`` (``on_failure`` fired),
``unresolved`` (sent, neither fired by the end time) and ``not_sent`` (due
at or after the end time, or no route to its destination, or due while the
ensemble was down before a restart) -- in all and under
``ensure``/``best_effort`` -- plus ``not_sent_down`` (of not_sent, those
due while down: no problem), ``ensure_failures`` (ensure=True failed +
unresolved + not_sent, less not_sent_down) and ``problems``: up to
:data:`MAX_LISTED` ``{flow, msg, ensure, reason}`` for every message that
makes the exit code 3. Callbacks that fire after the end time are still
logged as events but do not change the outcome.

An ensemble may also run an app (plan ``apps``: a file of the results
directory and a function, see :mod:`testbed.spec.app`) inside this
process, on one thread of its own, sharing the agent's TTNetwork; and a
program (plan ``programs``: a command line run by ``/bin/sh -c`` from
plan ``workdir``, with TTNET_ENSEMBLE, TTNET_BIND, TTNET_ROUTES,
TTNET_RUN_DIR and TTNET_DURATION set; port ``program_port``). Both start
at the start time; at ``duration_s`` the app gets no more callbacks and a
program still running is stopped (SIGTERM, then SIGKILL after
PROGRAM_GRACE_S). The program's output goes to ``logs/program-<name>.log``;
its exit code is in outcome-<name>.json under ``program``.

A restart (the fault timeline's ``restart``: a device reboot) runs this
module again in the same host, same address and port, once the previous
agent was SIGKILLed. The fresh agent finds restart-<name>.json and has lost
all protocol state (messages in flight, the receiver's memory of completed
ones: a peer's retransmission may be delivered, and logged, twice). It
appends to events-<name>.jsonl (ending a line the kill tore), does not wait
for go (go.json is there), sends only the messages planned at or after the
restart's ``at`` (those before it: sent by an earlier incarnation, whose
results died with it, or counted not_sent_down), runs its app or program
again from scratch (the app's clock and message numbers start again; a
program's output is appended to its log), and writes counters and outcome
(with ``restart``: incarnation, at, boot_s -- from the restart until its
socket was bound --, sent_by_earlier) at exit, as any agent.
Its exit code is the run's verdict for that ensemble.

With a plan ``clock`` (``{"reference": "ip:port"}``: the swarm backend's
time responder on the orchestrating host, :mod:`testbed.guest.clock`), the
agent measures its clock against it twice: at its start (after binding,
before the ready file) and at its end (after its flows and the linger,
before its counters and outcome). Each is at most PROBES exchanges within
PROBE_BUDGET_S (the end one within what is left until the end time, but
at least END_PROBE_MIN_S); an unreachable reference is recorded as an
``error``, never waited for longer. outcome ``clock``: ``reference``,
``start`` and ``end`` (offset_s, uncertainty_s, rtt_s, at, probes,
answered; :mod:`testbed.spec.clocks`).

Exit codes:
  0  every ensure=True message this ensemble sources completed, and every
     message (best effort too) was sent and resolved before the end time;
     best-effort messages reported failed are normal and do not count
  1  the agent crashed (traceback in its log)
  2  no go signal (go.json) within GO_TIMEOUT_S
  3  an ensure=True message failed, was unresolved at the end time or was
     never sent; or a best-effort message was never sent or unresolved
     (the run ended before its flows did); not for messages due while the
     ensemble was down before a restart
  4  the program exited with a non-zero code before the duration, or the
     app raised in a callback (counted in outcome ``app.errors``)
  5  the app could not be loaded (before ready: the run reports it)
"""
from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ttnet

from ttnet import (EngineConfig, TTNetwork, TTNetworkInterfaceType,
                   TTNetworkMessageUDP)
from testbed.guest.clock import PROBE_BUDGET_S, probe as clock_probe
from testbed.spec.app import MAGIC as APP_MAGIC, AppError, AppRuntime, load_app
from testbed.spec.events import (Complete, Deliver, EventFile, Fail, MessageRef, Send,
                                 Unknown)
from testbed.spec.jsonio import read_json, write_json_atomic
from testbed.spec.payloads import PayloadMatcher, message_bytes
from testbed.spec.plan import expected_messages
from testbed.spec.timeline import first_due_from

log = logging.getLogger("testbed.guest.agent")

#: How long an agent waits for the host's go signal before giving up.
GO_TIMEOUT_S = 180.0
#: After everyone is done, keep answering late duplicates for a moment so
#: a peer's last ACK isn't lost to a closed port.
LINGER_S = 0.5
#: Exit codes (see the module docstring).
EXIT_OK, EXIT_CRASH, EXIT_NO_GO, EXIT_UNDELIVERED, EXIT_PROGRAM, EXIT_APP_LOAD = 0, 1, 2, 3, 4, 5
#: A program still running at the duration gets SIGTERM, then SIGKILL this much later.
PROGRAM_GRACE_S = 3.0
#: At most this many problem messages are listed in outcome-<name>.json.
MAX_LISTED = 50
#: The end clock probe gets at least this long, even at the end time.
END_PROBE_MIN_S = 0.5


class Outcome:
    """What became of this ensemble's own messages, for its exit code.

    Thread-safe: ``resolved`` runs in ttnet's callback thread. After
    :meth:`freeze` (the end time) late callbacks no longer count."""

    _KEYS = ("sent", "completed", "failed", "unresolved", "not_sent")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: dict[tuple[str, int], bool] = {}     # (flow, msg) -> ensure
        self._frozen = False
        self.counts = {kind: dict.fromkeys(self._KEYS, 0) for kind in ("ensure", "best_effort")}
        #: Of not_sent, those due while the ensemble was down (killed, then
        #: restarted): the fault timeline's doing, not a failure.
        self.down = {"ensure": 0, "best_effort": 0}
        self.problems: list[dict] = []

    def _count(self, ensure: bool, key: str) -> None:
        self.counts["ensure" if ensure else "best_effort"][key] += 1

    def _problem(self, flow: str, msg: int, ensure: bool, reason: str) -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(dict(flow=flow, msg=msg, ensure=ensure, reason=reason))

    def sent(self, flow: str, msg: int, ensure: bool) -> None:
        with self._cond:
            self._count(ensure, "sent")
            self._open[(flow, msg)] = ensure

    def resolved(self, flow: str, msg: int, ok: bool, reason: str | None = None) -> None:
        with self._cond:
            if self._frozen or (flow, msg) not in self._open:
                return
            ensure = self._open.pop((flow, msg))
            self._count(ensure, "completed" if ok else "failed")
            if not ok and ensure:
                self._problem(flow, msg, ensure, f"failed: {reason}")
            self._cond.notify_all()

    def not_sent(self, flow: str, msg: int, ensure: bool, reason: str) -> None:
        with self._cond:
            self._count(ensure, "not_sent")
            self._problem(flow, msg, ensure, f"not sent: {reason}")

    def not_sent_down(self, flow: str, msg: int, ensure: bool) -> None:
        """Due while this ensemble was down (a restart's agent is
        fresh): not sent, but no problem and no ensure failure."""
        with self._cond:
            self._count(ensure, "not_sent")
            self.down["ensure" if ensure else "best_effort"] += 1

    def wait_resolved(self, deadline: float) -> bool:
        """Block until every sent message resolved (True) or ``deadline``."""
        with self._cond:
            while self._open:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def freeze(self) -> None:
        """The end time: whatever is still open is unresolved, for good."""
        with self._cond:
            if self._frozen:
                return
            self._frozen = True
            for (flow, msg), ensure in sorted(self._open.items()):
                self._count(ensure, "unresolved")
                self._problem(flow, msg, ensure, "unresolved at the end time")
            self._open.clear()

    @property
    def ensure_failures(self) -> int:
        c = self.counts["ensure"]
        return c["failed"] + c["unresolved"] + c["not_sent"] - self.down["ensure"]

    @property
    def exit_code(self) -> int:
        b = self.counts["best_effort"]
        bad = self.ensure_failures + b["unresolved"] + b["not_sent"] - self.down["best_effort"]
        return EXIT_UNDELIVERED if bad else EXIT_OK

    def summary(self, name: str) -> dict:
        with self._cond:
            total = {k: self.counts["ensure"][k] + self.counts["best_effort"][k]
                     for k in self._KEYS}
            return dict(ensemble=name, exit_code=self.exit_code, **total,
                        ensure=dict(self.counts["ensure"]),
                        best_effort=dict(self.counts["best_effort"]),
                        ensure_failures=self.ensure_failures,
                        not_sent_down=dict(self.down),
                        problems=list(self.problems),
                        problems_listed_max=MAX_LISTED)


def _cpu_s() -> float:
    """This process's CPU time so far (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _packets(counters: dict) -> int:
    return counters.get("packets_sent", 0) + counters.get("packets_received", 0)

def _wait_for(path: Path, deadline: float) -> bool:
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


class AppLoop:
    """One thread that runs an app's callbacks in due order, one at a time."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"app-{name}", daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at monotonic time ``when`` (at once if past)."""
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, fn))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:          # AppRuntime guards app code; this is ours
                log.exception("app loop callback failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)


class AgentApp(AppRuntime):
    """An app over this agent's TTNetwork, on real time (see testbed.spec.app)."""

    def __init__(self, net: TTNetwork, loop: AppLoop, start_at: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.net, self.loop, self.start_at = net, loop, start_at

    def clock(self) -> float:
        return time.time() - self.start_at

    def event_time(self) -> float:
        return time.time()

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        self.loop.call_at(time.monotonic() + delay, fn)

    def transmit(self, to: str, payload: bytes, ensure: bool, deadline: float | None,
                 done: Callable[[bool, str | None], None]) -> None:
        ip, port = self.net.get_recipient_address(to)
        self.net.send_message(TTNetworkMessageUDP(ip, port, payload), ensure=ensure,
                              deadline_s=deadline,
                              after=lambda _msg: done(True, None),
                              on_failure=lambda _m, reason: done(False, reason))


class Program:
    """A user's ``run:`` command in this host, from the start time to the duration."""

    def __init__(self, name: str, command: str, workdir: str, env: dict[str, str],
                 log_path: Path) -> None:
        self.name, self.command = name, command
        self.log_path = log_path
        self.stopped = False
        self.started = time.time()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=workdir,
                                     env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_until(self, deadline: float) -> None:
        """Wait for the program to exit; at ``deadline`` (epoch) stop it."""
        left = deadline - time.time()
        try:
            self.proc.wait(max(0.0, left))
            return
        except subprocess.TimeoutExpired:
            pass
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.stopped = True
        for sig, grace in ((signal.SIGTERM, PROGRAM_GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def summary(self) -> dict:
        code = self.proc.poll()
        self._log.close()
        return {"command": self.command, "exit_code": code,
                "stopped_at_duration": self.stopped,
                "ran_s": round(time.time() - self.started, 3),
                "log": str(self.log_path.name)}

    @property
    def failed(self) -> bool:
        code = self.proc.poll()
        return not self.stopped and code not in (0, None)


def program_env(name: str, routes: dict[str, str], port: int, duration: float,
                run_dir: Path) -> dict[str, str]:
    """The environment a ``run:`` program gets (docs/apps.md)."""
    ip = routes[name].rsplit(":", 1)[0]
    others = {peer: f"{addr.rsplit(':', 1)[0]}:{port}"
              for peer, addr in routes.items() if peer != name}
    path = str(Path(ttnet.__file__).resolve().parent.parent)
    py = os.environ.get("PYTHONPATH")
    return {"TTNET_ENSEMBLE": name, "TTNET_BIND": f"{ip}:{port}",
            "TTNET_ROUTES": json.dumps(others, sort_keys=True),
            "TTNET_RUN_DIR": str(run_dir), "TTNET_DURATION": f"{duration:g}",
            "PYTHONPATH": path + (os.pathsep + py if py else "")}


def restart_marker(results: Path, name: str) -> dict | None:
    """restart-<name>.json (``incarnation``, ``at``) when this agent is a
    restart's fresh one, else None."""
    path = results / f"restart-{name}.json"
    return read_json(path) if path.exists() else None


def _sent_before(path: Path) -> set[tuple[str, int]]:
    """(flow, msg) of every send an earlier incarnation logged in ``path``;
    a torn last line (the kill) is ended so the next record starts clean."""
    if not path.exists():
        return set()
    sent = set()
    text = path.read_text(errors="replace")
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "send":
            sent.add((rec.get("flow"), rec.get("msg")))
    if text and not text.endswith("\n"):
        with open(path, "a") as f:
            f.write("\n")
    return sent


def run(name: str, results: Path) -> int:
    plan = read_json(results / "plan.json")
    port = int(plan["port"])
    flows = plan["flows"]
    restart = restart_marker(results, name)
    restart_at = float(restart["at"]) if restart else None
    sent_before = _sent_before(results / f"events-{name}.jsonl") if restart else set()
    if restart:
        log.info("%s: incarnation %s (restarted at %gs): events appended, flows sent "
                 "from then on", name, restart.get("incarnation"), restart_at)
    # An ensemble the fault timeline kills (or restarts) writes each event
    # through at once; the file is appended to, never truncated.
    events = EventFile(results / f"events-{name}.jsonl",
                       line_buffered=name in plan.get("killed", ()))
    matcher = PayloadMatcher(expected_messages(flows, name))
    routes_by_addr: dict[tuple[str, int], str] = {}
    cfg = EngineConfig(**plan.get("engine", {}))
    duration = float(plan.get("duration_s") or 0.0)
    app_conf = plan.get("apps", {}).get(name)
    command = plan.get("programs", {}).get(name)
    main_fn = None
    if app_conf is not None:
        try:
            main_fn = load_app(results, app_conf["path"], app_conf.get("function", "main"))
        except AppError as exc:
            log.error("%s: %s", name, exc)
            return EXIT_APP_LOAD
    app: AgentApp | None = None

    def on_receive(msg: Any) -> None:
        t = time.time()
        src = routes_by_addr.get(tuple(msg.address), f"{msg.address[0]}:{msg.address[1]}")
        if app is not None:
            payload = msg.payload
            if payload[:len(APP_MAGIC)] == APP_MAGIC:
                app.loop.call_at(0.0, lambda: app.deliver(src, payload))
                return
        m = matcher.match(src, msg.payload)
        if m is None:
            events.write(Unknown(src, name, len(msg.payload), t))
            return
        fi, k, intact = m
        events.write(Deliver(MessageRef.planned(flows[fi], k), size=len(msg.payload), t=t, intact=intact))

    bind = plan.get("bind", {}).get(name, "0.0.0.0")
    net = TTNetwork(name, TTNetworkInterfaceType.UDP_IP, ip_addr=bind, port=port,
                    receiver_function=on_receive, config=cfg,
                    auth_key=plan.get("auth_key"))
    # How long the reboot took: from the restart until this socket was bound.
    boot_s = round(time.time() - float(restart["written"]), 3) \
        if restart and "written" in restart else None
    loop: AppLoop | None = None
    program: Program | None = None
    clock_ref = (plan.get("clock") or {}).get("reference")
    clock: dict | None = None
    try:
        if clock_ref:
            clock = {"reference": clock_ref, "start": clock_probe(clock_ref)}
            log.info("%s: clock at start: %s", name, clock["start"])
        (results / f"ready-{name}").touch()
        if not _wait_for(results / "go.json", time.time() + GO_TIMEOUT_S):
            log.error("%s: no go.json within %.0fs", name, GO_TIMEOUT_S)
            return EXIT_NO_GO
        # go.json is written to a temp name and renamed by the host: atomic.
        go = read_json(results / "go.json")
        for peer, addr in go["routes"].items():
            if peer != name:
                net.add_route(peer, addr)
                ip, p = addr.split(":")
                routes_by_addr[(ip, int(p))] = peer
        start_at, end_at = float(go["start_at"]), float(go["end_at"])
        # CPU spent before the flows (interpreter start-up, imports, the
        # socket) is not the cost of the traffic: counted from here on.
        cpu_at_go, packets_at_go = _cpu_s(), _packets(net.counters)
        mine = [(fi, f) for fi, f in enumerate(flows) if f["src"] == name]
        outcome = Outcome()
        if main_fn is not None:
            loop = AppLoop(name)
            app = AgentApp(net, loop, start_at, name=name, peers=tuple(plan["ensembles"]),
                           duration=duration, emit=events.write_record,
                           seed=int(plan.get("seed", 1)),
                           on_sent=lambda ref: outcome.sent(ref.flow, ref.msg, ref.ensure),
                           on_resolved=lambda ref, ok, why: outcome.resolved(
                               ref.flow, ref.msg, ok, why))
            main = main_fn
            loop.call_at(time.monotonic() + max(0.0, start_at - time.time()),
                         lambda: app.start(main))
        if command:
            time.sleep(max(0.0, start_at - time.time()))
            run_dir = results / name
            run_dir.mkdir(exist_ok=True)
            env = program_env(name, go["routes"], int(plan["program_port"]), duration,
                              run_dir)
            program = Program(name, command, plan.get("workdir") or str(results), env,
                              results / "logs" / f"program-{name}.log")
        _send_flows(net, mine, events, start_at, end_at, outcome, restart_at, sent_before)
        if program is not None:
            program.wait_until(min(start_at + duration, end_at))
        if app is not None:
            while time.time() < min(start_at + duration, end_at) and not app.stopped:
                time.sleep(0.05)
            if not outcome.wait_resolved(end_at):
                log.warning("run ended with app sends unresolved")
        outcome.freeze()
        (results / f"done-{name}").touch()
        everyone = [f"done-{e}" for e in plan["ensembles"]]
        while time.time() < end_at and not all((results / d).exists() for d in everyone):
            time.sleep(0.05)
        time.sleep(LINGER_S)
        if clock is not None:
            clock["end"] = clock_probe(clock_ref, budget_s=max(
                END_PROBE_MIN_S, min(PROBE_BUDGET_S, end_at - time.time())))
            log.info("%s: clock at end: %s", name, clock["end"])
        # The process's CPU time (user + system, every thread) next to the
        # engine's packet counts: calibrate divides one by the other.
        write_json_atomic(results / f"counters-{name}.json",
                          {**net.counters, "process_cpu_s": _cpu_s(),
                           "process_cpu_at_go_s": cpu_at_go, "packets_at_go": packets_at_go})
        summary = outcome.summary(name)
        if clock is not None:
            summary["clock"] = clock
        if restart:
            summary["restart"] = {"incarnation": restart.get("incarnation"), "at": restart_at,
                                  "boot_s": boot_s, "sent_by_earlier": len(sent_before)}
        if program is not None:
            summary["program"] = program.summary()
            if program.failed and summary["exit_code"] == EXIT_OK:
                summary["exit_code"] = EXIT_PROGRAM
        if app is not None:
            summary["app"] = {"errors": app.errors}
            if app.errors and summary["exit_code"] == EXIT_OK:
                summary["exit_code"] = EXIT_PROGRAM
        write_json_atomic(results / f"outcome-{name}.json", summary)
        if summary["exit_code"] != EXIT_OK:
            log.warning("%s: exit %d: %d ensure=True message(s) failed, unresolved or not "
                        "sent; best effort: %d unresolved, %d not sent; first: %s; "
                        "program: %s; app: %s", name, summary["exit_code"],
                        summary["ensure_failures"], summary["best_effort"]["unresolved"],
                        summary["best_effort"]["not_sent"], summary["problems"][:3],
                        summary.get("program"), summary.get("app"))
        return summary["exit_code"]
    finally:
        if program is not None:
            program.stop()
        net.close()
        if loop is not None:
            loop.close()
        events.close()


def _send_flows(net: TTNetwork, mine: list[tuple[int, dict]], events: EventFile,
                start_at: float, end_at: float, outcome: Outcome,
                restart_at: float | None = None,
                sent_before: set[tuple[str, int]] | None = None) -> None:
    """Send every message of this ensemble's flows on schedule (one thread,
    a heap of due times), then wait until each is completed or failed, or
    the end time. Messages due at or after the end time are not sent.
    After a restart at ``restart_at`` (seconds from the start), only those
    planned from then on: the earlier ones an earlier incarnation sent
    (``sent_before``) are its own, lost with it; the others are
    not sent because the ensemble was down (no problem, see Outcome)."""
    due: list[tuple[float, int, int]] = []
    for fi, f in mine:
        first = 0 if restart_at is None else first_due_from(f, restart_at)
        for k in range(first):
            if (f["name"], k) not in (sent_before or set()):
                outcome.not_sent_down(f["name"], k, f["ensure"])
        for k in range(first, f["count"]):
            heapq.heappush(due, (start_at + f["start_s"] + k * f["interval_s"], fi, k))
    flows = dict(mine)

    def resolved(ref: MessageRef, ok: bool, reason: str | None = None) -> None:
        t = time.time()
        events.write(Complete(ref, t) if ok else Fail(ref, t, reason))
        outcome.resolved(ref.flow, ref.msg, ok, reason)

    while due:
        when, fi, k = due[0]
        if max(when, time.time()) >= end_at:
            break
        heapq.heappop(due)
        if when > time.time():
            time.sleep(max(0.0, when - time.time()))
        f = flows[fi]
        ref = MessageRef.planned(f, k)
        try:
            payload = message_bytes(fi, k, ref.size)
            ip, port = net.get_recipient_address(f["dst"])
            msg = TTNetworkMessageUDP(ip, port, payload)
        except Exception as exc:          # no route, bad address: a plan error
            outcome.not_sent(f["name"], k, f["ensure"], f"{type(exc).__name__}: {exc}")
            continue
        events.write(Send(ref, time.time()))
        # Counted as sent before send_message: its callbacks may fire at once.
        outcome.sent(f["name"], k, f["ensure"])
        try:
            net.send_message(
                msg, ensure=f["ensure"], deadline_s=f["deadline_s"],
                after=lambda _msg, ref=ref: resolved(ref, True),
                on_failure=lambda _m, reason, ref=ref: resolved(ref, False, reason))
        except Exception as exc:          # e.g. larger than max_message_size
            resolved(ref, False, f"send refused: {type(exc).__name__}: {exc}")
    for _, fi, k in sorted(due):
        outcome.not_sent(flows[fi]["name"], k, flows[fi]["ensure"], "run end time came first")
    if due:
        log.warning("%d message(s) due at or after the end time: not sent", len(due))
    if not outcome.wait_resolved(end_at):
        log.warning("run ended with sends unresolved")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ttnet testbed agent (one ensemble)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--results", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    try:
        return run(args.name, args.results)
    except Exception:
        log.exception("agent %s crashed", args.name)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
