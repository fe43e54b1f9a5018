"""UDP probe: an echo server, an RTT/loss pinger and a bulk-rate sender.

Stdlib only (runs in a bare python3 inside a container or namespace)::

    python3 -m testbed.guest.probe serve --port 7000 --duration 60
    python3 -m testbed.guest.probe ping 10.0.0.2 --port 7000 --count 200 --interval 0.01
    python3 -m testbed.guest.probe bulk 10.0.0.2 --port 7000 --bytes 2000000

ping/bulk print one JSON object. ping reports RTTs from the echo and, by
asking the server how many pings arrived, forward (client->server) and
reverse loss separately. bulk reports the rate the *server* saw between the
first and last datagram. Every datagram carries a CRC-32, so corrupted ones
are counted, not mistaken for good ones.

It owns nothing but its own socket. Every loop is bounded in count and time;
it never sends to any address it was not given.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
import zlib
from dataclasses import dataclass

from testbed.spec.quantiles import percentile

HEADER = struct.Struct("!cQId")  # kind, session, seq, client send time
CRC = struct.Struct("!I")
MIN_SIZE = HEADER.size + CRC.size
IP_UDP_OVERHEAD = 28  # IPv4 (20) + UDP (8) header bytes per datagram
MAX_COUNT = 1_000_000
MAX_DURATION_S = 3600.0
QUERY_TRIES = 10
QUERY_TIMEOUT_S = 0.5


def pack(kind: bytes, session: int, seq: int, sent: float, size: int) -> bytes:
    body = HEADER.pack(kind, session, seq, sent) + bytes(max(0, size - MIN_SIZE))
    return body + CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[bytes, int, int, float] | None:
    """(kind, session, seq, sent) or None if too short or the CRC is wrong."""
    if len(data) < MIN_SIZE or CRC.unpack(data[-4:])[0] != zlib.crc32(data[:-4]):
        return None
    return HEADER.unpack_from(data)


@dataclass
class Session:
    pings: int = 0
    bulk_packets: int = 0
    bulk_bytes: int = 0
    first: float = 0.0
    last: float = 0.0
    first_size: int = 0


def serve(host: str, port: int, duration_s: float, max_packets: int = MAX_COUNT) -> dict:
    """Echo pings, count bulk datagrams, answer stats queries; bounded."""
    duration_s = min(duration_s, MAX_DURATION_S)
    sessions: dict[int, Session] = {}
    corrupt = handled = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((host, port))
        end = time.monotonic() + duration_s
        while handled < max_packets:
            left = end - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            data, peer = sock.recvfrom(65535)
            now = time.monotonic()
            handled += 1
            msg = unpack(data)
            if msg is None:
                corrupt += 1
                continue
            kind, sid, _, _ = msg
            s = sessions.setdefault(sid, Session())
            if kind == b"P":
                s.pings += 1
                sock.sendto(data, peer)
            elif kind == b"B":
                if not s.bulk_packets:
                    s.first, s.first_size = now, len(data)
                s.bulk_packets += 1
                s.bulk_bytes += len(data)
                s.last = now
            elif kind == b"Q":
                reply = json.dumps({**s.__dict__, "corrupt": corrupt}).encode()
                sock.sendto(reply, peer)
    return {"handled": handled, "corrupt": corrupt, "sessions": len(sessions)}


def _query(sock: socket.socket, addr: tuple[str, int], session: int) -> dict:
    """Ask the server for this session's counters (retried: it may be lost)."""
    for seq in range(QUERY_TRIES):
        sock.sendto(pack(b"Q", session, seq, time.monotonic(), MIN_SIZE), addr)
        end = time.monotonic() + QUERY_TIMEOUT_S
        while (left := end - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
            data = sock.recv(65535)
            if data[:1] == b"{":
                return json.loads(data)
    raise TimeoutError(f"server {addr} did not answer {QUERY_TRIES} stats queries")


def ping(host: str, port: int, count: int, interval_s: float, size: int = 64,
         timeout_s: float = 2.0) -> dict:
    """Send count pings every interval_s; wait timeout_s after the last."""
    if not 0 < count <= MAX_COUNT:
        raise ValueError(f"count={count} must be in 1..{MAX_COUNT}")
    if count * interval_s + timeout_s > MAX_DURATION_S:
        raise ValueError("count * interval_s + timeout_s exceeds the probe's "
                         f"{MAX_DURATION_S} s bound; lower count or interval")
    size = max(size, MIN_SIZE)
    session = int.from_bytes(os.urandom(8), "big")
    addr = (host, port)
    rtts: list[float] = []
    seen: set[int] = set()
    corrupt = dup = send_errors = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(addr)
        start = time.monotonic()
        sent, next_send, stop = 0, start, None
        while True:
            now = time.monotonic()
            if sent < count and now >= next_send:
                try:
                    sock.send(pack(b"P", session, sent, now, size))
                except OSError:  # e.g. EPERM from a firewall verdict: lost
                    send_errors += 1
                sent += 1
                next_send = start + sent * interval_s
                if sent == count:
                    stop = now + timeout_s
                continue
            if stop is not None and (now >= stop or len(seen) == count):
                break
            wait = (next_send if sent < count else stop) - now
            if select.select([sock], [], [], max(0.0, wait))[0]:
                data = sock.recv(65535)
                arrived = time.monotonic()
                msg = unpack(data)
                if msg is None:
                    corrupt += 1
                elif msg[2] in seen:
                    dup += 1
                elif msg[0] == b"P" and msg[1] == session:
                    seen.add(msg[2])
                    rtts.append(arrived - msg[3])
        try:
            server = _query(sock, addr, session)
            forward, server_corrupt = server["pings"], server["corrupt"]
        except TimeoutError:  # path fully blocked: only round-trip loss known
            forward = server_corrupt = None
    rtts.sort()
    return {
        "sent": count, "received": len(seen), "server_received": forward,
        "loss": 1 - len(seen) / count,
        "loss_forward": None if forward is None else 1 - min(forward, count) / count,
        "loss_reverse": 1 - len(seen) / forward if forward else None,
        "corrupt_replies": corrupt, "duplicate_replies": dup,
        "send_errors": send_errors, "server_corrupt": server_corrupt,
        "rtt_median_s": statistics.median(rtts) if rtts else None,
        "rtt_mean_s": statistics.fmean(rtts) if rtts else None,
        "rtt_p05_s": percentile(rtts, 5),
        "rtt_p95_s": percentile(rtts, 95),
        "rtt_min_s": rtts[0] if rtts else None,
        "rtt_max_s": rtts[-1] if rtts else None,
    }


def bulk(host: str, port: int, total_bytes: int, size: int = 1400,
         max_duration_s: float = 60.0) -> dict:
    """Send total_bytes in size-byte datagrams as fast as the socket allows
    (a full qdisc blocks the sender), then report the server-side rate."""
    if not 0 < total_bytes <= 1 << 30:
        raise ValueError(f"total_bytes={total_bytes} must be in 1..{1 << 30}")
    size = max(size, MIN_SIZE)
    session = int.from_bytes(os.urandom(8), "big")
    addr = (host, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        start = time.monotonic()
        sent = 0
        for seq in range(-(-total_bytes // size)):
            if time.monotonic() - start > max_duration_s:
                break
            try:
                sock.send(pack(b"B", session, seq, time.monotonic(), size))
                sent += 1
            except OSError:  # ENOBUFS from a full queue: back off a little
                time.sleep(0.001)
        send_s = time.monotonic() - start
        time.sleep(0.2)  # let the shaped queue drain before asking
        server = _query(sock, addr, session)
    n, span = server["bulk_packets"], server["last"] - server["first"]
    # The first datagram opens the interval, so its bytes are not counted.
    payload_bits = (server["bulk_bytes"] - server["first_size"]) * 8
    ip_bits = payload_bits + (n - 1) * IP_UDP_OVERHEAD * 8
    return {
        "sent_packets": sent, "received_packets": n, "send_s": send_s, "span_s": span,
        "rate_bps_payload": payload_bits / span if span > 0 else None,
        "rate_bps_ip": ip_bits / span if span > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ttnet UDP probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--duration", type=float, default=60.0)
    s.add_argument("--max-packets", type=int, default=MAX_COUNT)
    for name in ("ping", "bulk"):
        c = sub.add_parser(name)
        c.add_argument("host")
        c.add_argument("--port", type=int, required=True)
    pi = sub.choices["ping"]
    pi.add_argument("--count", type=int, default=100)
    pi.add_argument("--interval", type=float, default=0.01)
    pi.add_argument("--size", type=int, default=64)
    pi.add_argument("--timeout", type=float, default=2.0)
    bu = sub.choices["bulk"]
    bu.add_argument("--bytes", type=int, default=1_000_000)
    bu.add_argument("--size", type=int, default=1400)
    bu.add_argument("--max-duration", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        result = serve(a.host, a.port, a.duration, a.max_packets)
    elif a.cmd == "ping":
        result = ping(a.host, a.port, a.count, a.interval, a.size, a.timeout)
    else:
        result = bulk(a.host, a.port, a.bytes, a.size, a.max_duration)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
