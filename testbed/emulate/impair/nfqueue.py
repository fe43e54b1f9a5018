"""NFQUEUE verdict daemon: per-packet delay, jitter, loss, duplicate, corrupt.

Run as a host process (``python nfqueue.py --log FILE --seed N``) by
``testbed.emulate.impair``; it is driven by JSON lines on stdin and answers with one
JSON line on stdout per command:

    {"op": "add", "netns": PATH, "queue": N, "links": {DST_IP: {...}},
     "label": NAME, "rng_key": KEY}
    {"op": "set", "netns": PATH, "dst": DST_IP, "spec": {...}}
    {"op": "stats"}
    {"op": "stop"}

``stats`` also reports the daemon's own cost: its process CPU time and the
packets it was handed (``{"daemon": {"cpu_s": ..., "packets": ...}}``). One
process serves every impaired packet of the run in turn, so CPU per packet
is the emulator's service time and its inverse the most packets per second
it can impair; the simulator models it (``emulator_cost_s``).

``set`` changes one link of a namespace already added, in place: packets
already held keep their release time, the link keeps its RNG and counters,
other links are untouched; a destination the namespace had no link to gets
one (seeded as ``add`` would have seeded it).

One process serves every namespace of a run: for each ``add`` it enters the
namespace (setns), opens the netfilter queue socket and a raw socket there
(sockets stay bound to the namespace they were created in) and returns to the
host namespace. One select() loop with a timer heap serves all queues, so 20
namespaces cost one mostly idle process.

It owns the verdicts of the packets queued to it. It never adds or removes
iptables rules or qdiscs (the parent does), never sends anything but copies
of packets it was given (duplicates), and never sleeps in coarse steps: the
select() timeout is the exact time to the next deadline.

Stdlib + ``netfilterqueue`` only, and no imports from the testbed package, so
it can be started by path with any interpreter that has ``netfilterqueue``.
"""
from __future__ import annotations

import argparse
import ctypes
import heapq
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ttnet.impair.nfqueue")

CLONE_NEWNET = 0x40000000
PR_SET_TIMERSLACK = 29
# Bounded kernel queue per namespace: beyond this the kernel drops (fail
# closed) instead of growing memory without limit.
QUEUE_MAX_LEN = 4096
# netfilterqueue copies at most this many bytes of a packet (its recv buffer
# is 4096 minus metadata); longer packets arrive truncated and cannot be
# rewritten or duplicated, only delayed/dropped.
COPY_LIMIT = 4016

_libc = ctypes.CDLL(None, use_errno=True)


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Link:
    """Impairments and counters of one directed link (packets to one dst)."""

    name: str
    delay_s: float
    jitter_s: float
    loss: float
    duplicate: float
    corrupt: float
    rng: random.Random
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("seen", "dropped", "delayed", "duplicated", "corrupted",
         "duplicate_failed", "corrupt_skipped"), 0))

    def update(self, spec: dict[str, Any]) -> None:
        """New impairments for packets from now on; RNG and counters stay."""
        for key in _SPEC_KEYS:
            if key in spec:
                setattr(self, key, float(spec[key]))

    def draw_delay(self) -> float:
        # Uniform in [delay - jitter, delay + jitter], netem's default shape.
        if self.jitter_s:
            return max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))
        return self.delay_s


_SPEC_KEYS = ("delay_s", "jitter_s", "loss", "duplicate", "corrupt")


def corrupt_packet(raw: bytes, rng: random.Random) -> bytes | None:
    """Flip one byte of the L4 payload; None if the packet can't be rewritten.

    For UDP the checksum is zeroed (legal in IPv4: "not computed") so the
    corrupted datagram reaches the application, whose CRC must catch it;
    otherwise the kernel would silently drop it as a checksum error.
    """
    if len(raw) < 20:
        return None
    ihl = (raw[0] & 0x0F) * 4
    total_len, frag = struct.unpack_from("!H2xH", raw, 2)
    if total_len != len(raw) or frag & 0x1FFF:
        return None  # truncated copy, or a non-first fragment
    buf = bytearray(raw)
    start = ihl + (8 if raw[9] == socket.IPPROTO_UDP else 0)
    if start >= len(buf):
        return None
    buf[rng.randrange(start, len(buf))] ^= rng.randrange(1, 256)
    if raw[9] == socket.IPPROTO_UDP:
        buf[ihl + 6:ihl + 8] = b"\x00\x00"
    return bytes(buf)


