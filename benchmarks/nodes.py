"""The ttnet nodes: worker processes that each play an ensemble.

A :class:`Node` owns two ttnet interfaces ("plain" and "auth", the latter
with an :class:`ttnet.Authenticator` on the shared benchmark key) and one
plain UDP socket for the references of :mod:`benchmarks.baselines`, all on
127.0.0.1. A :class:`MemoryProbe` is a fresh process with nothing but one
interface, so its RSS growth is one transfer's. The parent drives them with
small commands over a pipe (:mod:`benchmarks.harness`); nothing is measured
across the pipe, only inside the nodes:

- goodput: the sender stamps ``time.monotonic()`` just before ``send()``,
  the receiver stamps it at the top of its receiver function. On Linux
  ``time.monotonic`` is ``CLOCK_MONOTONIC``, one clock for every process of
  the machine, so the difference is a real send-to-delivery time.
- latency: PING -> PONG exchanges (both ``ensure=True`` ttnet messages),
  measured as a round trip inside the sender and as send() -> receiver
  function across the two processes.

Subclasses (``benchmarks.diagnose``) choose the interface class, the engine
configuration and the authenticator through :attr:`Node.interface_class`,
:meth:`Node.engine_config` and :meth:`Node.make_authenticator`.

Must never: reach into ttnet's private state, send anywhere but
127.0.0.1, or loop without a bound in count and time.
"""
from __future__ import annotations

import os
import queue
import resource
import socket
import threading
import time
from typing import Any

from ttnet import (Authenticator, EngineConfig, TTNetworkInterfaceUDP, TTNetworkMessageUDP,
                   TTReceivedMessage)

from .baselines import BaselineCommands, raw_socket
from .harness import HOST, BenchError, CommandServer, Worker, bulk_payload
from .others import OtherCommands

