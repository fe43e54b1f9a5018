"""Where does ttnet's time go? Diagnostics behind the numbers of the benchmark.

    python -m benchmarks.diagnose latency [--pings 200]   # step-by-step timeline of a PING/PONG
    python -m benchmarks.diagnose goodput [--size-mib 10] # cProfile of the I/O threads
    python -m benchmarks.diagnose goodput --pings 1000    # ... during PING/PONGs instead
    python -m benchmarks.diagnose auth                    # seal/open cost in a transfer

Same two-process setup as ``python -m benchmarks`` (sender A, receiver B,
loopback). The worker processes observe ttnet only through its public
hooks, stamping ``time.monotonic_ns()`` -- one clock for both processes on
Linux -- so a single message can be followed across both processes and
their threads:

- latency: the engines' tracer (``EngineConfig.tracer``: every datagram
  received, sent, retransmitted or dropped, every step of a message), an
  interface subclass that stamps ``send()``, and the receiver function;
- goodput: ``threading.setprofile`` starts a cProfile in each ttnet thread;
- auth: an ``Authenticator`` subclass that times ``seal``/``open_parts``.

Nothing in ttnet is patched or edited.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import multiprocessing as mp
import pstats
import sys
import threading
import time
from functools import partial
from typing import Any

from ttnet import (Authenticator, EngineConfig, TraceEvent, TraceKind, TTNetworkInterfaceUDP,
                   TTPacketType)

from . import nodes
from .harness import MiB, BenchError, median, worker_pair
from .nodes import run_node, ttnet_goodput

#: One stamped step: (monotonic ns, thread tag, label, detail).
Stamp = tuple[int, str, str, int]


def _thread_tag() -> str:
    name = threading.current_thread().name
    return "io" if name.startswith("ttnet-io") else "cb" if name.startswith("ttnet-cb") else "app"


# ------------------------------------------------------------ in the worker
class TracedInterface(TTNetworkInterfaceUDP):
    """Stamps the caller's ``send()`` (and its return) into ``trace``."""

    trace: list[Stamp] = []

    def send(self, message: Any, *a: Any, **k: Any) -> Any:
        trace = self.trace
        trace.append((time.monotonic_ns(), _thread_tag(), "send()", len(message.payload)))
        h = super().send(message, *a, **k)
        trace.append((time.monotonic_ns(), _thread_tag(), "send() returned", 0))
        return h


def _label(ev: TraceEvent) -> str:
    """A timeline label for an engine trace event."""
    kind = TTPacketType(ev.packet_type).name if ev.packet_type is not None else "?"
    if ev.kind == TraceKind.DATAGRAM_RECEIVED:
        return "rx " + kind
    if ev.kind == TraceKind.DATAGRAM_SENT:
        return "tx " + kind
    if ev.kind == TraceKind.DATAGRAM_RETRANSMITTED:
        return "retx " + kind
    if ev.kind == TraceKind.DATAGRAM_DROPPED:
        return f"drop ({ev.reason})"
    return str(ev.kind)


class TracedNode(nodes.Node):
    interface_class = TracedInterface

    def __init__(self, conn: Any) -> None:
        self.trace: list[Stamp] = []
        TracedInterface.trace = self.trace
        super().__init__(conn)
        for name in ("plain", "auth"):
            self._wrap_receiver(name)

    def engine_config(self, name: str) -> EngineConfig:
        trace = self.trace

        def tracer(ev: TraceEvent) -> None:
            trace.append((time.monotonic_ns(), _thread_tag(), _label(ev), ev.size))
        return EngineConfig(tracer=tracer, fast_start=name in ("fast", "inline"))

    def _wrap_receiver(self, name: str) -> None:
        iface = self.ifaces[name]
        inner = iface.receiver_function
        assert inner is not None
        trace = self.trace

        def receiver(msg: Any) -> None:
            trace.append((time.monotonic_ns(), "cb",
                          "receiver_fn " + bytes(msg.payload[:4]).decode("latin1"), 0))
            inner(msg)
        iface.receiver_function = receiver

    def cmd_trace(self, clear: bool = True) -> list[Stamp]:
        t = list(self.trace)
        if clear:
            self.trace.clear()
        return t