class NamespaceQueue:
    """The queue and raw socket of one namespace, and its links by dst."""

    def __init__(self, daemon: Daemon, netns: str, queue_num: int,
                 links: dict[bytes, Link]) -> None:
        from netfilterqueue import NetfilterQueue

        self.netns = netns
        self.links = links
        self.daemon = daemon
        #: What the links' names and RNG keys are made from (set by "add").
        self.label, self.rng_key = netns, ""
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            setns(netns)
            self.nfq = NetfilterQueue()
            self.nfq.bind(queue_num, self.on_packet, max_len=QUEUE_MAX_LEN)
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, daemon.dup_mark)
            self.raw.setblocking(False)
        finally:
            if _libc.setns(host, CLONE_NEWNET) != 0:
                log.critical("cannot return to the host namespace")
                os._exit(3)
            os.close(host)
        self.fd = self.nfq.get_fd()

    def on_packet(self, pkt: Any) -> None:
        self.daemon.packets += 1
        # A bad packet must never kill the daemon: on any error, let it pass.
        try:
            self._impair(pkt)
        except Exception:
            log.exception("packet handling failed in %s; accepting it", self.netns)
            try:
                pkt.accept()
            except Exception:
                pass

    def _impair(self, pkt: Any) -> None:
        now = time.monotonic()
        raw = pkt.get_payload()
        link = self.links.get(raw[16:20])
        if link is None:
            pkt.accept()
            return
        c = link.counters
        c["seen"] += 1
        rng = link.rng
        if link.loss and rng.random() < link.loss:
            c["dropped"] += 1
            pkt.drop()
            return
        if link.corrupt and rng.random() < link.corrupt:
            bad = corrupt_packet(raw, rng)
            if bad is None:
                c["corrupt_skipped"] += 1
            else:
                pkt.set_payload(bad)
                raw = bad
                c["corrupted"] += 1
        if link.duplicate and rng.random() < link.duplicate:
            if len(raw) < COPY_LIMIT and struct.unpack_from("!H", raw, 2)[0] == len(raw):
                c["duplicated"] += 1
                self.daemon.schedule(now + link.draw_delay(), self._send_copy,
                                     (raw, link))
            else:
                c["duplicate_failed"] += 1
        delay = link.draw_delay()
        if delay <= 0:
            pkt.accept()
        else:
            c["delayed"] += 1
            self.daemon.schedule(now + delay, _accept, pkt)

    def _send_copy(self, arg: tuple[bytes, Link]) -> None:
        raw, link = arg
        try:
            self.raw.sendto(raw, (socket.inet_ntoa(raw[16:20]), 0))
        except OSError as exc:
            link.counters["duplicated"] -= 1
            link.counters["duplicate_failed"] += 1
            log.warning("duplicate to %s not sent: %s", link.name, exc)

    def close(self) -> None:
        try:
            self.nfq.unbind()
        finally:
            self.raw.close()


def _accept(pkt: Any) -> None:
    pkt.accept()


