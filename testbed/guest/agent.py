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
                       bind {name: "ip"} (default 0.0.0.0) (before start)
  go.json              routes {name: "ip:port"}, start_at, end_at (epoch s)
  ready-<name>         agent: socket bound, waiting for go   (agent)
  events-<name>.jsonl  agent: send/deliver/complete/fail events (agent)
  done-<name>          agent: own flows all resolved          (agent)
  counters-<name>.json agent: ttnet counters at exit          (agent)
  outcome-<name>.json  agent: what became of its own messages (agent)

outcome-<name>.json counts this ensemble's own messages as ``sent``,
``completed`` (``after`` fired), ``failed`` (``on_failure`` fired),
``unresolved`` (sent, neither fired by the end time) and ``not_sent`` (due
at or after the end time, or no route to its destination) -- in all and under
``ensure``/``best_effort`` -- plus ``ensure_failures`` (ensure=True
failed + unresolved + not_sent) and ``problems``: up to
:data:`MAX_LISTED` ``{flow, msg, ensure, reason}`` for every message that
makes the exit code 3. Callbacks that fire after the end time are still
logged as events but do not change the outcome.

Exit codes:
  0  every ensure=True message this ensemble sources completed, and every
     message (best effort too) was sent and resolved before the end time;
     best-effort messages reported failed are normal and do not count
  1  the agent crashed (traceback in its log)
  2  no go signal (go.json) within GO_TIMEOUT_S
  3  an ensure=True message failed, was unresolved at the end time or was
     never sent; or a best-effort message was never sent or unresolved
     (the run ended before its flows did)
"""
from __future__ import annotations

import argparse
import heapq
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ttnet import (EngineConfig, TTNetwork, TTNetworkInterfaceType,
                   TTNetworkMessageUDP)
from testbed.spec.events import (Complete, Deliver, EventFile, Fail, MessageRef, Send,
                                 Unknown)
from testbed.spec.jsonio import read_json, write_json_atomic
from testbed.spec.payloads import PayloadMatcher, message_bytes
from testbed.spec.plan import expected_messages

log = logging.getLogger("testbed.guest.agent")

#: How long an agent waits for the host's go signal before giving up.
GO_TIMEOUT_S = 180.0
#: After everyone is done, keep answering late duplicates for a moment so
#: a peer's last ACK isn't lost to a closed port.
LINGER_S = 0.5
#: Exit codes (see the module docstring).
EXIT_OK, EXIT_CRASH, EXIT_NO_GO, EXIT_UNDELIVERED = 0, 1, 2, 3
#: At most this many problem messages are listed in outcome-<name>.json.
MAX_LISTED = 50


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
        return c["failed"] + c["unresolved"] + c["not_sent"]

    @property
    def exit_code(self) -> int:
        b = self.counts["best_effort"]
        bad = self.ensure_failures + b["unresolved"] + b["not_sent"]
        return EXIT_UNDELIVERED if bad else EXIT_OK

    def summary(self, name: str) -> dict:
        with self._cond:
            total = {k: self.counts["ensure"][k] + self.counts["best_effort"][k]
                     for k in self._KEYS}
            return dict(ensemble=name, exit_code=self.exit_code, **total,
                        ensure=dict(self.counts["ensure"]),
                        best_effort=dict(self.counts["best_effort"]),
                        ensure_failures=self.ensure_failures,
                        problems=list(self.problems),
                        problems_listed_max=MAX_LISTED)


def _wait_for(path: Path, deadline: float) -> bool:
    while time.time() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


def run(name: str, results: Path) -> int:
    plan = read_json(results / "plan.json")
    port = int(plan["port"])
    flows = plan["flows"]
    events = EventFile(results / f"events-{name}.jsonl")
    matcher = PayloadMatcher(expected_messages(flows, name))
    routes_by_addr: dict[tuple[str, int], str] = {}
    cfg = EngineConfig(**plan.get("engine", {}))

    def on_receive(msg: Any) -> None:
        t = time.time()
        src = routes_by_addr.get(tuple(msg.address), f"{msg.address[0]}:{msg.address[1]}")
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
    try:
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
        mine = [(fi, f) for fi, f in enumerate(flows) if f["src"] == name]
        outcome = Outcome()
        _send_flows(net, mine, events, start_at, end_at, outcome)
        outcome.freeze()
        (results / f"done-{name}").touch()
        everyone = [f"done-{e}" for e in plan["ensembles"]]
        while time.time() < end_at and not all((results / d).exists() for d in everyone):
            time.sleep(0.05)
        time.sleep(LINGER_S)
        write_json_atomic(results / f"counters-{name}.json", net.counters)
        summary = outcome.summary(name)
        write_json_atomic(results / f"outcome-{name}.json", summary)
        if summary["exit_code"] != EXIT_OK:
            log.warning("%s: %d ensure=True message(s) failed, unresolved or not sent; "
                        "best effort: %d unresolved, %d not sent; first: %s", name,
                        summary["ensure_failures"], summary["best_effort"]["unresolved"],
                        summary["best_effort"]["not_sent"], summary["problems"][:3])
        return summary["exit_code"]
    finally:
        net.close()
        events.close()


def _send_flows(net: TTNetwork, mine: list[tuple[int, dict]], events: EventFile,
                start_at: float, end_at: float, outcome: Outcome) -> None:
    """Send every message of this ensemble's flows on schedule (one thread,
    a heap of due times), then wait until each is completed or failed, or
    the end time. Messages due at or after the end time are not sent."""
    due: list[tuple[float, int, int]] = []
    for fi, f in mine:
        for k in range(f["count"]):
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
