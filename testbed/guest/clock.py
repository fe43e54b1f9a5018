"""The clock reference's UDP time responder, and the probe an agent runs against it.

``python -m testbed.guest.clock --port N`` answers each request with the
time it received it (t1) and the time it answers (t2), from ``time.time()``.
The swarm backend runs it in one plain container on the orchestrating
host's own node (that host's kernel clock: the reference); agents call
:func:`probe` against it at their start and end (see
:mod:`testbed.spec.clocks` for the arithmetic and what is recorded).

Wire format (network byte order)::

    request  MAGIC(4) KIND_REQUEST(1) seq(u32) t0(f64)                 17 bytes
    answer   MAGIC(4) KIND_ANSWER(1)  seq(u32) t0(f64) t1(f64) t2(f64) 33 bytes

The responder drops (and counts) any datagram that is not a request of
exactly that size and magic; it never crashes on input, answers only the
sender of a request, and exits after ``--max-s`` (or on SIGTERM/SIGINT),
printing what it answered and dropped. The probe is bounded in count and
in total time and never raises for an unreachable reference.

Stdlib + testbed.spec only: it runs in the bare image.
"""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable

from testbed.spec.clocks import CLOCK_PORT, best_sample

log = logging.getLogger("testbed.guest.clock")

MAGIC = b"TTCK"
KIND_REQUEST, KIND_ANSWER = 1, 2
REQUEST = struct.Struct("!4sBId")
ANSWER = struct.Struct("!4sBIddd")
#: The probe: at most this many exchanges, this far apart, in this long overall.
PROBES = 16
PROBE_SPACING_S = 0.005
PROBE_BUDGET_S = 2.0
#: One exchange waits at most this long for its answer.
PROBE_TIMEOUT_S = 0.25
#: The responder exits by itself after this long (the longest run's bound).
MAX_LIFETIME_S = 24 * 3600.0


class Responder:
    """Answers time requests on one UDP socket; counts what it drops."""

    def __init__(self, sock: socket.socket, clock: Callable[[], float] = time.time) -> None:
        self.sock, self.clock = sock, clock
        self.answered = 0
        self.malformed = 0

    def answer(self, data: bytes, t1: float) -> bytes | None:
        """The answer to one datagram received at ``t1``; None (counted as
        malformed) for anything but a well-formed request."""
        if len(data) != REQUEST.size:
            self.malformed += 1
            return None
        magic, kind, seq, t0 = REQUEST.unpack(data)
        if magic != MAGIC or kind != KIND_REQUEST:
            self.malformed += 1
            return None
        return ANSWER.pack(MAGIC, KIND_ANSWER, seq, t0, t1, self.clock())

    def serve(self, until: float) -> None:
        """Answer until monotonic time ``until``."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(min(left, 1.0))
            try:
                data, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError as exc:          # e.g. an ICMP error surfaced on the socket
                log.debug("recvfrom: %s", exc)
                continue
            t1 = self.clock()
            reply = self.answer(data, t1)
            if reply is None:
                continue
            try:
                self.sock.sendto(reply, addr)
                self.answered += 1
            except OSError as exc:
                log.debug("sendto %s: %s", addr, exc)

    def summary(self) -> str:
        return f"clock responder: answered {self.answered}, dropped {self.malformed} malformed"


def probe(reference: str, probes: int = PROBES, spacing_s: float = PROBE_SPACING_S,
          budget_s: float = PROBE_BUDGET_S, timeout_s: float = PROBE_TIMEOUT_S,
          clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Measure this host's clock against the responder at ``reference``
    ("ip:port"): at most ``probes`` exchanges ``spacing_s`` apart, all
    within ``budget_s``; the one with the smallest round trip gives the
    offset (reference minus local) and its uncertainty. Returns that
    measurement with ``probes`` (sent) and ``answered``, or ``{"error":
    why, ...}``. Never raises, never runs past the budget by more than a
    socket call."""
    deadline = time.monotonic() + max(0.0, budget_s)
    try:
        host, port = reference.rsplit(":", 1)
        addr = (host, int(port))
    except ValueError:
        return {"error": f"bad reference address {reference!r}", "probes": 0, "answered": 0}
    samples: list[tuple[float, float, float, float]] = []
    sent = 0
    last_error = ""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        return {"error": f"no socket: {exc}", "probes": 0, "answered": 0}
    try:
        for seq in range(1, max(0, probes) + 1):
            if time.monotonic() >= deadline:
                break
            t0 = clock()
            try:
                sock.sendto(REQUEST.pack(MAGIC, KIND_REQUEST, seq, t0), addr)
            except OSError as exc:       # no route, unresolvable name...
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(min(spacing_s, max(0.0, deadline - time.monotonic())))
                continue
            sent += 1
            got = _await_answer(sock, seq, t0, min(timeout_s, deadline - time.monotonic()),
                                clock)
            if got is not None:
                samples.append(got)
            left = deadline - time.monotonic()
            if left > 0 and seq < probes:
                time.sleep(min(spacing_s, left))
    finally:
        sock.close()
    best = best_sample(samples)
    if best is None:
        why = last_error or f"no answer from {reference} to {sent} probe(s)"
        return {"error": why, "probes": sent, "answered": len(samples)}
    return {**{k: round(v, 9) for k, v in best.items()}, "probes": sent,
            "answered": len(samples)}


def _await_answer(sock: socket.socket, seq: int, t0: float, wait_s: float,
                  clock: Callable[[], float]) -> tuple[float, float, float, float] | None:
    """(t0, t1, t2, t3) of the answer to ``seq``, or None by ``wait_s``.
    Answers to earlier probes (late) and anything malformed are skipped."""
    end = time.monotonic() + max(0.0, wait_s)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except (socket.timeout, OSError):
            return None
        t3 = clock()
        if len(data) != ANSWER.size:
            continue
        magic, kind, got_seq, echo, t1, t2 = ANSWER.unpack(data)
        if magic == MAGIC and kind == KIND_ANSWER and got_seq == seq and echo == t0:
            return t0, t1, t2, t3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ttnet testbed clock reference (UDP time responder)")
    ap.add_argument("--port", type=int, default=CLOCK_PORT)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--max-s", type=float, default=MAX_LIFETIME_S,
                    help="exit after this many seconds (default: a day)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s clock %(levelname)s %(message)s")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    responder = Responder(sock)

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("clock responder on %s:%d for at most %.0f s", args.bind, args.port, args.max_s)
    try:
        responder.serve(time.monotonic() + args.max_s)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        print(responder.summary(), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
