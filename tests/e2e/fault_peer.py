"""A ttnet endpoint for the fault tests, run inside a network namespace.

Two roles, both logging one JSON object per line to ``--out`` (flushed at
once, so the test can follow the file while the process runs, and whatever
was written survives a SIGKILL):

``recv``  a TTNetworkInterfaceUDP whose receiver function logs
          ``{"ev": "msg", "id", "len", "sha"}`` per delivered message, plus a
          ``{"ev": "status", ...}`` line every ``--status-every`` seconds
          with the engine's memory state (reserved_bytes, pending_receives,
          counters, RSS). Runs until SIGTERM or ``--duration``.
``send``  sends the messages of a plan (JSON) with ``ensure=True`` and logs
          ``{"ev": "result", "id", "ok", "reason", "t"}`` per message, a
          ``{"ev": "phase", ...}`` summary per phase and, after cleanup,
          ``{"ev": "final", "threads": [...], ...}``.

A plan is ``{"phases": [{"messages": [[id, size], ...], "deadline_s": S,
"concurrency": N, "wait_file": PATH | null, "join": true}]}``; a phase
with a ``wait_file`` starts only once that file exists (the test's go
signal); with ``"join": false`` the next phase starts while this one's
messages are still in flight (their results are logged at the next join).

Payloads are deterministic (:func:`make_payload`), so the test can check
every delivered message's digest without shipping the bytes around.
Stdlib + ttnet only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ttnet import EngineConfig, TTNetworkInterfaceUDP, TTNetworkMessageUDP  # noqa: E402

_HEAD = struct.Struct("<II")   # message id, size: the first 8 bytes of every payload


def make_payload(msg_id: int, size: int) -> bytes:
    """The payload of message ``msg_id``: its id and size, then seeded bytes."""
    if size < _HEAD.size:
        raise ValueError("fault payloads are at least 8 bytes")
    return _HEAD.pack(msg_id, size) + random.Random(msg_id).randbytes(size - _HEAD.size)


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class JsonLog:
    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **obj) -> None:
        obj.setdefault("t", time.monotonic())
        with self._lock:
            self._f.write(json.dumps(obj) + "\n")
            self._f.flush()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _engine_state(iface: TTNetworkInterfaceUDP) -> dict:
    # The engine belongs to the I/O thread; these reads may race with it
    # (a dict growing mid-iteration), so retry instead of locking.
    for _ in range(20):
        try:
            eng = iface.engine
            return {"reserved": eng.reserved_bytes, "pending_receives": eng.pending_receives(),
                    "pending_sends": eng.pending_sends(), "counters": dict(iface.counters)}
        except RuntimeError:
            time.sleep(0.001)
    return {}


def _config(args: argparse.Namespace) -> EngineConfig:
    kw = {}
    if args.idle_timeout is not None:
        kw["incoming_idle_timeout_s"] = args.idle_timeout
    return EngineConfig(**kw)


def run_recv(args: argparse.Namespace) -> int:
    out = JsonLog(args.out)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(msg) -> None:
        p = msg.payload
        mid, size = _HEAD.unpack_from(p) if len(p) >= _HEAD.size else (-1, -1)
        out.write(ev="msg", id=mid, len=len(p), size=size, sha=digest(p),
                  src=list(msg.address))

    iface = TTNetworkInterfaceUDP(ip_addr=args.bind, port=args.port,
                                  receiver_function=on_message, config=_config(args))
    out.write(ev="ready", pid=os.getpid(), rss=rss_bytes())
    end = time.monotonic() + args.duration
    try:
        while not stop.is_set() and time.monotonic() < end:
            out.write(ev="status", rss=rss_bytes(), **_engine_state(iface))
            stop.wait(args.status_every)
    finally:
        iface.cleanup()
        out.write(ev="final", threads=[t.name for t in threading.enumerate()],
                  **_engine_state(iface))
    return 0


def run_send(args: argparse.Namespace) -> int:
    out = JsonLog(args.out)
    plan = json.loads(Path(args.plan).read_text())
    iface = TTNetworkInterfaceUDP(ip_addr=args.bind, port=args.port, config=_config(args))
    out.write(ev="ready", pid=os.getpid())
    pending: list = []
    try:
        for n, phase in enumerate(plan["phases"]):
            wait_file = phase.get("wait_file")
            if wait_file:
                give_up = time.monotonic() + phase.get("wait_timeout_s", 120)
                while not os.path.exists(wait_file):
                    if time.monotonic() > give_up:
                        out.write(ev="error", reason=f"phase {n}: {wait_file} never appeared")
                        return 2
                    time.sleep(0.02)
            pending += _send_phase(iface, n, phase, (args.dst, args.dport))
            # join=False: go on to the next phase while these are in flight
            if phase.get("join", True) or n == len(plan["phases"]) - 1:
                _join(iface, out, n, pending)
                pending = []
    finally:
        iface.cleanup()
        # Dispatcher and I/O threads are joined by cleanup(); nothing may remain.
        out.write(ev="final", threads=[t.name for t in threading.enumerate()],
                  **_engine_state(iface))
    return 0


def _send_phase(iface: TTNetworkInterfaceUDP, n: int, phase: dict,
                dst: tuple[str, int]) -> list:
    """Send a phase's messages, at most ``concurrency`` unfinished at once."""
    slots = threading.BoundedSemaphore(phase.get("concurrency", 64))
    deadline_s = phase.get("deadline_s", 60.0)
    handles = []
    for msg_id, size in phase["messages"]:
        slots.acquire()

        def finished(*_a) -> None:
            slots.release()

        msg = TTNetworkMessageUDP(dst[0], dst[1], make_payload(msg_id, size))
        h = iface.send(msg, ensure=True, deadline_s=deadline_s,
                       after=finished, on_failure=finished)
        handles.append((n, msg_id, size, time.monotonic(), deadline_s, h))
    return handles


def _join(iface: TTNetworkInterfaceUDP, out: JsonLog, n: int, handles: list) -> None:
    t0 = min((h[3] for h in handles), default=time.monotonic())
    for phase, msg_id, size, start, deadline_s, h in handles:
        h.wait(max(0.0, start + deadline_s + 10 - time.monotonic()))
        out.write(ev="result", id=msg_id, size=size, ok=bool(h.ok), done=h.done,
                  reason=h.reason, phase=phase)
    out.write(ev="phase", phase=n, elapsed=time.monotonic() - t0,
              ok=sum(1 for *_, h in handles if h.ok), total=len(handles),
              **_engine_state(iface))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=("recv", "send"))
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dst")
    ap.add_argument("--dport", type=int)
    ap.add_argument("--plan")
    ap.add_argument("--idle-timeout", type=float)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--status-every", type=float, default=0.2)
    args = ap.parse_args(argv)
    if args.role == "recv":
        return run_recv(args)
    return run_send(args)


if __name__ == "__main__":
    sys.exit(main())
