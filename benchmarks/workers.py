"""The benchmark's worker processes: each one plays an ensemble.

A :class:`Node` process owns two ttnet interfaces ("plain" and "auth", the
latter with an :class:`ttnet.Authenticator` on the shared benchmark key) and
one plain UDP socket for the baselines, all on 127.0.0.1. The parent process
drives it over a ``multiprocessing`` pipe with small commands; nothing is
measured across the pipe, only inside the workers:

- goodput: the sender stamps ``time.monotonic()`` just before ``send()``,
  the receiver stamps it at the top of its receiver function. On Linux
  ``time.monotonic`` is ``CLOCK_MONOTONIC``, one clock for every process of
  the machine, so the difference is a real send-to-delivery time.
- latency: measured inside one process as a round trip (see
  ``cmd_ttping`` / ``cmd_udp_ping``).

Every loop here is bounded in count and in wall time; traffic only goes to
127.0.0.1.
"""
from __future__ import annotations

import binascii
import os
import queue
import resource
import select
import socket
import struct
import threading
import time
import traceback
from typing import Any

from ttnet import Authenticator, TTNetworkInterfaceUDP, TTNetworkMessageUDP
from ttnet.udp import SOCKET_BUFFER_BYTES
from ttnet.wire import _REV8, SEQ_MODULUS, WINDOW_SIZE, encode_ack, encode_data, encode_req

AUTH_KEY = b"ttnet-benchmark-key-0123456789abcdef"
HOST = "127.0.0.1"
#: Largest TTPython datagram (1200 B of data + 17 B of header and CRC).
DGRAM = 1217
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def make_iface(receiver: Any, authenticator: Any = None, cls: Any = TTNetworkInterfaceUDP,
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


def raw_socket() -> socket.socket:
    """The baseline's socket: buffers sized like ttnet's (4 MiB asked)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    s.bind((HOST, 0))
    return s


def crc_ok(d: bytes) -> bool:
    """The format's CRC checks (same test as ttnet.wire.crc_ok, cheapest form:
    the reflected CRC of bit-reversed bytes is all ones exactly when the
    non-reflected CRC over the datagram is 0)."""
    return binascii.crc32(d.translate(_REV8), 0xFFFFFFFF) == 0xFFFFFFFF


_SEQ = struct.Struct("<BQI")
_REQ = struct.Struct("<BQHI")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _payload(size: int, cache: dict[int, bytes]) -> bytes:
    p = cache.get(size)
    if p is None:
        # Not starting with PING/PONG, so receivers treat it as bulk data.
        p = cache[size] = bytes(size)
    return p


class _Server:
    """Command loop shared by the worker kinds: ``cmd_<name>(*args)``."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def started(self) -> None:
        """Tell the parent a two-phase command is ready (e.g. a receiver
        is about to block in recv), before the command's final result."""
        self.conn.send(("started", None))

    def serve(self, hello: Any) -> None:
        self.conn.send(("ready", hello))
        while True:
            try:
                cmd, args = self.conn.recv()
            except (EOFError, OSError):
                return
            if cmd == "quit":
                self.conn.send(("ok", None))
                return
            try:
                result = getattr(self, "cmd_" + cmd)(*args)
            except Exception:
                self.conn.send(("error", traceback.format_exc()))
            else:
                self.conn.send(("ok", result))