AUTH_KEY = b"ttnet-benchmark-key-0123456789abcdef"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def make_iface(receiver: Any, authenticator: Authenticator | None = None,
               cls: type[TTNetworkInterfaceUDP] = TTNetworkInterfaceUDP,
               **kw: Any) -> TTNetworkInterfaceUDP:
    """A ttnet interface on a free loopback port (retried on a port race)."""
    last: Exception | None = None
    for _ in range(20):
        try:
            return cls(ip_addr=HOST, port=_free_port(), receiver_function=receiver,
                       authenticator=authenticator, **kw)
        except OSError as exc:
            last = exc
    raise RuntimeError(f"no free UDP port for a ttnet interface: {last}")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class Node(BaselineCommands, OtherCommands):
    """Sender A or receiver B: two ttnet interfaces and the references."""

    #: The interface class both interfaces are made of.
    interface_class: type[TTNetworkInterfaceUDP] = TTNetworkInterfaceUDP

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.arrivals: dict[str, queue.SimpleQueue[tuple[float, int]]] = {
            "plain": queue.SimpleQueue(), "auth": queue.SimpleQueue(),
            "fast": queue.SimpleQueue(), "inline": queue.SimpleQueue()}
        self.pongs: queue.SimpleQueue[float] = queue.SimpleQueue()
        #: (ping number, time.monotonic() at the top of the receiver function)
        self.ping_stamps: list[tuple[int, float]] = []
        self.ifaces: dict[str, TTNetworkInterfaceUDP] = {}
        # "fast": fast start on (both ends are ttnet), for its latency rows;
        # "inline": the same with the receiver function on the I/O thread
        for name, auth in (("plain", None), ("auth", self.make_authenticator()),
                           ("fast", None), ("inline", None)):
            self.ifaces[name] = make_iface(self._receiver(name), auth, self.interface_class,
                                           config=self.engine_config(name),
                                           inline_callbacks=name == "inline")
        self.raw = raw_socket()

    def engine_config(self, name: str) -> EngineConfig | None:
        """The engine configuration of interface ``name`` (None: default)."""
        return EngineConfig(fast_start=True) if name in ("fast", "inline") else None

    def make_authenticator(self) -> Authenticator:
        return Authenticator(AUTH_KEY)

    def _receiver(self, name: str) -> Any:
        arrivals, pongs = self.arrivals[name], self.pongs

        def on_message(msg: TTReceivedMessage) -> None:
            t = time.monotonic()
            p = msg.payload
            head = p[:4]
            if head == b"PING":
                # Echo at once, from the receiver function, ensure=True: the
                # reply is a full ttnet message exchange too.
                if len(self.ping_stamps) < 100_000:
                    self.ping_stamps.append((int.from_bytes(p[4:8], "little"), t))
                ip, port = msg.address              # UDP: (ip, port)
                self.ifaces[name].send(TTNetworkMessageUDP(ip, port, b"PONG" + p[4:]),
                                       ensure=True)
            elif head == b"PONG":
                pongs.put(t)
            else:
                arrivals.put((t, len(p)))
        return on_message

    def hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "raw": self.raw.getsockname(),
                **{name: iface.address for name, iface in self.ifaces.items()}}

    def close(self) -> None:
        for iface in self.ifaces.values():
            iface.cleanup()
        self.raw.close()

    # ------------------------------------------------------------ ttnet
    def cmd_send(self, name: str, dest: tuple[str, int], size: int,
                 timeout: float) -> tuple[float, float, bool, str | None]:
        """One ensure=True message; returns (t_send, t_all_acked, ok, reason)."""
        msg = TTNetworkMessageUDP(dest[0], dest[1], bulk_payload(size))
        t0 = time.monotonic()
        h = self.ifaces[name].send(msg, ensure=True)
        ok = h.wait(timeout)
        return t0, time.monotonic(), ok, h.reason

    def cmd_wait_arrival(self, name: str, timeout: float) -> tuple[float, int] | None:
        try:
            return self.arrivals[name].get(timeout=timeout)
        except queue.Empty:
            return None

    def cmd_ping_stamps(self) -> list[tuple[int, float]]:
        """When each PING reached this node's receiver function (and forget)."""
        out, self.ping_stamps = self.ping_stamps, []
        return out

    def cmd_ttping(self, name: str, dest: tuple[str, int], n: int, size: int,
                   timeout: float) -> tuple[list[float], int, list[tuple[int, float]]]:
        """n sequential PING -> PONG exchanges, both ensure=True ttnet
        messages; returns the round trips (send() to the PONG reaching this
        side's receiver function), how many timed out, and (ping number,
        time of its send()) for matching with the peer's ping_stamps."""
        while True:                                  # nothing stale
            try:
                self.pongs.get_nowait()
            except queue.Empty:
                break
        iface = self.ifaces[name]
        pad = bytes(max(0, size - 8))
        rtts: list[float] = []
        sends: list[tuple[int, float]] = []
        lost = 0
        deadline = time.monotonic() + timeout
        for i in range(n):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = TTNetworkMessageUDP(dest[0], dest[1], b"PING" + i.to_bytes(4, "little") + pad)
            t0 = time.monotonic()
            iface.send(msg, ensure=True)
            sends.append((i, t0))
            try:
                t1 = self.pongs.get(timeout=min(left, 2.0))
            except queue.Empty:
                lost += 1
                continue
            rtts.append(t1 - t0)
        return rtts, lost, sends

    def cmd_counters(self) -> dict[str, dict[str, int]]:
        return {name: dict(iface.counters) for name, iface in self.ifaces.items()}


def run_node(cls: type[Node], conn: Any) -> None:
    """A worker process's body: a ``cls`` node serving commands until quit.
    ``functools.partial(run_node, cls)`` is a Worker target."""
    node = cls(conn)
    try:
        node.serve(node.hello())
    finally:
        node.close()


def node_main(conn: Any) -> None:
    run_node(Node, conn)


