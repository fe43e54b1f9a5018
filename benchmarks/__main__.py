"""ttnet benchmarks (``make bench``): goodput, latency, auth overhead, memory.

Every target is a ratio against a plain-Python UDP baseline measured in the
same run, interleaved with the ttnet measurements, so a busy machine slows
both sides alike. See docs/benchmarks.md for what each number means.

    python -m benchmarks [--reps 15] [--pings 1500] [--json out.json] [--plain]
    python -m benchmarks --report out.json      # print a saved result again

Exit status is 0 whether or not a target is met (this is a report); it is
non-zero only if the benchmark itself could not run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from typing import Any

from .harness import (MiB, BenchError, Worker, diff_counters, log, snmp_delta, udp_snmp,
                      worker_pair)
from .nodes import node_main, run_memory
from .others import run_others
from .phases import (GOODPUT_SIZE, MEMORY_SIZE, PING_SIZE, run_goodput, run_latency,
                     warm_up)
from .report import judge, print_report
from .simbench import run_sim_speed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
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
    ap.add_argument("--skip-sim", action="store_true", help="skip the simulator speed rows")
    ap.add_argument("--skip-others", action="store_true",
                    help="skip the optional pyzmq / aioquic references")
    ap.add_argument("--skip-split", action="store_true",
                    help="skip the latency run with A and B pinned to different CPUs")
    ap.add_argument("--report", metavar="PATH",
                    help="only print the tables of a saved --json result")
    args = ap.parse_args(argv)
    if not args.report and (args.reps < 1 or args.pings < args.rounds or args.rounds < 1):
        ap.error("need --reps >= 1 and --pings >= --rounds >= 1")
    return args


def measure(args: argparse.Namespace, ctx: Any, a: Worker, b: Worker,
            result: dict[str, Any]) -> dict[str, Any]:
    """Every phase, into ``result``; returns the counter deltas per phase."""
    counters: dict[str, Any] = {}

    def snap() -> tuple[dict, dict, dict]:
        return a.call("counters"), b.call("counters"), udp_snmp()

    def delta(before: tuple[dict, dict, dict], ifaces: tuple[str, ...]) -> dict[str, Any]:
        after = a.call("counters"), b.call("counters")
        return {"sender": {i: diff_counters(before[0][i], after[0][i]) for i in ifaces},
                "receiver": {i: diff_counters(before[1][i], after[1][i]) for i in ifaces},
                "kernel_udp": snmp_delta(before[2])}

    log("warm-up")
    warm_up(a, b)

    log(f"goodput: {args.reps} x (UDP blast, ttnet, ttnet+auth, floor) of "
        f"{GOODPUT_SIZE // MiB} MiB, order rotated")
    s = snap()
    result["goodput"] = run_goodput(a, b, args.reps, GOODPUT_SIZE)
    counters["goodput"] = delta(s, ("plain", "auth"))

    log(f"latency: {args.pings} x (UDP ping-pong, ttnet, floor, ttnet fast start, the same "
        f"with inline callbacks) in {args.rounds} interleaved rounds")
    s = snap()
    result["latency"] = run_latency(a, b, args.pings, args.rounds)
    counters["latency"] = delta(s, ("plain", "fast", "inline"))

    if not args.skip_split and (os.cpu_count() or 1) >= 2:
        log("latency again with A pinned to CPU 0 and B to CPU 1")
        a.call("pin", [0])
        b.call("pin", [1])
        try:
            s = snap()
            result["latency_split"] = run_latency(a, b, args.pings // 2,
                                                  max(1, args.rounds // 2))
            counters["latency_split"] = delta(s, ("plain", "fast", "inline"))
        finally:
            a.call("pin", None)
            b.call("pin", None)

    if not args.skip_others:
        log("optional references (pyzmq, aioquic) where installed")
        result["others"] = run_others(a, b, args.pings, GOODPUT_SIZE, max(1, args.reps // 3),
                                      PING_SIZE)

    if args.skip_sim:
        result["sim_speed"] = {}
        result["sim_speed_skipped"] = "--skip-sim"
    else:
        log("simulator speed on every shipped topology")
        try:
            result["sim_speed"] = run_sim_speed()
        except ImportError as exc:
            log(f"simulator speed not measured: {exc}")
            result["sim_speed"] = {}
            result["sim_speed_skipped"] = f"cannot import the simulator ({exc})"

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
    return counters


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Every phase; the result, or None if the benchmark could not run."""
    ctx = mp.get_context("spawn")
    result: dict[str, Any] = {"meta": {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "reps": args.reps, "pings": args.pings,
        "rounds": args.rounds, "plain": args.plain, "loadavg_before": os.getloadavg(),
        "goodput_size": GOODPUT_SIZE, "memory_size": MEMORY_SIZE, "ping_size": PING_SIZE}}
    try:
        with worker_pair(ctx, node_main, "bench") as (a, b):
            result["counters"] = measure(args, ctx, a, b, result)
    except BenchError as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        try:
            with open(args.report) as f:
                saved = json.load(f)
            saved["meta"]["plain"] = args.plain
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: cannot read a saved benchmark result from {args.report}: "
                  f"{type(exc).__name__}: {exc}. Fix: give a file written by --json",
                  file=sys.stderr)
            return 2
        print_report(saved)
        return 0
    started = time.monotonic()
    result = run(args)
    if result is None:
        return 2
    judge(result)
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