class ProfiledNode(nodes.Node):
    """cProfile every ttnet I/O and dispatcher thread of this process."""

    def __init__(self, conn: Any) -> None:
        self.profiles: list[cProfile.Profile] = []
        # Threads started while the hook is set (the interfaces' threads)
        # call it once, on their first Python call, before run().
        threading.setprofile(self._start_profile)
        try:
            super().__init__(conn)
        finally:
            threading.setprofile(None)

    def _start_profile(self, frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        if _thread_tag() != "app":
            p = cProfile.Profile()
            self.profiles.append(p)
            p.enable()

    def cmd_profile_dump(self, limit: int = 30) -> str:
        for iface in self.ifaces.values():
            iface.cleanup()              # let the loops return so stats are final
        out = io.StringIO()
        st = None
        for p in self.profiles:
            if st is None:
                st = pstats.Stats(p, stream=out)
            else:
                st.add(p)
        if st is None:
            return "no ttnet thread was profiled"
        st.sort_stats("tottime").print_stats(limit)
        return out.getvalue()


class TimedAuthenticator(Authenticator):
    """Times ``seal`` and ``open_parts`` (what the UDP interface calls)."""

    def __init__(self, key: bytes, times: list[tuple[str, float, str]]) -> None:
        super().__init__(key)
        self.times = times

    def seal(self, payload: bytes) -> bytes:
        t0 = time.perf_counter()
        r = super().seal(payload)
        self.times.append(("seal", time.perf_counter() - t0, threading.current_thread().name))
        return r

    def open_parts(self, parts: list[bytes], sender: Any = None) -> bytes | None:
        t0 = time.perf_counter()
        r = super().open_parts(parts, sender)
        self.times.append(("open", time.perf_counter() - t0, threading.current_thread().name))
        return r


class AuthTimedNode(nodes.Node):
    """Times Authenticator.seal / .open_parts inside a real transfer."""

    def __init__(self, conn: Any) -> None:
        self.auth_times: list[tuple[str, float, str]] = []
        super().__init__(conn)

    def make_authenticator(self) -> Authenticator:
        return TimedAuthenticator(nodes.AUTH_KEY, self.auth_times)

    def cmd_auth_times(self) -> list[tuple[str, float, str]]:
        t = list(self.auth_times)
        self.auth_times.clear()
        return t


# ---------------------------------------------------------------- analyses
def latency(args: argparse.Namespace) -> None:
    with worker_pair(mp.get_context("spawn"), partial(run_node, TracedNode), "prof") as (a, b):
        a.call("ttping", "plain", b.info["plain"], 50, 64, 20.0)
        a.call("trace")
        b.call("trace")
        rtts, lost, _ = a.call("ttping", "plain", b.info["plain"], args.pings, 64, 60.0)
        ta = [(t, "A", th, ev, x) for t, th, ev, x in a.call("trace")]
        tb = [(t, "B", th, ev, x) for t, th, ev, x in b.call("trace")]
    events = sorted(ta + tb)
    # Split into pings: each starts at A's send() of a 64 B PING.
    pings: list[list] = []
    for e in events:
        if e[1] == "A" and e[3] == "send()" and e[2] == "app":
            pings.append([e])
        elif pings:
            pings[-1].append(e)
    # Milestones: the k-th occurrence of each (process, thread, event) label
    # inside one ping, timed from A's send(); medians over all pings.
    at: dict[str, list[float]] = collections.defaultdict(list)
    done = 0
    example = None
    for p in pings:
        t0 = p[0][0]
        end = next((i for i, e in enumerate(p) if e[1] == "A" and e[3] == "receiver_fn PONG"), None)
        if end is None:
            continue
        done += 1
        seen: collections.Counter = collections.Counter()
        for e in p[:end + 1]:
            label = f"{e[1]}.{e[2]} {e[3]}"
            seen[label] += 1
            at[f"{label} #{seen[label]}"].append((e[0] - t0) / 1000)
        if example is None and done > len(pings) // 2:
            example = [(f"{e[1]}.{e[2]} {e[3]}", (e[0] - t0) / 1000, e[4]) for e in p[:end + 1]]
    print(f"{len(rtts)} round trips, {lost} timed out; median RTT "
          f"{median(rtts) * 1e6:.0f} us -> one-way {median(rtts) * 5e5:.0f} us\n")
    print("Milestones of one PING -> PONG round trip (A = PING sender, B = echo; io = I/O "
          "thread, cb = dispatcher thread, app = caller), median time since A's send():")
    rows = [(median(v), k, len(v)) for k, v in at.items() if len(v) >= done * 0.5]
    prev = 0.0
    print(f"{'milestone':<40} {'at us':>8} {'step us':>8} {'seen':>5}")
    for med, k, cnt in sorted(rows):
        print(f"{k:<40} {med:>8.1f} {med - prev:>8.1f} {cnt:>5}")
        prev = med
    if example:
        print("\nOne ping in full (label, us since send(), detail: bytes of the datagram "
              "or of the message):")
        for label, t, x in example:
            print(f"  {t:>8.1f}  {label:<36} {x}")


def goodput(args: argparse.Namespace) -> None:
    size = args.size_mib * MiB
    with worker_pair(mp.get_context("spawn"), partial(run_node, ProfiledNode), "prof") as (a, b):
        if args.pings:
            c0 = a.call("cpu") + b.call("cpu")
            rtts, _, _ = a.call("ttping", "plain", b.info["plain"], args.pings, 64, 60.0, timeout=90)
            c1 = a.call("cpu") + b.call("cpu")
            print(f"{len(rtts)} PING/PONG under cProfile: median one-way "
                  f"{median(rtts) * 5e5:.0f} us; CPU A+B per one-way "
                  f"{(c1 - c0) / (2 * len(rtts)) * 1e6:.0f} us")
        else:
            ttnet_goodput(a, b, "plain", MiB)
            res = [ttnet_goodput(a, b, "plain", size) for _ in range(args.reps)]
            print("goodput under cProfile (slower than unprofiled): "
                  + ", ".join(f"{r['MBps']:.1f} MB/s" for r in res))
        print("\n===== sender (A) I/O + dispatcher threads =====")
        print(a.call("profile_dump", args.limit))
        print("\n===== receiver (B) I/O + dispatcher threads =====")
        print(b.call("profile_dump", args.limit))


def auth(args: argparse.Namespace) -> None:
    size = args.size_mib * MiB
    with worker_pair(mp.get_context("spawn"), partial(run_node, AuthTimedNode), "prof") as (a, b):
        ttnet_goodput(a, b, "auth", MiB)
        a.call("auth_times")
        b.call("auth_times")
        for _ in range(args.reps):
            p = ttnet_goodput(a, b, "plain", size)
            q = ttnet_goodput(a, b, "auth", size)
            ta, tb = a.call("auth_times"), b.call("auth_times")
            print(f"plain {p['seconds'] * 1e3:6.1f} ms  auth {q['seconds'] * 1e3:6.1f} ms  "
                  f"(+{(q['seconds'] - p['seconds']) * 1e3:5.1f});  "
                  + "  ".join(f"{m} {dt * 1e3:.1f} ms in {th}" for m, dt, th in ta + tb))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.diagnose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--pings", type=int, default=200)
    p = sub.add_parser("goodput")
    p.add_argument("--size-mib", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--pings", type=int, default=0,
                   help="profile this many 64 B PING/PONGs instead of bulk transfers")
    p = sub.add_parser("auth")
    p.add_argument("--size-mib", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        {"latency": latency, "goodput": goodput, "auth": auth}[args.what](args)
    except BenchError as exc:
        print(f"profile could not run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
