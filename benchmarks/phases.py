"""The benchmark's measurement phases: ttnet and its references, interleaved.

Owns the plan of each phase -- what runs, how often, in which order -- so
that a busy machine slows ttnet and the references it is divided by alike:

- goodput: each repetition runs the UDP blast, ttnet, ttnet with
  authentication and the protocol floor back to back, order rotated;
- latency: rounds alternating the UDP ping-pong, ttnet PING/PONG and the
  floor's PING/PONG, plus the CPU time and context switches of both
  processes per exchange.

Must never: time anything itself (the workers do), or print results (that
is :mod:`benchmarks.report`).
"""
from __future__ import annotations

from typing import Any, Callable

from .baselines import baseline_goodput, floor_goodput, floor_pingpong, udp_pingpong
from .harness import MiB, Worker, log, median, pct
from .nodes import ttnet_goodput, ttnet_pingpong

GOODPUT_SIZE = 10 * MiB
MEMORY_SIZE = 50 * MiB
PING_SIZE = 64


def warm_up(a: Worker, b: Worker) -> None:
    """One small transfer of every kind, discarded."""
    for kind in ("plain", "auth"):
        ttnet_goodput(a, b, kind, MiB)
    baseline_goodput(a, b, MiB)
    floor_goodput(a, b, MiB)


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
        return sorted(x["MBps"] / y["MBps"] for x, y in zip(runs[num], runs[den], strict=True))
    out["paired"] = {"goodput": paired("plain", "baseline"), "auth": paired("auth", "plain"),
                     "floor": paired("floor", "baseline")}
    return out


def run_latency(a: Worker, b: Worker, pings: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of: UDP ping-pong (baseline), ttnet PING/PONG, and
    the protocol floor's PING/PONG. Also accounts the CPU time and context
    switches both processes spend per exchange."""
    per = max(1, pings // rounds)
    direct: list[float] = []      # ttnet send() in A -> receiver function in B
    # the same with fast start on both ends ("fast"), and with fast start
    # and the receiver function run on the I/O thread ("inline")
    direct_fast: dict[str, list[float]] = {"fast": [], "inline": []}

    run: dict[str, Callable[[int], tuple[list[float], int]]] = {
        "udp": lambda n: udp_pingpong(a, b, n, PING_SIZE),
        "tt": lambda n: ttnet_pingpong(a, b, n, PING_SIZE, direct),
        "floor": lambda n: floor_pingpong(a, b, n, PING_SIZE),
        "fast": lambda n: ttnet_pingpong(a, b, n, PING_SIZE, direct_fast["fast"], "fast"),
        "inline": lambda n: ttnet_pingpong(a, b, n, PING_SIZE, direct_fast["inline"],
                                           "inline"),
    }
    kinds = list(run)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    lost = dict.fromkeys(kinds, 0)
    cpu = dict.fromkeys(kinds, 0.0)
    csw = dict.fromkeys(kinds, 0)
    for fn in run.values():                      # warm-up, discarded
        fn(30)
    direct.clear()
    for xs in direct_fast.values():
        xs.clear()
    for r in range(rounds):
        k = r % len(kinds)
        for kind in kinds[k:] + kinds[:k]:
            c0, s0 = a.call("cpu") + b.call("cpu"), a.call("ctxsw") + b.call("ctxsw")
            x, n_lost = run[kind](per)
            cpu[kind] += a.call("cpu") + b.call("cpu") - c0
            csw[kind] += a.call("ctxsw") + b.call("ctxsw") - s0
            samples[kind] += x
            lost[kind] += n_lost
    tt, base, floor = samples["tt"], samples["udp"], samples["floor"]
    one_way = [x / 2 for x in tt]

    def per_rtt(kind: str, d: dict[str, Any]) -> float:
        return d[kind] / max(1, len(samples[kind]))
    return {
        "ttnet_rtt_us": [x * 1e6 for x in tt], "baseline_rtt_us": [x * 1e6 for x in base],
        "floor_rtt_us": [x * 1e6 for x in floor],
        "ttnet_oneway_us": [x * 1e6 for x in direct],
        # the target's number: send() in A to the receiver function in B
        "ttnet_median_us": median(direct) * 1e6,
        "ttnet_p90_us": pct(direct, 90) * 1e6,
        # cross-check: half the PING/PONG round trip
        "ttnet_half_rtt_median_us": median(one_way) * 1e6,
        "ttnet_rtt_median_us": median(tt) * 1e6,
        "baseline_median_us": median(base) * 1e6,
        "baseline_p90_us": pct(base, 90) * 1e6,
        "floor_median_us": median(floor) * 1e6 / 2,
        # fast start (ttnet's extension, both ends ttnet): send() -> receiver
        # fn, with callbacks on the dispatcher thread ("fast_") and on the
        # I/O thread ("inline_", inline_callbacks=True)
        **{f"{k}_{what}": value for k, xs in direct_fast.items() for what, value in (
            ("median_us", median(xs) * 1e6), ("p90_us", pct(xs, 90) * 1e6),
            ("rtt_median_us", median(samples[k]) * 1e6),
            ("oneway_us", [x * 1e6 for x in xs]), ("samples", len(xs)),
            ("timeouts", lost[k]))},
        "ttnet_samples": len(direct), "baseline_samples": len(base),
        "floor_samples": len(floor),
        "ttnet_timeouts": lost["tt"], "baseline_timeouts": lost["udp"],
        "floor_timeouts": lost["floor"],
        # CPU (user+sys, both processes) and context switches per round trip
        "cpu_us_per_rtt": {k: per_rtt(k, cpu) * 1e6 for k in kinds},
        "ctxsw_per_rtt": {k: per_rtt(k, csw) for k in kinds},
    }
