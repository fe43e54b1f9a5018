#!/usr/bin/env python3
"""Where does ttnet's time go? Diagnostics behind the numbers of run.py.

    python benchmarks/diagnose.py latency [--pings 200]   # step-by-step timeline of a PING/PONG
    python benchmarks/diagnose.py goodput [--size-mib 10] # cProfile of the I/O threads
    python benchmarks/diagnose.py goodput --pings 1000    # ... during PING/PONGs instead
    python benchmarks/diagnose.py auth                    # seal/open cost in a transfer

Same two-process setup as run.py (sender A, receiver B, loopback). The
worker processes patch ttnet *at run time* (wrappers around a few methods,
nothing in ttnet/ is edited) to stamp ``time.monotonic_ns()`` -- one clock
for both processes on Linux -- so a single message can be followed across
both processes and their threads.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import workers  # noqa: E402
from benchmarks.run import MiB, BenchError, Worker  # noqa: E402

_KIND = {0: "REQ", 1: "DATA", 2: "ACK"}


# ------------------------------------------------------------ in the worker
def _install_trace(trace: list) -> None:
    """Stamp the steps of a message's life into ``trace``."""
    import selectors

    import ttnet.engine as engine_mod
    import ttnet.udp as udp_mod
    now = time.monotonic_ns

    def thread_tag() -> str:
        name = threading.current_thread().name
        return "io" if name.startswith("ttnet-io") else "cb" if name.startswith("ttnet-cb") else "app"

    sel_cls = selectors.DefaultSelector
    orig_select = sel_cls.select

    def select(self, timeout=None):
        t0 = now()
        ev = orig_select(self, timeout)
        if ev:
            trace.append((now(), "io", "wake", (now() - t0) // 1000))
        return ev
    sel_cls.select = select

    E = engine_mod.Engine
    orig_rx, orig_tx, orig_pop = E.datagram_received, E.datagrams_to_send, E.pop_events

    def datagram_received(self, data, address, t):
        trace.append((now(), "io", "rx " + _KIND.get(data[0], "?"), len(data)))
        return orig_rx(self, data, address, t)

    def datagrams_to_send(self, t, limit=1 << 30):
        out = orig_tx(self, t, limit)
        if out:
            kinds = collections.Counter(_KIND.get(d[0], "?") for d, _ in out)
            trace.append((now(), "io", "tx " + "+".join(sorted(kinds)), len(out)))
        return out

    def pop_events(self):
        ev = orig_pop(self)
        if ev:
            trace.append((now(), "io", "events " + "+".join(type(e).__name__ for e in ev), 0))
        return ev
    E.datagram_received, E.datagrams_to_send, E.pop_events = datagram_received, datagrams_to_send, pop_events

    U = udp_mod.TTNetworkInterfaceUDP
    orig_send = U.send

    def send(self, message, *a, **k):
        trace.append((now(), thread_tag(), "send()", len(message.payload)))
        h = orig_send(self, message, *a, **k)
        trace.append((now(), thread_tag(), "send() returned", 0))
        return h
    U.send = send


class TracedNode(workers.Node):
    def __init__(self, conn: Any) -> None:
        self.trace: list = []
        _install_trace(self.trace)
        super().__init__(conn)
        for name in ("plain", "auth"):
            self._wrap_receiver(name)

    def _wrap_receiver(self, name: str) -> None:
        iface = self.ifaces[name]
        inner = iface.receiver_function
        trace = self.trace

        def receiver(msg: Any) -> None:
            trace.append((time.monotonic_ns(), "cb", "receiver_fn " + bytes(msg.payload[:4]).decode("latin1"), 0))
            inner(msg)
        iface.receiver_function = receiver

    def cmd_trace(self, clear: bool = True) -> list:
        t = list(self.trace)
        if clear:
            self.trace.clear()
        return t


def traced_main(conn: Any) -> None:
    node = TracedNode(conn)
    try:
        node.serve(node.hello())
    finally:
        node.close()


class ProfiledNode(workers.Node):
    """cProfile every ttnet I/O and dispatcher thread of this process."""

    def __init__(self, conn: Any) -> None:
        import ttnet.udp as udp_mod
        self.profiles: list[cProfile.Profile] = []
        U = udp_mod.TTNetworkInterfaceUDP
        profiles = self.profiles
        for meth in ("_io_loop", "_dispatch_loop"):
            orig = getattr(U, meth)

            def wrapped(self_, _orig=orig):
                p = cProfile.Profile()
                profiles.append(p)
                p.enable()
                try:
                    _orig(self_)
                finally:
                    p.disable()
            setattr(U, meth, wrapped)
        super().__init__(conn)

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
        st.sort_stats("tottime").print_stats(limit)
        return out.getvalue()


def profiled_main(conn: Any) -> None:
    node = ProfiledNode(conn)
    try:
        node.serve(node.hello())
    finally:
        node.close()


class AuthTimedNode(workers.Node):
    """Times Authenticator.seal / .open inside a real transfer."""

    def __init__(self, conn: Any) -> None:
        import ttnet.auth as auth_mod
        self.auth_times: list = []
        A = auth_mod.Authenticator
        times = self.auth_times
        for meth in ("seal", "open"):
            orig = getattr(A, meth)

            def wrapped(self_, *a, _orig=orig, _m=meth, **k):
                t0 = time.perf_counter()
                r = _orig(self_, *a, **k)
                times.append((_m, time.perf_counter() - t0, threading.current_thread().name))
                return r
            setattr(A, meth, wrapped)
        super().__init__(conn)

    def cmd_auth_times(self) -> list:
        t = list(self.auth_times)
        self.auth_times.clear()
        return t


def auth_main(conn: Any) -> None:
    node = AuthTimedNode(conn)
    try:
        node.serve(node.hello())
    finally:
        node.close()


# ---------------------------------------------------------------- analyses
def latency(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ws: list[Worker] = []
    try:
        a = Worker(ctx, traced_main, "prof-A")
        ws.append(a)
        b = Worker(ctx, traced_main, "prof-B")
        ws.append(b)
        a.call("ttping", "plain", b.info["plain"], 50, 64, 20.0)
        a.call("trace")
        b.call("trace")
        rtts, lost, _ = a.call("ttping", "plain", b.info["plain"], args.pings, 64, 60.0)
        ta = [(t, "A", th, ev, x) for t, th, ev, x in a.call("trace")]
        tb = [(t, "B", th, ev, x) for t, th, ev, x in b.call("trace")]
    finally:
        for w in ws:
            w.stop()
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
          f"{statistics.median(rtts) * 1e6:.0f} us -> one-way {statistics.median(rtts) * 5e5:.0f} us\n")
    print("Milestones of one PING -> PONG round trip (A = PING sender, B = echo; io = I/O "
          "thread, cb = dispatcher thread, app = caller), median time since A's send():")
    rows = [(statistics.median(v), k, len(v)) for k, v in at.items() if len(v) >= done * 0.5]
    prev = 0.0
    print(f"{'milestone':<40} {'at us':>8} {'step us':>8} {'seen':>5}")
    for med, k, cnt in sorted(rows):
        print(f"{k:<40} {med:>8.1f} {med - prev:>8.1f} {cnt:>5}")
        prev = med
    if example:
        print("\nOne ping in full (label, us since send(), detail: bytes / datagrams / "
              "us blocked in select):")
        for label, t, x in example:
            print(f"  {t:>8.1f}  {label:<36} {x}")


def goodput(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ws: list[Worker] = []
    size = args.size_mib * MiB
    try:
        a = Worker(ctx, profiled_main, "prof-A")
        ws.append(a)
        b = Worker(ctx, profiled_main, "prof-B")
        ws.append(b)
        from benchmarks.run import ttnet_goodput
        if args.pings:
            c0 = a.call("cpu") + b.call("cpu")
            rtts, _, _ = a.call("ttping", "plain", b.info["plain"], args.pings, 64, 60.0, timeout=90)
            c1 = a.call("cpu") + b.call("cpu")
            print(f"{len(rtts)} PING/PONG under cProfile: median one-way "
                  f"{statistics.median(rtts) * 5e5:.0f} us; CPU A+B per one-way "
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
    finally:
        for w in ws:
            w.stop()


def auth(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ws: list[Worker] = []
    size = args.size_mib * MiB
    from benchmarks.run import ttnet_goodput
    try:
        a = Worker(ctx, auth_main, "prof-A")
        ws.append(a)
        b = Worker(ctx, auth_main, "prof-B")
        ws.append(b)
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
    finally:
        for w in ws:
            w.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
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
    args = ap.parse_args()
    try:
        {"latency": latency, "goodput": goodput, "auth": auth}[args.what](args)
    except BenchError as exc:
        print(f"profile could not run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