class Node(_Server):
    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.arrivals = {"plain": queue.SimpleQueue(), "auth": queue.SimpleQueue()}
        self.pongs: queue.SimpleQueue = queue.SimpleQueue()
        #: (ping number, time.monotonic() at the top of the receiver function)
        self.ping_stamps: list[tuple[int, float]] = []
        self._cache: dict[int, bytes] = {}
        self.ifaces: dict[str, TTNetworkInterfaceUDP] = {}
        self.ifaces["plain"] = make_iface(self._receiver("plain"))
        self.ifaces["auth"] = make_iface(self._receiver("auth"), Authenticator(AUTH_KEY))
        self.raw = raw_socket()

    def _receiver(self, name: str) -> Any:
        arrivals, pongs = self.arrivals[name], self.pongs

        def on_message(msg: Any) -> None:
            t = time.monotonic()
            p = msg.payload
            head = p[:4]
            if head == b"PING":
                # Echo at once, from the receiver function, ensure=True: the
                # reply is a full ttnet message exchange too.
                if len(self.ping_stamps) < 100_000:
                    self.ping_stamps.append((int.from_bytes(p[4:8], "little"), t))
                ip, port = msg.address
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
        msg = TTNetworkMessageUDP(dest[0], dest[1], _payload(size, self._cache))
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

    def cmd_cpu(self) -> float:
        """CPU seconds (user + system, all threads) this process has used."""
        return time.process_time()

    def cmd_thread_cpu(self) -> dict[str, tuple[float, float, float]]:
        """Per live thread (by name): (CPU seconds, user ticks, system ticks)."""
        out: dict[str, tuple[float, float, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for t in threading.enumerate():
            try:
                cid = time.pthread_getcpuclockid(t.ident)
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[t.name] = (time.clock_gettime(cid), int(fields[11]) / tick,
                               int(fields[12]) / tick)
            except (OSError, TypeError, ValueError, IndexError):
                pass
        return out

    def cmd_ctxsw(self) -> int:
        """Context switches (voluntary + involuntary) of all threads so far."""
        total = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/status") as f:
                    for line in f:      # voluntary_ and nonvoluntary_ctxt_switches
                        if "ctxt_switches:" in line:
                            total += int(line.split()[-1])
            except OSError:
                pass
        return total

    def cmd_pin(self, cpus: list[int] | None) -> list[int]:
        """Pin every thread of this process to ``cpus`` (None: all CPUs)."""
        want = set(cpus) if cpus else set(range(os.cpu_count() or 1))
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), want)
        return sorted(want)

    def cmd_counters(self) -> dict[str, dict[str, int]]:
        return {name: dict(iface.counters) for name, iface in self.ifaces.items()}

    # ------------------------------------------------------- baselines
    def cmd_udp_echo(self, max_n: int, timeout: float) -> int:
        """Blocking echo server on the raw socket until b"STOP" (bounded)."""
        sock = self.raw
        sock.settimeout(0.5)
        self.started()
        n = 0
        deadline = time.monotonic() + timeout
        try:
            while n < max_n and time.monotonic() < deadline:
                try:
                    data, addr = sock.recvfrom(2048)
                except socket.timeout:
                    continue
                if data == b"STOP":
                    break
                sock.sendto(data, addr)
                n += 1
        finally:
            sock.settimeout(None)
        return n

    def cmd_udp_ping(self, dest: tuple[str, int], n: int, size: int,
                     timeout: float) -> tuple[list[float], int]:
        """n blocking ping-pongs of a size-byte datagram; round trips."""
        sock = self.raw
        sock.settimeout(0.5)
        payload = bytes(size)
        rtts: list[float] = []
        lost = 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(n):
                if time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                sock.sendto(payload, dest)
                try:
                    sock.recv(2048)
                except socket.timeout:
                    lost += 1
                    continue
                rtts.append(time.monotonic() - t0)
        finally:
            sock.settimeout(None)
            sock.sendto(b"STOP", dest)
        return rtts, lost

    def cmd_blast_recv(self, expected: int, timeout: float, idle: float) -> dict[str, Any]:
        """Count arriving bytes until all came or the link went idle."""
        sock = self.raw
        buf = bytearray(65536)
        got = n = 0
        t_first = t_last = None
        sock.settimeout(timeout)
        self.started()
        deadline = time.monotonic() + timeout
        try:
            while got < expected and time.monotonic() < deadline:
                try:
                    k = sock.recv_into(buf)
                except socket.timeout:
                    break
                t_last = time.monotonic()
                if t_first is None:
                    t_first = t_last
                    sock.settimeout(idle)
                got += k
                n += 1
        finally:
            sock.settimeout(None)
        return {"bytes": got, "datagrams": n, "t_first": t_first, "t_last": t_last}

    def cmd_blast_send(self, dest: tuple[str, int], total: int,
                       dgram: int) -> dict[str, Any]:
        """Send total bytes as back-to-back dgram-byte datagrams, no pacing."""
        mv = memoryview(_payload(total, self._cache))
        sendto = self.raw.sendto
        count = 0
        t0 = time.monotonic()
        for off in range(0, total, dgram):
            sendto(mv[off:off + dgram], dest)
            count += 1
        return {"t_first_send": t0, "t_last_send": time.monotonic(), "datagrams": count}


    # ------------------------------------------------ protocol floor
    # The least work any TTPython-wire-compatible endpoint written in Python
    # has to do: one blocking thread per side, REQ -> ACK_START -> DATA with
    # the format's CRC on every datagram and one ACK per DATA packet, but no
    # timers, no loss recovery (loopback does not lose at these rates; a
    # loss shows up as a timeout), no congestion window, no thread hand-off.
    # Not a usable protocol -- a lower bound for the ttnet numbers.
    def _floor_recv_message(self, sock: socket.socket) -> tuple[bytes, Any]:
        """Receive one message (REQ, DATA..., ACK each); returns payload."""
        while True:
            d, addr = sock.recvfrom(2048)
            if d[0] == 0 and len(d) == 19 and crc_ok(d):
                break
        _, mid, _, num = _REQ.unpack_from(d)
        sock.sendto(encode_ack(mid, 0), addr)
        items: list[bytes | None] = [None] * num
        got = 0
        while got < num:
            d = sock.recv(2048)
            if d[0] != 1 or not crc_ok(d):
                continue
            _, m, seq = _SEQ.unpack_from(d)
            if m != mid:
                continue
            lo = got - WINDOW_SIZE
            idx = lo + (seq - lo) % SEQ_MODULUS
            sock.sendto(encode_ack(mid, seq), addr)
            if items[idx] is None:
                items[idx] = d[13:-4]
                got += 1
        return b"".join(items), addr   # type: ignore[arg-type]

    def _floor_send_message(self, sock: socket.socket, dest: Any, payload: bytes,
                            mid: int) -> None:
        """Send one message; returns when every DATA packet is ACKed."""
        n = -(-len(payload) // 1200)
        sock.sendto(encode_req(mid, n), dest)
        while True:
            d = sock.recv(2048)
            if d[0] == 2 and crc_ok(d) and _SEQ.unpack_from(d)[1] == mid:
                break
        nxt = acked = 0
        timeout = sock.gettimeout()
        sock.setblocking(False)     # drain ACKs without waiting; block in select
        try:
            while acked < n:
                while nxt < n and nxt - acked < WINDOW_SIZE:
                    sock.sendto(encode_data(mid, nxt % SEQ_MODULUS,
                                            payload[nxt * 1200:(nxt + 1) * 1200]), dest)
                    nxt += 1
                while acked < n:
                    try:
                        d = sock.recv(2048)
                    except BlockingIOError:
                        if nxt < n and nxt - acked < WINDOW_SIZE:
                            break           # room in the window: send more
                        if not select.select([sock], [], [], timeout)[0]:
                            raise socket.timeout("no ACK")
                        continue
                    if d[0] == 2 and crc_ok(d) and _SEQ.unpack_from(d)[1] == mid:
                        acked += 1
        finally:
            sock.settimeout(timeout)

    def cmd_floor_recv(self, timeout: float) -> tuple[float, int] | None:
        sock = self.raw
        sock.settimeout(timeout)
        self.started()
        try:
            payload, _ = self._floor_recv_message(sock)
            return time.monotonic(), len(payload)
        except socket.timeout:
            return None
        finally:
            sock.settimeout(None)

    def cmd_floor_send(self, dest: tuple[str, int], size: int, timeout: float) -> float | None:
        sock = self.raw
        sock.settimeout(timeout)
        payload = _payload(size, self._cache)
        t0 = time.monotonic()
        try:
            self._floor_send_message(sock, dest, payload, 1)
        except socket.timeout:
            return None
        finally:
            sock.settimeout(None)
        return t0

    def cmd_floor_echo(self, n: int, timeout: float) -> int:
        """Answer each message with the same payload, as a message."""
        sock = self.raw
        sock.settimeout(timeout)
        self.started()
        done = 0
        try:
            while done < n:
                payload, addr = self._floor_recv_message(sock)
                self._floor_send_message(sock, addr, payload, done + 2)
                done += 1
        except socket.timeout:
            pass
        finally:
            sock.settimeout(None)
        return done

    def cmd_floor_ping(self, dest: tuple[str, int], n: int, size: int,
                       timeout: float) -> tuple[list[float], int]:
        sock = self.raw
        sock.settimeout(2.0)
        payload = bytes(size)
        rtts: list[float] = []
        lost = 0
        deadline = time.monotonic() + timeout
        try:
            for i in range(n):
                if time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                try:
                    self._floor_send_message(sock, dest, payload, 1000 + i)
                    self._floor_recv_message(sock)
                except socket.timeout:
                    lost += 1
                    break
                rtts.append(time.monotonic() - t0)
        finally:
            sock.settimeout(None)
        return rtts, lost


def node_main(conn: Any) -> None:
    node = Node(conn)
    try:
        node.serve(node.hello())
    finally:
        node.close()


class MemoryProbe(_Server):
    """A fresh receiver process for the memory measurement: nothing but one
    ttnet interface, so its RSS growth is the transfer's."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.arrivals: queue.SimpleQueue = queue.SimpleQueue()
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
