"""Other Python messaging stacks as informative references (issue 13, target 5).

Optional: each is measured only if its package is installed (the ``bench``
extra of pyproject.toml; ttnet itself stays stdlib-only), and its rows say
"not installed" otherwise. Measured in the same worker processes and the
same run as ttnet, on 127.0.0.1:

- **pyzmq** REQ/REP, 64 B: median round trip of a blocking REQ -> REP
  exchange (TCP on loopback; ZeroMQ's I/O thread on each side);
  PUSH/PULL, 10 MiB: one 10 MiB frame, A stamps before ``send``, B stamps
  after ``recv`` returns it; goodput = 10 MiB / that interval.
- **aioquic**: not implemented yet (a reliable QUIC stream needs a TLS
  certificate and an asyncio loop per side); its rows say so.

Must never: send anywhere but :data:`benchmarks.harness.HOST`, or loop
without a bound in count and time.
"""
from __future__ import annotations

import importlib.util
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


# ------------------------------------------------------------ parent side
def zmq_latency(a: Worker, b: Worker, n: int, size: int) -> dict[str, Any]:
    port = b.start("zmq_rep", n + 30, 10.0)
    rtts, lost = a.call("zmq_req", port, n + 30, size, 30.0, timeout=40.0)
    b.finish(timeout=20.0)
    rtts = rtts[30:]                     # warm-up
    if not rtts:
        raise BenchError("pyzmq REQ/REP: no round trip completed")
    return {"median_rtt_us": median(rtts) * 1e6, "samples": len(rtts), "timeouts": lost}


def zmq_goodput(a: Worker, b: Worker, size: int, reps: int) -> dict[str, Any]:
    runs = []
    for _ in range(reps):
        port = b.start("zmq_pull", 30.0)
        t0 = a.call("zmq_push", port, size, timeout=40.0)
        got = b.finish(timeout=40.0)
        if got is None or got[1] != size:
            raise BenchError(f"pyzmq PUSH/PULL: {size} B not received ({got})")
        runs.append(size / (got[0] - t0) / 1e6)
    return {"median_MBps": median(runs), "runs": runs}


def run_others(a: Worker, b: Worker, pings: int, size: int, reps: int,
               ping_size: int) -> dict[str, Any]:
    """Every optional reference that is installed; the others are marked."""
    out: dict[str, Any] = {}
    if installed("zmq"):
        out["pyzmq"] = {"latency": zmq_latency(a, b, pings, ping_size),
                        "goodput": zmq_goodput(a, b, size, reps)}
    else:
        out["pyzmq"] = {"skipped": "not installed (pip install .[bench])"}
    out["aioquic"] = {"skipped": ("installed, not measured yet" if installed("aioquic")
                                  else "not installed (pip install .[bench])")}
    return out