class Daemon:
    """select() loop over all queues plus stdin, with a timer heap."""

    def __init__(self, seed: int, dup_mark: int) -> None:
        self.seed = seed
        #: fwmark on the duplicates we re-inject, so the iptables rule (which
        #: skips marked packets) does not queue and impair a copy twice.
        self.dup_mark = dup_mark
        self.queues: dict[int, NamespaceQueue] = {}
        self.heap: list[tuple[float, int, Any, Any]] = []
        self.seq = 0
        self.running = True
        #: packets handed to the daemon by every queue (its own cost's divisor)
        self.packets = 0

    def schedule(self, deadline: float, fn: Any, arg: Any) -> None:
        self.seq += 1  # tie-breaker: equal deadlines keep arrival order
        heapq.heappush(self.heap, (deadline, self.seq, fn, arg))

    def fire_due(self) -> None:
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, fn, arg = heapq.heappop(self.heap)
            try:
                fn(arg)
            except Exception:
                log.exception("timer action failed")

    def flush(self) -> None:
        """Release every held packet now (used on stop: no packet is lost)."""
        while self.heap:
            _, _, fn, arg = heapq.heappop(self.heap)
            try:
                fn(arg)
            except Exception:
                log.exception("flush action failed")

    def make_link(self, label: str, rng_key: str, dst: str, spec: dict[str, Any]) -> Link:
        # The RNG key must not contain the netns path (it holds pids or
        # run ids), or the same seed would not replay the same drops.
        return Link(name=f"{label}->{dst}", delay_s=float(spec.get("delay_s", 0)),
                    jitter_s=float(spec.get("jitter_s", 0)),
                    loss=float(spec.get("loss", 0)),
                    duplicate=float(spec.get("duplicate", 0)),
                    corrupt=float(spec.get("corrupt", 0)),
                    rng=random.Random(f"{self.seed}:{rng_key}:{dst}"))

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "add":
            label, rng_key = cmd.get("label") or cmd["netns"], cmd.get("rng_key", "")
            links = {socket.inet_aton(dst): self.make_link(label, rng_key, dst, spec)
                     for dst, spec in cmd["links"].items()}
            nq = NamespaceQueue(self, cmd["netns"], int(cmd["queue"]), links)
            nq.label, nq.rng_key = label, rng_key
            self.queues[nq.fd] = nq
            log.info("serving queue %s in %s for %s", cmd["queue"], cmd["netns"],
                     sorted(cmd["links"]))
            return {"ok": True}
        if op == "set":
            return self.set_link(cmd["netns"], cmd["dst"], cmd["spec"])
        if op == "stats":
            return {"ok": True, "links": {
                link.name: dict(link.counters)
                for nq in self.queues.values() for link in nq.links.values()},
                "daemon": {"cpu_s": time.process_time(), "packets": self.packets}}
        if op == "stop":
            self.running = False
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def set_link(self, netns: str, dst: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``set`` op: change (or create) the link of ``netns`` to ``dst``."""
        unknown = set(spec) - set(_SPEC_KEYS)
        if unknown:
            return {"ok": False, "error": f"unknown link keys {sorted(unknown)}"}
        nq = next((q for q in self.queues.values() if q.netns == netns), None)
        if nq is None:
            return {"ok": False, "error": f"netns {netns} is not served; add it first"}
        key = socket.inet_aton(dst)
        link = nq.links.get(key)
        if link is None:
            nq.links[key] = link = self.make_link(nq.label, nq.rng_key, dst, spec)
            log.info("new link %s: %s", link.name, spec)
        else:
            link.update(spec)
            log.info("link %s now %s", link.name, spec)
        return {"ok": True, "link": link.name}

    def serve(self, control_in: Any, control_out: Any, wakeup: int) -> None:
        """Run until "stop", stdin EOF or a signal (which writes to ``wakeup``)."""
        ctl = control_in.fileno()
        buf = b""
        while self.running:
            timeout = max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else None
            ready, _, _ = select.select([ctl, wakeup, *self.queues], [], [], timeout)
            for fd in ready:
                if fd == wakeup:
                    os.read(wakeup, 512)
                elif fd == ctl:
                    chunk = os.read(ctl, 65536)
                    if not chunk:  # parent went away: stop, releasing packets
                        log.warning("control channel closed; stopping")
                        self.running = False
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        try:
                            reply = self.handle(json.loads(line))
                        except Exception as exc:
                            log.exception("command failed: %r", line)
                            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                        control_out.write(json.dumps(reply) + "\n")
                        control_out.flush()
                else:
                    try:
                        self.queues[fd].nfq.run(block=False)
                    except OSError:
                        log.exception("recv on queue of %s failed", self.queues[fd].netns)
            self.fire_due()
        self.flush()
        for nq in self.queues.values():
            nq.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="log file path")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dup-mark", type=lambda v: int(v, 0), required=True,
                        help="fwmark of re-injected duplicates (the iptables rules skip it)")
    args = parser.parse_args(argv)
    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    # Default timer slack (50 us) would add to every delay; 1 us keeps the
    # configured delay within the +-0.5 ms the testbed promises.
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    daemon = Daemon(args.seed, args.dup_mark)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        daemon.running = False

    # select() is restarted after a signal (PEP 475), so the handler's flag
    # alone would not wake the loop; the wakeup pipe does.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("nfqueue daemon started, pid %d, seed %d", os.getpid(), args.seed)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    daemon.serve(sys.stdin, out, wake_r)
    log.info("nfqueue daemon stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
