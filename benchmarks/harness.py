"""The benchmark harness: worker processes, their command pipe, timing helpers.

Owns how the parent drives a child process (:class:`Worker`: start it, send
a command, wait for the answer with a deadline, stop it and kill it if it
does not stop), the child's end of that pipe (:class:`CommandServer`, with
the per-process statistics every worker reports: CPU time, context
switches, CPU pinning), the kernel's UDP counters, and the statistics the
report uses (one percentile definition: ``testbed.spec.quantiles``).

Must never: time anything across the pipe (every measured time is stamped
inside a worker, on ``time.monotonic()`` = CLOCK_MONOTONIC, one clock for
every process of the machine), know what ttnet or a baseline is, send
traffic anywhere but :data:`HOST`, or leave a child running.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from testbed.spec.quantiles import percentile

MiB = 1024 * 1024
#: Every socket of the benchmark binds here and sends only here.
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """The benchmark itself could not run (a worker died or timed out)."""


# ------------------------------------------------------------ parent side
class Worker:
    """A child process and its command pipe."""

    def __init__(self, ctx: Any, target: Any, name: str) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.info = self._reply("ready", 60.0)

    def _reply(self, want: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name}: no answer within {timeout:.0f}s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise BenchError(f"{self.name} failed:\n{value}")
        if kind != want:
            raise BenchError(f"{self.name}: expected {want!r}, got {kind!r}")
        return value

    def call(self, cmd: str, *args: Any, timeout: float = 60.0) -> Any:
        self.conn.send((cmd, args))
        return self._reply("ok", timeout)

    def start(self, cmd: str, *args: Any, timeout: float = 10.0) -> Any:
        """Begin a two-phase command; returns once the worker is listening
        (with what it sent along, e.g. the port it listens on)."""
        self.conn.send((cmd, args))
        return self._reply("started", timeout)

    def finish(self, timeout: float = 60.0) -> Any:
        return self._reply("ok", timeout)

    def stop(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send(("quit", ()))
                self.conn.poll(2.0)
        except (OSError, EOFError, BrokenPipeError):
            pass
        self.proc.join(3.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2.0)
        self.conn.close()


@contextmanager
def worker_pair(ctx: Any, target: Any, prefix: str) -> Iterator[tuple[Worker, Worker]]:
    """Sender A and receiver B running ``target``; both stopped on exit."""
    ws: list[Worker] = []
    try:
        log("starting sender (A) and receiver (B) processes")
        ws.append(Worker(ctx, target, f"{prefix}-A"))
        ws.append(Worker(ctx, target, f"{prefix}-B"))
        yield ws[0], ws[1]
    finally:
        for w in reversed(ws):
            w.stop()


# -------------------------------------------------------------- child side
class CommandServer:
    """A worker's command loop: the parent's ``(name, args)`` runs
    ``cmd_<name>(*args)`` and gets ``("ok", result)`` or ``("error", tb)``."""

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

    # ------------------------------------------- this process's statistics
    def cmd_cpu(self) -> float:
        """CPU seconds (user + system, all threads) this process has used."""
        return time.process_time()

    def cmd_thread_cpu(self) -> dict[str, tuple[float, float, float]]:
        """Per live thread (by name): (CPU seconds, user ticks, system ticks)."""
        out: dict[str, tuple[float, float, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for t in threading.enumerate():
            try:
                # ident is None only before start (TypeError, caught below)
                cid = time.pthread_getcpuclockid(t.ident)  # type: ignore[arg-type]
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


_payloads: dict[int, bytes] = {}


def bulk_payload(size: int) -> bytes:
    """``size`` zero bytes, made once per process. Not starting with
    PING/PONG, so the ttnet nodes' receivers treat it as bulk data."""
    p = _payloads.get(size)
    if p is None:
        p = _payloads[size] = bytes(size)
    return p


# ---------------------------------------------------------------- numbers
def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation); NaN for none."""
    v = percentile(xs, q)
    return math.nan if v is None else v


def median(xs: list[float]) -> float:
    return pct(xs, 50)


def diff_counters(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0)
            for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def udp_snmp() -> dict[str, int]:
    """Kernel UDP counters (this network namespace, every process)."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [ln.split() for ln in f if ln.startswith("Udp:")]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=False))
    except (OSError, IndexError, ValueError):
        return {}


def snmp_delta(before: dict[str, int]) -> dict[str, int]:
    after = udp_snmp()
    return {k: after[k] - before.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")
            if k in after}


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)
