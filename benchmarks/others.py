"""Other Python messaging stacks as informative references (issue 13, target 5).

Optional: each is measured only if its package is installed (the ``bench``
extra of pyproject.toml; ttnet itself stays stdlib-only), and its rows say
"not installed" otherwise. Measured in the same worker processes and the
same run as ttnet, on 127.0.0.1:

- **pyzmq** REQ/REP, 64 B: median round trip of a blocking REQ -> REP
  exchange (TCP on loopback; ZeroMQ's I/O thread on each side);
  PUSH/PULL, 10 MiB: one 10 MiB frame, A stamps before ``send``, B stamps
  after ``recv`` returns it; goodput = 10 MiB / that interval.
- **aioquic** (pure-Python QUIC, TLS 1.3 over UDP; one asyncio loop per
  side, a self-signed certificate made for the run): 64 B, median round
  trip of a request on a new bidirectional stream echoed back on it (a
  stream per request, as HTTP/3 does), on one connection set up first;
  10 MiB: one stream, A stamps before writing it, B stamps when the
  stream's end arrives; goodput = 10 MiB / that interval.

Must never: send anywhere but :data:`benchmarks.harness.HOST`, or loop
without a bound in count and time.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import ssl
import tempfile
import time
from typing import Any

from .harness import HOST, BenchError, CommandServer, Worker, bulk_payload, median


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class OtherCommands(CommandServer):
    """Worker commands of the optional references."""

    def cmd_zmq_rep(self, n: int, timeout: float) -> int:
        """A REP socket on a free loopback port; answers up to n requests."""
        import zmq
        ctx: Any = zmq.Context.instance()
        s = ctx.socket(zmq.REP)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port(f"tcp://{HOST}")
        s.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        self.conn.send(("started", port))
        done = 0
        try:
            while done < n:
                try:
                    msg = s.recv()
                except zmq.Again:
                    break
                s.send(msg)
                done += 1
        finally:
            s.close()
        return done

    def cmd_zmq_req(self, port: int, n: int, size: int, timeout: float) -> tuple[list[float], int]:
        import zmq
        ctx: Any = zmq.Context.instance()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 2000)
        s.connect(f"tcp://{HOST}:{port}")
        payload = bytes(size)
        rtts: list[float] = []
        lost = 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(n):
                if time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                s.send(payload)
                try:
                    s.recv()
                except zmq.Again:
                    lost += 1
                    break
                rtts.append(time.monotonic() - t0)
        finally:
            s.close()
        return rtts, lost

    def cmd_zmq_pull(self, timeout: float) -> tuple[float, int] | None:
        import zmq
        ctx: Any = zmq.Context.instance()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port(f"tcp://{HOST}")
        s.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        self.conn.send(("started", port))
        try:
            msg = s.recv(copy=False)
            return time.monotonic(), len(msg)
        except zmq.Again:
            return None
        finally:
            s.close()

    def cmd_zmq_push(self, port: int, size: int) -> float:
        import zmq
        ctx: Any = zmq.Context.instance()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 5000)
        s.connect(f"tcp://{HOST}:{port}")
        payload = bulk_payload(size)
        time.sleep(0.05)                 # let the connection come up first
        t0 = time.monotonic()
        s.send(payload, copy=False)
        s.close()                        # lingers until the frame is out
        return t0


    # ------------------------------------------------------------ aioquic
    def cmd_quic_server(self, mode: str, n: int, timeout: float) -> Any:
        """A QUIC server on a free loopback port. ``mode`` "echo": each
        stream's data is sent back on it, until n streams were answered;
        "bulk": the first stream's (arrival time, bytes) is returned (and
        b"ok" sent back). Gives up after ``timeout`` seconds."""
        return asyncio.run(_quic_server(self.conn, mode, n, timeout))

    def cmd_quic_client(self, port: int, mode: str, n: int, size: int,
                        timeout: float) -> Any:
        """Against cmd_quic_server: "echo": n sequential 64 B requests on
        new streams, returns (round trips, timeouts); "bulk": one
        ``size``-byte stream, returns the time before writing it."""
        return asyncio.run(_quic_client(port, mode, n, size, timeout))


_ALPN = ["ttnet-bench"]


def _quic_certificate(directory: str) -> tuple[str, str]:
    """A throw-away self-signed certificate for localhost (cert, key paths)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def _stream_protocol(on_stream: Any) -> Any:
    """A QuicConnectionProtocol class that gathers each stream's data and
    calls ``on_stream(protocol, stream_id, data)`` when the stream ends."""
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.quic.events import StreamDataReceived

    class StreamProtocol(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.buffers: dict[int, list[bytes]] = {}

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, StreamDataReceived):
                parts = self.buffers.setdefault(event.stream_id, [])
                parts.append(event.data)
                if event.end_stream:
                    del self.buffers[event.stream_id]
                    on_stream(self, event.stream_id, b"".join(parts))
    return StreamProtocol


async def _quic_server(conn: Any, mode: str, n: int, timeout: float) -> Any:
    from aioquic.asyncio import serve
    from aioquic.quic.configuration import QuicConfiguration
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    answered = 0

    def on_stream(proto: Any, stream_id: int, data: bytes) -> None:
        nonlocal answered
        if mode == "bulk":
            if not done.done():
                done.set_result((time.monotonic(), len(data)))
            data = b"ok"
        proto._quic.send_stream_data(stream_id, data, end_stream=True)
        proto.transmit()
        answered += 1
        if mode == "echo" and answered >= n and not done.done():
            done.set_result(answered)

    with tempfile.TemporaryDirectory() as d:
        cfg = QuicConfiguration(is_client=False, alpn_protocols=_ALPN,
                                max_stream_data=16 << 20, max_data=32 << 20)
        cfg.load_cert_chain(*_quic_certificate(d))
        server = await serve(HOST, 0, configuration=cfg,
                             create_protocol=_stream_protocol(on_stream))
    try:
        port = server._transport.get_extra_info("sockname")[1]
        conn.send(("started", port))
        try:
            return await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            return None if mode == "bulk" else answered
    finally:
        await asyncio.sleep(0.05)        # let the last answer leave
        server.close()


