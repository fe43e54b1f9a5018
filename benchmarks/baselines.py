"""The references ttnet is measured against, on a plain UDP socket.

Owns three references, each as worker commands (:class:`BaselineCommands`,
mixed into a worker that has a bound socket ``self.raw``) and the parent's
measurement that drives them:

- the **UDP baselines**: a blocking 64-byte ping-pong (latency) and a blast
  of back-to-back 1217-byte datagrams (goodput);
- the **protocol floor**: the least work any endpoint speaking the TTPython
  wire format in Python must do -- one blocking thread per side, REQ ->
  ACK_START -> DATA with the format's CRC on every datagram and one ACK per
  DATA packet, window 1000 -- and no timers, no loss recovery (loopback
  does not lose at these rates; a loss shows up as a timeout), no
  congestion window, no thread hand-off. Not a usable protocol: a lower
  bound for the ttnet numbers. It reads and writes datagrams only through
  :mod:`ttnet.wire`.

Must never: use ttnet's engine or interfaces, send anywhere but
:data:`benchmarks.harness.HOST`, or loop without a bound in count and time.
"""
from __future__ import annotations

import select
import socket
import time
from typing import Any

from ttnet.udp import SOCKET_BUFFER_BYTES
from ttnet.wire import (ACK_KIND, DATA_KIND, MAX_DATA, MAX_DATAGRAM, REQ_KIND, SEQ_MODULUS,
                        WINDOW_SIZE, MalformedPacket, encode_ack, encode_data, encode_req,
                        packet_count, parse_datagram)

from .harness import HOST, BenchError, CommandServer, Worker, bulk_payload

#: The blast's datagram: the largest a TTPython peer sends.
DGRAM = MAX_DATAGRAM


def raw_socket() -> socket.socket:
    """The baselines' socket: buffers sized like ttnet's (4 MiB asked)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    s.bind((HOST, 0))
    return s


class BaselineCommands(CommandServer):
    """Worker commands of the references; ``self.raw`` is their socket."""

    raw: socket.socket

    # ------------------------------------------------------ UDP baselines
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
        mv = memoryview(bulk_payload(total))
        sendto = self.raw.sendto
        count = 0
        t0 = time.monotonic()
        for off in range(0, total, dgram):
            sendto(mv[off:off + dgram], dest)
            count += 1
        return {"t_first_send": t0, "t_last_send": time.monotonic(), "datagrams": count}

    # ------------------------------------------------------ protocol floor
    def _floor_recv_message(self, sock: socket.socket) -> tuple[bytes, Any]:
        """Receive one message (REQ, DATA..., ACK each); returns payload."""
        while True:
            d, addr = sock.recvfrom(2048)
            try:
                req = parse_datagram(d)
            except MalformedPacket:
                continue
            if req is not None and req[0] == REQ_KIND:
                break
        _, mid, num, _, _ = req
        sock.sendto(encode_ack(mid, 0), addr)
        items: list[bytes | None] = [None] * num
        got = 0
        while got < num:
            d = sock.recv(2048)
            try:
                dg = parse_datagram(d)
            except MalformedPacket:
                continue
            if dg is None:
                continue
            kind, m, seq, data, _ = dg
            if kind != DATA_KIND or m != mid:
                continue
            lo = got - WINDOW_SIZE
            idx = lo + (seq - lo) % SEQ_MODULUS
            sock.sendto(encode_ack(mid, seq), addr)
            if items[idx] is None:
                items[idx] = data
                got += 1
        return b"".join(items), addr   # type: ignore[arg-type]

    @staticmethod
    def _is_ack_of(d: bytes, mid: int) -> bool:
        try:
            dg = parse_datagram(d)
        except MalformedPacket:
            return False
        return dg is not None and dg[0] == ACK_KIND and dg[1] == mid

    def _floor_send_message(self, sock: socket.socket, dest: Any, payload: bytes,
                            mid: int) -> None:
        """Send one message; returns when every DATA packet is ACKed."""
        n = packet_count(len(payload))
        sock.sendto(encode_req(mid, n), dest)
        while not self._is_ack_of(sock.recv(2048), mid):
            pass
        nxt = acked = 0
        timeout = sock.gettimeout()
        sock.setblocking(False)     # drain ACKs without waiting; block in select
        try:
            while acked < n:
                while nxt < n and nxt - acked < WINDOW_SIZE:
                    sock.sendto(encode_data(mid, nxt % SEQ_MODULUS,
                                            payload[nxt * MAX_DATA:(nxt + 1) * MAX_DATA]), dest)
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
                    try:
                        dg = parse_datagram(d)
                    except MalformedPacket:
                        continue
                    if dg is not None and dg[0] == ACK_KIND and dg[1] == mid:
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
        payload = bulk_payload(size)
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


# ------------------------------------------------------------ parent side
def baseline_goodput(a: Worker, b: Worker, size: int) -> dict[str, Any]:
    """UDP blast of ``size`` bytes from a to b: bytes that arrived over
    (first send .. last arrival)."""
    b.start("blast_recv", size, 10.0, 0.25)
    sent = a.call("blast_send", b.info["raw"], size, DGRAM, timeout=30.0)
    got = b.finish(timeout=30.0)
    if not got["bytes"]:
        raise BenchError("baseline blast: nothing arrived")
    dt = got["t_last"] - sent["t_first_send"]
    return {"seconds": dt, "MBps": got["bytes"] / dt / 1e6,
            "loss": 1.0 - got["bytes"] / size,
            "send_seconds": sent["t_last_send"] - sent["t_first_send"],
            "datagrams_sent": sent["datagrams"], "datagrams_received": got["datagrams"]}


def floor_goodput(a: Worker, b: Worker, size: int) -> dict[str, Any]:
    """One protocol-floor message of ``size`` bytes from a to b."""
    b.start("floor_recv", 20.0)
    t0 = a.call("floor_send", b.info["raw"], size, 20.0, timeout=40.0)
    got = b.finish(timeout=40.0)
    if t0 is None or got is None:
        raise BenchError("protocol floor: transfer timed out (a datagram was lost?)")
    dt = got[0] - t0
    return {"seconds": dt, "MBps": size / dt / 1e6}


def udp_pingpong(a: Worker, b: Worker, n: int, size: int) -> tuple[list[float], int]:
    """n UDP ping-pongs from a to b's echo; (round trips, timeouts)."""
    b.start("udp_echo", n + 10, 30.0)
    res = a.call("udp_ping", b.info["raw"], n, size, 20.0, timeout=40.0)
    b.finish(timeout=10.0)
    return res


def floor_pingpong(a: Worker, b: Worker, n: int, size: int) -> tuple[list[float], int]:
    """n protocol-floor message exchanges; (round trips, timeouts)."""
    b.start("floor_echo", n, 5.0)
    res = a.call("floor_ping", b.info["raw"], n, size, 20.0, timeout=40.0)
    b.finish(timeout=10.0)
    return res