class MemoryProbe(CommandServer):
    """A fresh receiver process for the memory measurement: nothing but one
    ttnet interface, so its RSS growth is the transfer's."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.arrivals: queue.SimpleQueue[tuple[float, int]] = queue.SimpleQueue()
        self.iface = make_iface(lambda m: self.arrivals.put((time.monotonic(), len(m.payload))))

    def cmd_watch(self, timeout: float, interval: float) -> dict[str, Any]:
        engine = self.iface.engine
        rss_before = rss_bytes()
        peak = {"rss": rss_before, "reserved": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], rss_bytes())
                peak["reserved"] = max(peak["reserved"], engine.reserved_bytes)
                stop.wait(interval)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        self.started()
        try:
            arrival = self.arrivals.get(timeout=timeout)
        except queue.Empty:
            arrival = None
        finally:
            stop.set()
            t.join(2.0)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        cfg = engine.config
        return {"arrival": arrival, "rss_before": rss_before,
                "rss_peak": max(peak["rss"], maxrss), "rss_after": rss_bytes(),
                "reserved_peak": peak["reserved"], "reserved_after": engine.reserved_bytes,
                "peer_receive_budget": cfg.peer_receive_budget,
                "total_receive_budget": cfg.total_receive_budget,
                "max_message_size": cfg.max_message_size,
                "counters": dict(self.iface.counters)}


def memory_main(conn: Any) -> None:
    probe = MemoryProbe(conn)
    try:
        probe.serve({"pid": os.getpid(), "plain": probe.iface.address})
    finally:
        probe.iface.cleanup()


# ------------------------------------------------------------ parent side
def ttnet_goodput(a: Worker, b: Worker, iface: str, size: int) -> dict[str, Any]:
    """One ensure=True message of ``size`` bytes from a to b over ``iface``:
    send() in a to b's receiver function."""
    t0, t_acked, ok, reason = a.call("send", iface, b.info[iface], size, 60.0, timeout=70.0)
    if not ok:
        raise BenchError(f"ttnet {iface} send of {size} B failed: {reason}")
    arrival = b.call("wait_arrival", iface, 30.0, timeout=40.0)
    if arrival is None:
        raise BenchError(f"ttnet {iface}: {size} B acknowledged but never delivered")
    t_arr, n = arrival
    if n != size:
        raise BenchError(f"ttnet {iface}: delivered {n} B, sent {size} B")
    dt = t_arr - t0
    return {"seconds": dt, "MBps": size / dt / 1e6, "acked_after_s": t_acked - t0}


def ttnet_pingpong(a: Worker, b: Worker, n: int, size: int,
                   one_way: list[float], iface: str = "plain") -> tuple[list[float], int]:
    """n PING/PONG exchanges over the ``iface`` interfaces; returns (round
    trips, timeouts) and appends each PING's send() in a -> receiver
    function in b to ``one_way``."""
    b.call("ping_stamps")
    rtts, n_lost, sends = a.call("ttping", iface, b.info[iface], n, size, 30.0,
                                 timeout=60.0)
    got = dict(b.call("ping_stamps"))
    one_way.extend(got[i] - t0 for i, t0 in sends if i in got)
    return rtts, n_lost


def run_memory(ctx: Any, a: Worker, size: int) -> dict[str, Any]:
    """``size`` bytes from a into a fresh MemoryProbe; RSS and reserved
    bytes sampled during the transfer."""
    m = Worker(ctx, memory_main, "bench-memory")
    try:
        m.start("watch", 90.0, 0.002)
        t0, _, ok, reason = a.call("send", "plain", m.info["plain"], size, 90.0, timeout=100.0)
        res = m.finish(timeout=100.0)
        if not ok or res["arrival"] is None:
            raise BenchError(f"memory run: {size} B not delivered ({reason})")
        t_arr, n = res["arrival"]
        res["MBps"] = n / (t_arr - t0) / 1e6
        res["rss_growth"] = res["rss_peak"] - res["rss_before"]
        res["size"] = size
        return res
    finally:
        m.stop()
