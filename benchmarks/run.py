#!/usr/bin/env python3
"""ttnet benchmarks (``make bench``): goodput, latency, auth overhead, memory.

Every target is a ratio against a plain-Python UDP baseline measured in the
same run, interleaved with the ttnet measurements, so a busy machine slows
both sides alike. See docs/benchmarks.md for what each number means.

    python benchmarks/run.py [--reps 15] [--pings 1500] [--json out.json] [--plain]

Exit status is 0 whether or not a target is met (this is a report); it is
non-zero only if the benchmark itself could not run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import workers  # noqa: E402

MiB = 1024 * 1024
GOODPUT_SIZE = 10 * MiB
MEMORY_SIZE = 50 * MiB
PING_SIZE = 64

TARGET_GOODPUT = 0.5    # ttnet goodput / baseline goodput >= this
TARGET_LATENCY = 2.0    # ttnet median delivery latency / baseline median RTT <= this
TARGET_AUTH = 0.8       # goodput with auth / goodput without >= this

#: Sender-side counters that explain goodput and latency numbers.
SENDER_COUNTERS = ("data_sent", "data_retransmitted", "req_retransmitted", "rto_expired",
                   "fast_retransmit", "ack_duplicate", "send_errors")
RECEIVER_COUNTERS = ("data_received", "data_duplicate", "data_duplicate_completed",
                     "dropped_out_of_window",
                     "acks_sent", "dropped_crc")


class BenchError(RuntimeError):
    pass


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

    def start(self, cmd: str, *args: Any, timeout: float = 10.0) -> None:
        """Begin a two-phase command; returns once the worker is listening."""
        self.conn.send((cmd, args))
        self._reply("started", timeout)

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


# ------------------------------------------------------------------ helpers
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def diff_counters(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0)
            for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------- benchmarks
def ttnet_goodput(a: Worker, b: Worker, iface: str, size: int) -> dict[str, Any]:
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


def baseline_goodput(a: Worker, b: Worker, size: int) -> dict[str, Any]:
    b.start("blast_recv", size, 10.0, 0.25)
    sent = a.call("blast_send", b.info["raw"], size, workers.DGRAM, timeout=30.0)
    got = b.finish(timeout=30.0)
    if not got["bytes"]:
        raise BenchError("baseline blast: nothing arrived")
    dt = got["t_last"] - sent["t_first_send"]
    return {"seconds": dt, "MBps": got["bytes"] / dt / 1e6,
            "loss": 1.0 - got["bytes"] / size,
            "send_seconds": sent["t_last_send"] - sent["t_first_send"],
            "datagrams_sent": sent["datagrams"], "datagrams_received": got["datagrams"]}


def floor_goodput(a: Worker, b: Worker, size: int) -> dict[str, Any]:
    b.start("floor_recv", 20.0)
    t0 = a.call("floor_send", b.info["raw"], size, 20.0, timeout=40.0)
    got = b.finish(timeout=40.0)
    if t0 is None or got is None:
        raise BenchError("protocol floor: transfer timed out (a datagram was lost?)")
    dt = got[0] - t0
    return {"seconds": dt, "MBps": size / dt / 1e6}


def run_goodput(a: Worker, b: Worker, reps: int, size: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "plain": [], "auth": [],
                                             "floor": []}
    order = ["baseline", "plain", "auth", "floor"]
    for rep in range(reps):
        # Rotate the order so no variant always runs first or last.
        for kind in order[rep % 4:] + order[:rep % 4]:
            if kind == "baseline":
                runs[kind].append(baseline_goodput(a, b, size))
            elif kind == "floor":
                runs[kind].append(floor_goodput(a, b, size))
            else:
                runs[kind].append(ttnet_goodput(a, b, kind, size))
        log(f"goodput rep {rep + 1}/{reps}: "
            + ", ".join(f"{k} {runs[k][-1]['MBps']:.1f} MB/s" for k in order))
    out: dict[str, Any] = {k: {"runs": v, "median_MBps": median([r["MBps"] for r in v])}
                           for k, v in runs.items()}
    # Ratios within each repetition (the variants ran back to back, under
    # about the same load): their spread shows how much to trust a ratio.
    def paired(num: str, den: str) -> list[float]:
        return sorted(x["MBps"] / y["MBps"] for x, y in zip(runs[num], runs[den]))
    out["paired"] = {"goodput": paired("plain", "baseline"), "auth": paired("auth", "plain"),
                     "floor": paired("floor", "baseline")}
    return out


def run_latency(a: Worker, b: Worker, pings: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of: UDP ping-pong (baseline), ttnet PING/PONG, and
    the protocol floor's PING/PONG. Also accounts the CPU time and context
    switches both processes spend per exchange."""
    per = max(1, pings // rounds)
    samples: dict[str, list[float]] = {"udp": [], "tt": [], "floor": []}
    lost = {"udp": 0, "tt": 0, "floor": 0}
    cpu = {"udp": 0.0, "tt": 0.0, "floor": 0.0}
    csw = {"udp": 0, "tt": 0, "floor": 0}

    def udp(n: int) -> tuple[list[float], int]:
        b.start("udp_echo", n + 10, 30.0)
        res = a.call("udp_ping", b.info["raw"], n, PING_SIZE, 20.0, timeout=40.0)
        b.finish(timeout=10.0)
        return res

    direct: list[float] = []

    def ttp(n: int) -> tuple[list[float], int]:
        b.call("ping_stamps")
        rtts, n_lost, sends = a.call("ttping", "plain", b.info["plain"], n, PING_SIZE, 30.0,
                                     timeout=60.0)
        got = dict(b.call("ping_stamps"))
        # send() in A to the receiver function in B: one CLOCK_MONOTONIC.
        direct.extend(got[i] - t0 for i, t0 in sends if i in got)
        return rtts, n_lost

    def flp(n: int) -> tuple[list[float], int]:
        b.start("floor_echo", n, 5.0)
        res = a.call("floor_ping", b.info["raw"], n, PING_SIZE, 20.0, timeout=40.0)
        b.finish(timeout=10.0)
        return res

    run = {"udp": udp, "tt": ttp, "floor": flp}
    for kind, fn in run.items():                 # warm-up, discarded
        fn(30)
    direct.clear()
    kinds = list(run)
    for r in range(rounds):
        for kind in kinds[r % 3:] + kinds[:r % 3]:
            c0, s0 = a.call("cpu") + b.call("cpu"), a.call("ctxsw") + b.call("ctxsw")
            x, n_lost = run[kind](per)
            cpu[kind] += a.call("cpu") + b.call("cpu") - c0
            csw[kind] += a.call("ctxsw") + b.call("ctxsw") - s0
            samples[kind] += x
            lost[kind] += n_lost
    tt, base, floor = samples["tt"], samples["udp"], samples["floor"]
    one_way = [x / 2 for x in tt]

    def per_rtt(kind: str, d: dict) -> float:
        return d[kind] / max(1, len(samples[kind]))
    return {
        "ttnet_rtt_us": [x * 1e6 for x in tt], "baseline_rtt_us": [x * 1e6 for x in base],
        "floor_rtt_us": [x * 1e6 for x in floor],
        "ttnet_oneway_us": [x * 1e6 for x in direct],
        # the target's number: send() in A to the receiver function in B
        "ttnet_median_us": median(direct) * 1e6,
        "ttnet_p90_us": pct(direct, 0.9) * 1e6,
        # cross-check: half the PING/PONG round trip
        "ttnet_half_rtt_median_us": median(one_way) * 1e6,
        "ttnet_rtt_median_us": median(tt) * 1e6,
        "baseline_median_us": median(base) * 1e6,
        "baseline_p90_us": pct(base, 0.9) * 1e6,
        "floor_median_us": median(floor) * 1e6 / 2,
        "ttnet_samples": len(direct), "baseline_samples": len(base),
        "floor_samples": len(floor),
        "ttnet_timeouts": lost["tt"], "baseline_timeouts": lost["udp"],
        "floor_timeouts": lost["floor"],
        # CPU (user+sys, both processes) and context switches per round trip
        "cpu_us_per_rtt": {k: per_rtt(k, cpu) * 1e6 for k in kinds},
        "ctxsw_per_rtt": {k: per_rtt(k, csw) for k in kinds},
    }


def run_memory(ctx: Any, a: Worker, size: int) -> dict[str, Any]:
    m = Worker(ctx, workers.memory_main, "bench-memory")
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


# ------------------------------------------------------------------ report
TARGET_SIM_SPEEDUP = 100.0


def run_sim_speed() -> dict[str, Any]:
    """Simulated seconds per wall second for every shipped topology (one
    replication each, calibrated host cost if present)."""
    from testbed.calibrate import load_host_cost
    from testbed.simulate import simulate_events
    from testbed.topology import list_topologies, load_topology
    topo_dir = Path(__file__).resolve().parent.parent / "topologies"
    cal = load_host_cost(Path("results"))
    out = {}
    for name in list_topologies(topo_dir):
        topo = load_topology(topo_dir / f"{name}.yaml")
        t0 = time.perf_counter()
        events, _ = simulate_events(topo, cal["host_cost_s"],
                                    hop_latency_s=cal.get("hop_latency_s", 0.0))
        wall = time.perf_counter() - t0
        span = max(e["t"] for e in events)
        out[name] = {"wall_s": wall, "simulated_s": span, "speedup": span / wall,
                     "events": len(events)}
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    g, lat, mem = r["goodput"], r["latency"], r["memory"]
    base_loss = median([x["loss"] for x in g["baseline"]["runs"]])
    rows = [
        ("Goodput, 10 MiB ensure=True",
         f"{g['plain']['median_MBps']:.1f} MB/s",
         f"{g['baseline']['median_MBps']:.1f} MB/s (UDP blast; loss {base_loss:.1%})",
         f"{r['ratios']['goodput']:.2f}x", f">= {TARGET_GOODPUT}x",
         verdict(r["pass"]["goodput"])),
        ("Latency, 64 B ensure=True",
         f"{lat['ttnet_median_us']:.0f} us median send()->receiver fn (p90 "
         f"{lat['ttnet_p90_us']:.0f}; RTT/2 {lat['ttnet_half_rtt_median_us']:.0f})",
         f"{lat['baseline_median_us']:.0f} us median UDP ping-pong RTT "
         f"(p90 {lat['baseline_p90_us']:.0f})",
         f"{r['ratios']['latency']:.2f}x", f"<= {TARGET_LATENCY}x",
         verdict(r["pass"]["latency"])),
        ("Auth overhead, 10 MiB goodput",
         f"{g['auth']['median_MBps']:.1f} MB/s (auth on)",
         f"{g['plain']['median_MBps']:.1f} MB/s (auth off)",
         f"{r['ratios']['auth']:.2f}x", f">= {TARGET_AUTH}x", verdict(r["pass"]["auth"])),
    ]
    if not mem.get("skipped"):
        rows.append((
            "Memory, 50 MiB receive",
            f"peak RSS +{mem['rss_growth'] / MiB:.0f} MiB; reserved_bytes peak "
            f"{mem['reserved_peak'] / MiB:.1f} MiB ({mem['MBps']:.0f} MB/s)",
            f"reserved_bytes bound {mem['peer_receive_budget'] / MiB:.0f} MiB/peer, "
            f"{mem['total_receive_budget'] / MiB:.0f} MiB total",
            f"RSS {mem['rss_growth'] / mem['size']:.2f}x msg", "info", "-"))
    rows += [
        ("ref: protocol floor, goodput",
         f"{g['floor']['median_MBps']:.1f} MB/s (minimal Python, 1 thread/side)",
         f"{g['baseline']['median_MBps']:.1f} MB/s (UDP blast)",
         f"{g['floor']['median_MBps'] / g['baseline']['median_MBps']:.2f}x", "info", "-"),
        ("ref: protocol floor, latency",
         f"{lat['floor_median_us']:.0f} us one-way (minimal Python, RTT/2)",
         f"{lat['baseline_median_us']:.0f} us UDP ping-pong RTT",
         f"{lat['floor_median_us'] / lat['baseline_median_us']:.2f}x", "info", "-"),
    ]
    for name, sp in (r.get("sim_speed") or {}).items():
        rows.append((f"Simulator speed, {name}",
                     f"{sp['simulated_s']:.1f} s simulated in {sp['wall_s'] * 1000:.0f} ms",
                     "real time", f"{sp['speedup']:.0f}x", f">= {TARGET_SIM_SPEEDUP:.0f}x",
                     verdict(sp["speedup"] >= TARGET_SIM_SPEEDUP)))
    split = r.get("latency_split")
    if split:
        rows.append((
            "ref: latency, A and B pinned to different CPUs",
            f"ttnet {split['ttnet_median_us']:.0f} us send()->receiver fn; floor "
            f"{split['floor_median_us']:.0f} us",
            f"{split['baseline_median_us']:.0f} us UDP ping-pong RTT",
            f"{split['ttnet_median_us'] / split['baseline_median_us']:.2f}x", "info", "-"))
    return rows


def explain_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for phase in ("goodput", "latency", "memory"):
        c = r["counters"].get(phase)
        if not c:
            continue
        for side, names in (("sender", SENDER_COUNTERS), ("receiver", RECEIVER_COUNTERS)):
            for iface, counts in c[side].items():
                rows.append((phase, f"ttnet {side} ({iface})",
                             ", ".join(f"{n}={counts.get(n, 0)}" for n in names)))
        k = c.get("kernel_udp")
        if k is not None:
            rows.append((phase, "kernel UDP (host-wide)",
                         ", ".join(f"{n}={v}" for n, v in k.items())))
    lat = r["latency"]
    rows.append(("latency", "CPU per round trip (A+B)", ", ".join(
        f"{LABEL[k]} {v:.0f} us" for k, v in lat["cpu_us_per_rtt"].items())))
    rows.append(("latency", "context switches per RTT", ", ".join(
        f"{LABEL[k]} {v:.1f}" for k, v in lat["ctxsw_per_rtt"].items())))
    g = r["goodput"]
    for k, what in (("goodput", "ttnet / UDP blast"), ("auth", "auth on / off"),
                    ("floor", "floor / UDP blast")):
        xs = g.get("paired", {}).get(k)
        if xs:
            rows.append(("goodput", f"per-rep ratio {what}",
                         f"median {median(xs):.2f}x, quartiles {pct(xs, 0.25):.2f}-"
                         f"{pct(xs, 0.75):.2f}x, range {xs[0]:.2f}-{xs[-1]:.2f}x"))
    for k in ("baseline", "plain", "auth", "floor"):
        rows.append(("goodput", f"runs MB/s: {LABEL[k]}",
                     " ".join(f"{x['MBps']:.1f}" for x in g[k]["runs"])))
    rows.append(("goodput", "UDP blast loss per run",
                 " ".join(f"{x['loss']:.1%}" for x in g["baseline"]["runs"])))
    return rows


LABEL = {"udp": "UDP ping-pong", "tt": "ttnet", "floor": "floor", "baseline": "UDP blast",
         "plain": "ttnet", "auth": "ttnet+auth"}


def print_report(r: dict[str, Any]) -> None:
    headers = ("benchmark", "ttnet", "baseline / reference", "ratio", "target", "result")
    rows = build_rows(r)
    erows = explain_rows(r)
    m = r["meta"]
    title = (f"ttnet benchmarks {m['when']}: Python {m['python']}, {m['cpus']} CPUs, "
             f"goodput reps={m['reps']}, latency samples={m['pings']}, "
             f"load avg {m['loadavg_before'][0]:.2f}")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is not None and not m.get("plain"):
        console = Console(width=max(150, Console().width))
        t = Table(title=title)
        for h in headers:
            t.add_column(h, overflow="fold")
        for row in rows:
            style = {"PASS": "green", "FAIL": "bold red"}.get(row[-1])
            t.add_row(*row[:-1], f"[{style}]{row[-1]}[/]" if style else row[-1])
        console.print(t)
        et = Table(title="what explains the numbers (counters are deltas over each phase)")
        for h in ("phase", "what", "values"):
            et.add_column(h, overflow="fold")
        for row in erows:
            et.add_row(*row)
        console.print(et)
    else:
        print(title)
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
        print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
        print("-+-".join("-" * w for w in widths))
        for row in rows:
            print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
        print("\nwhat explains the numbers (counters are deltas over each phase)")
        for row in erows:
            print(f"  {row[0]:<8} {row[1]:<28} {row[2]}")
    print("verdict: " + ", ".join(f"{k} {verdict(v)}" for k, v in r["pass"].items())
          + f"  (took {m['seconds']:.0f} s)")


# -------------------------------------------------------------------- main
def udp_snmp() -> dict[str, int]:
    """Kernel UDP counters (this network namespace, every process)."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [ln.split() for ln in f if ln.startswith("Udp:")]
        return dict(zip(lines[0][1:], map(int, lines[1][1:])))
    except (OSError, IndexError, ValueError):
        return {}


def snmp_delta(before: dict[str, int]) -> dict[str, int]:
    after = udp_snmp()
    return {k: after[k] - before.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")
            if k in after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15,
                    help="goodput repetitions of each variant (median; default 15)")
    ap.add_argument("--pings", type=int, default=1500,
                    help="latency samples for ttnet and for the UDP baseline (default 1500)")
    ap.add_argument("--rounds", type=int, default=15,
                    help="interleaved latency rounds (default 15)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--plain", action="store_true", help="plain-text tables (no rich)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the 50 MiB run")
    ap.add_argument("--skip-split", action="store_true",
                    help="skip the latency run with A and B pinned to different CPUs")
    ap.add_argument("--report", metavar="PATH",
                    help="only print the tables of a saved --json result")
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        saved["meta"]["plain"] = args.plain
        print_report(saved)
        return 0
    if args.reps < 1 or args.pings < args.rounds or args.rounds < 1:
        ap.error("need --reps >= 1 and --pings >= --rounds >= 1")

    started = time.monotonic()
    ctx = mp.get_context("spawn")
    ws: list[Worker] = []
    result: dict[str, Any] = {"meta": {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "reps": args.reps, "pings": args.pings,
        "rounds": args.rounds, "plain": args.plain, "loadavg_before": os.getloadavg(),
        "goodput_size": GOODPUT_SIZE, "memory_size": MEMORY_SIZE, "ping_size": PING_SIZE}}
    try:
        log("starting sender (A) and receiver (B) processes")
        a = Worker(ctx, workers.node_main, "bench-A")
        ws.append(a)
        b = Worker(ctx, workers.node_main, "bench-B")
        ws.append(b)
        counters: dict[str, Any] = {}

        def snap() -> tuple[dict, dict, dict]:
            return a.call("counters"), b.call("counters"), udp_snmp()

        def delta(before: tuple[dict, dict, dict], ifaces: tuple[str, ...]) -> dict[str, Any]:
            after = a.call("counters"), b.call("counters")
            return {"sender": {i: diff_counters(before[0][i], after[0][i]) for i in ifaces},
                    "receiver": {i: diff_counters(before[1][i], after[1][i]) for i in ifaces},
                    "kernel_udp": snmp_delta(before[2])}

        log("warm-up")
        for kind in ("plain", "auth"):
            ttnet_goodput(a, b, kind, MiB)
        baseline_goodput(a, b, MiB)
        floor_goodput(a, b, MiB)

        log(f"goodput: {args.reps} x (UDP blast, ttnet, ttnet+auth, floor) of "
            f"{GOODPUT_SIZE // MiB} MiB, order rotated")
        s = snap()
        result["goodput"] = run_goodput(a, b, args.reps, GOODPUT_SIZE)
        counters["goodput"] = delta(s, ("plain", "auth"))

        log(f"latency: {args.pings} x (UDP ping-pong, ttnet, floor) in {args.rounds} "
            "interleaved rounds")
        s = snap()
        result["latency"] = run_latency(a, b, args.pings, args.rounds)
        counters["latency"] = delta(s, ("plain",))

        if not args.skip_split and (os.cpu_count() or 1) >= 2:
            log("latency again with A pinned to CPU 0 and B to CPU 1")
            a.call("pin", [0])
            b.call("pin", [1])
            try:
                result["latency_split"] = run_latency(a, b, args.pings // 2,
                                                      max(1, args.rounds // 2))
            finally:
                a.call("pin", None)
                b.call("pin", None)

        log("simulator speed on every shipped topology")
        result["sim_speed"] = run_sim_speed()

        if args.skip_memory:
            result["memory"] = {"skipped": True}
        else:
            log(f"memory: {MEMORY_SIZE // MiB} MiB into a fresh receiver process")
            s = snap()
            result["memory"] = run_memory(ctx, a, MEMORY_SIZE)
            after_a = a.call("counters")
            counters["memory"] = {
                "sender": {"plain": diff_counters(s[0]["plain"], after_a["plain"])},
                "receiver": {"plain": result["memory"]["counters"]},
                "kernel_udp": snmp_delta(s[2])}
        result["counters"] = counters
    except BenchError as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        for w in reversed(ws):
            w.stop()

    g, lat = result["goodput"], result["latency"]
    result["ratios"] = {
        "goodput": g["plain"]["median_MBps"] / g["baseline"]["median_MBps"],
        "latency": lat["ttnet_median_us"] / lat["baseline_median_us"],
        "auth": g["auth"]["median_MBps"] / g["plain"]["median_MBps"],
    }
    result["pass"] = {
        "goodput": result["ratios"]["goodput"] >= TARGET_GOODPUT,
        "latency": result["ratios"]["latency"] <= TARGET_LATENCY,
        "auth": result["ratios"]["auth"] >= TARGET_AUTH,
    }
    result["meta"]["seconds"] = time.monotonic() - started
    result["meta"]["loadavg_after"] = os.getloadavg()
    print_report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