async def _quic_client(port: int, mode: str, n: int, size: int, timeout: float) -> Any:
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration
    loop = asyncio.get_running_loop()
    waiters: dict[int, asyncio.Future] = {}

    def on_stream(proto: Any, stream_id: int, data: bytes) -> None:
        fut = waiters.pop(stream_id, None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    cfg = QuicConfiguration(is_client=True, alpn_protocols=_ALPN, verify_mode=ssl.CERT_NONE,
                            max_stream_data=16 << 20, max_data=32 << 20)
    deadline = time.monotonic() + timeout

    async def request(client: Any, data: bytes, wait: float) -> bytes:
        sid = client._quic.get_next_available_stream_id()
        fut = waiters[sid] = loop.create_future()
        client._quic.send_stream_data(sid, data, end_stream=True)
        client.transmit()
        return await asyncio.wait_for(fut, wait)

    async with connect(HOST, port, configuration=cfg,
                       create_protocol=_stream_protocol(on_stream)) as client:
        if mode == "bulk":
            payload = bulk_payload(size)
            t0 = time.monotonic()
            await request(client, payload, max(1.0, deadline - time.monotonic()))
            return t0
        payload = bytes(size)
        rtts: list[float] = []
        lost = 0
        for _ in range(n):
            if time.monotonic() >= deadline:
                break
            t0 = time.monotonic()
            try:
                await request(client, payload, 2.0)
            except asyncio.TimeoutError:
                lost += 1
                break
            rtts.append(time.monotonic() - t0)
        return rtts, lost


# ------------------------------------------------------------ parent side
WARM_UP = 30                             # round trips dropped before the median


def _latency(label: str, server: tuple, client: tuple, n: int, size: int,
             a: Worker, b: Worker, timeout: float) -> dict[str, Any]:
    """One stack's round trips: its server started in ``b`` (``server``: the
    command and its arguments before the count; it gives up after
    ``timeout`` s idle), its client run in ``a`` (``client``: command,
    arguments between the port and the count; 30 s at most); the warm-up
    dropped, the median kept."""
    port = b.start(server[0], *server[1:], n + WARM_UP, timeout)
    rtts, lost = a.call(client[0], port, *client[1:], n + WARM_UP, size, 30.0,
                        timeout=max(timeout, 30.0) + 10.0)
    b.finish(timeout=timeout + 10.0)
    rtts = rtts[WARM_UP:]
    if not rtts:
        raise BenchError(f"{label}: no round trip completed")
    return {"median_rtt_us": median(rtts) * 1e6, "samples": len(rtts), "timeouts": lost}


def _goodput(label: str, start_server, send, size: int, reps: int,
             a: Worker, b: Worker, timeout: float) -> dict[str, Any]:
    """One stack's bulk transfers of ``size`` bytes, ``reps`` times:
    ``start_server(b)`` returns the port, ``send(a, port)`` the sender's
    start time; the receiver's finish gives (end time, bytes)."""
    runs = []
    for _ in range(reps):
        t0 = send(a, start_server(b))
        got = b.finish(timeout=timeout)
        if got is None or got[1] != size:
            raise BenchError(f"{label}: {size} B not received ({got})")
        runs.append(size / (got[0] - t0) / 1e6)
    return {"median_MBps": median(runs), "runs": runs}


def zmq_latency(a: Worker, b: Worker, n: int, size: int) -> dict[str, Any]:
    return _latency("pyzmq REQ/REP", ("zmq_rep",), ("zmq_req",), n, size, a, b, 10.0)


def zmq_goodput(a: Worker, b: Worker, size: int, reps: int) -> dict[str, Any]:
    return _goodput("pyzmq PUSH/PULL", lambda w: w.start("zmq_pull", 30.0),
                    lambda w, port: w.call("zmq_push", port, size, timeout=40.0),
                    size, reps, a, b, 40.0)


def quic_latency(a: Worker, b: Worker, n: int, size: int) -> dict[str, Any]:
    return _latency("aioquic", ("quic_server", "echo"), ("quic_client", "echo"), n, size,
                    a, b, 40.0)


def quic_goodput(a: Worker, b: Worker, size: int, reps: int) -> dict[str, Any]:
    return _goodput("aioquic stream", lambda w: w.start("quic_server", "bulk", 1, 60.0),
                    lambda w, port: w.call("quic_client", port, "bulk", 1, size, 50.0,
                                           timeout=70.0),
                    size, reps, a, b, 70.0)


def run_others(a: Worker, b: Worker, pings: int, size: int, reps: int,
               ping_size: int) -> dict[str, Any]:
    """Every optional reference that is installed; the others are marked."""
    out: dict[str, Any] = {}
    if installed("zmq"):
        out["pyzmq"] = {"latency": zmq_latency(a, b, pings, ping_size),
                        "goodput": zmq_goodput(a, b, size, reps)}
    else:
        out["pyzmq"] = {"skipped": "not installed (pip install .[bench])"}
    if installed("aioquic"):
        out["aioquic"] = {"latency": quic_latency(a, b, pings, ping_size),
                          "goodput": quic_goodput(a, b, size, reps)}
    else:
        out["aioquic"] = {"skipped": "not installed (pip install .[bench])"}
    return out
