"""The benchmark's report: targets, ratios, verdicts and the printed tables.

Owns what a result means: the targets (each a ratio of ttnet to a
reference measured in the same run), the ratios and PASS/FAIL computed from
a result (:func:`judge`), and printing it all -- the main table, then the
counters that explain the numbers -- with ``rich`` when it is installed and
not turned off, else as plain text. A saved ``--json`` result prints the
same way.

Must never: measure anything or start a process.
"""
from __future__ import annotations

from typing import Any

from .harness import MiB, median, pct

TARGET_GOODPUT = 0.5    # ttnet goodput / baseline goodput >= this
TARGET_LATENCY = 2.0    # ttnet median delivery latency / baseline median RTT <= this
TARGET_AUTH = 0.8       # goodput with auth / goodput without >= this
TARGET_SIM_SPEEDUP = 100.0
#: Issue 13, target 1: ttnet against the protocol floor measured in the
#: same run (what the wire format costs a minimal Python endpoint).
TARGET_FLOOR_LATENCY = 1.5  # ttnet median send()->receiver fn / floor one-way <= this
TARGET_FLOOR_CPU = 2.0      # ttnet CPU per round trip / floor's <= this
#: Retransmissions allowed in the latency phases: on a lossless loopback
#: (the kernel dropped nothing) every one is spurious.
TARGET_SPURIOUS = 0
#: Issue 13, target 3: 64 B ensure=True with fast start, A and B pinned:
#: send() -> receiver fn / UDP ping-pong round trip <= this. Judged on the
#: fastest configuration a user can pick: fast start with inline_callbacks
#: (the receiver function on the I/O thread); fast start alone is shown too.
TARGET_FAST_START = 1.0

#: Sender-side counters that explain goodput and latency numbers.
SENDER_COUNTERS = ("data_sent", "data_retransmitted", "req_retransmitted", "rto_expired",
                   "fast_retransmit", "ack_start_echo_ignored", "ack_duplicate",
                   "send_errors")
RECEIVER_COUNTERS = ("data_received", "data_duplicate", "data_duplicate_completed",
                     "dropped_out_of_window",
                     "acks_sent", "dropped_crc",
                     # B's own sends (the PONGs of the latency phases)
                     "data_retransmitted", "req_retransmitted", "rto_expired")

LABEL = {"udp": "UDP ping-pong", "tt": "ttnet", "floor": "floor", "baseline": "UDP blast",
         "plain": "ttnet", "auth": "ttnet+auth", "fast": "ttnet fast start",
         "inline": "ttnet fast start + inline"}


def judge(result: dict[str, Any]) -> None:
    """Add ``ratios`` and ``pass`` to a result with goodput and latency."""
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
    ratios, ok = result["ratios"], result["pass"]
    if lat.get("floor_median_us"):
        ratios["latency_floor"] = lat["ttnet_median_us"] / lat["floor_median_us"]
        ok["latency_floor"] = ratios["latency_floor"] <= TARGET_FLOOR_LATENCY
        cpu = lat.get("cpu_us_per_rtt", {})
        if cpu.get("floor"):
            ratios["cpu_floor"] = cpu["tt"] / cpu["floor"]
            ok["cpu_floor"] = ratios["cpu_floor"] <= TARGET_FLOOR_CPU
    split = result.get("latency_split")
    if split and split.get("floor_median_us"):
        ratios["latency_floor_pinned"] = split["ttnet_median_us"] / split["floor_median_us"]
        ok["latency_floor_pinned"] = ratios["latency_floor_pinned"] <= TARGET_FLOOR_LATENCY
    if split and split.get("inline_median_us"):
        ratios["fast_start_pinned"] = split["inline_median_us"] / split["baseline_median_us"]
        ok["fast_start_pinned"] = ratios["fast_start_pinned"] <= TARGET_FAST_START
    quic = (result.get("others") or {}).get("aioquic") or {}
    if "latency" in quic:
        # issue 13, target 5: ttnet beats a pure-Python QUIC stream on both
        ratios["vs_aioquic_latency"] = (lat["ttnet_rtt_median_us"]
                                        / quic["latency"]["median_rtt_us"])
        ok["vs_aioquic_latency"] = ratios["vs_aioquic_latency"] < 1.0
        ratios["vs_aioquic_goodput"] = (g["plain"]["median_MBps"]
                                        / quic["goodput"]["median_MBps"])
        ok["vs_aioquic_goodput"] = ratios["vs_aioquic_goodput"] > 1.0
    spurious = retransmissions(result)
    if spurious is not None:
        result["spurious_retransmissions"] = spurious
        ok["no_spurious_retx"] = spurious["retransmitted"] <= TARGET_SPURIOUS


def retransmissions(result: dict[str, Any]) -> dict[str, Any] | None:
    """DATA and REQ retransmissions of both ttnet ends over the latency
    phases (same-CPU and pinned), with what was sent and what the kernel
    dropped; None for a result saved without these counters."""
    counters = result.get("counters") or {}
    phases = [counters[p] for p in ("latency", "latency_split") if p in counters]
    if not phases:
        return None
    out = {"retransmitted": 0, "sent": 0, "kernel_drops": 0, "rto_expired": 0,
           "ack_start_echo_ignored": 0}
    for c in phases:
        for side in ("sender", "receiver"):
            for counts in c[side].values():
                out["retransmitted"] += (counts.get("data_retransmitted", 0)
                                         + counts.get("req_retransmitted", 0))
                out["sent"] += counts.get("data_sent", 0) + counts.get("req_sent", 0)
                out["rto_expired"] += counts.get("rto_expired", 0)
                out["ack_start_echo_ignored"] += counts.get("ack_start_echo_ignored", 0)
        out["kernel_drops"] += sum((c.get("kernel_udp") or {}).values())
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    g, lat, mem = r["goodput"], r["latency"], r["memory"]
    base_loss = median([x["loss"] for x in g["baseline"]["runs"]])
    rows: list[tuple[str, ...]] = [
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
    if r.get("sim_speed_skipped"):
        rows.append(("Simulator speed", f"not measured: {r['sim_speed_skipped']}",
                     "real time", "-", f">= {TARGET_SIM_SPEEDUP:.0f}x", "-"))
    split = r.get("latency_split")
    if split:
        rows.append((
            "ref: latency, A and B pinned to different CPUs",
            f"ttnet {split['ttnet_median_us']:.0f} us send()->receiver fn; floor "
            f"{split['floor_median_us']:.0f} us",
            f"{split['baseline_median_us']:.0f} us UDP ping-pong RTT",
            f"{split['ttnet_median_us'] / split['baseline_median_us']:.2f}x", "info", "-"))
    for name, o in (r.get("others") or {}).items():
        if o.get("skipped"):
            rows.append((f"ref: {name}", o["skipped"], "-", "-", "info", "-"))
            continue
        if name == "pyzmq":
            zl, zg = o["latency"], o["goodput"]
            rows.append((
                "ref: pyzmq REQ/REP, 64 B",
                f"ttnet {lat['ttnet_rtt_median_us']:.0f} us median PING/PONG RTT",
                f"{zl['median_rtt_us']:.0f} us median REQ/REP RTT (TCP loopback)",
                f"{lat['ttnet_rtt_median_us'] / zl['median_rtt_us']:.2f}x", "info", "-"))
            rows += fast_start_round_trip_row(lat, "pyzmq REQ/REP", zl)
            rows.append((
                "ref: pyzmq PUSH/PULL, 10 MiB",
                f"ttnet {g['plain']['median_MBps']:.1f} MB/s",
                f"{zg['median_MBps']:.1f} MB/s (one frame, median of {len(zg['runs'])})",
                f"{g['plain']['median_MBps'] / zg['median_MBps']:.2f}x", "info", "-"))
        if name == "aioquic":
            ql, qg = o["latency"], o["goodput"]
            rows.append((
                "Beats aioquic: 64 B round trip",
                f"ttnet {lat['ttnet_rtt_median_us']:.0f} us median PING/PONG RTT",
                f"{ql['median_rtt_us']:.0f} us median request/echo on a new QUIC stream",
                f"{r['ratios']['vs_aioquic_latency']:.2f}x", "< 1.0x",
                verdict(r["pass"]["vs_aioquic_latency"])))
            rows += fast_start_round_trip_row(lat, "aioquic", ql)
            rows.append((
                "Beats aioquic: 10 MiB",
                f"ttnet {g['plain']['median_MBps']:.1f} MB/s",
                f"{qg['median_MBps']:.1f} MB/s (one QUIC stream, median of {len(qg['runs'])})",
                f"{r['ratios']['vs_aioquic_goodput']:.2f}x", "> 1.0x",
                verdict(r["pass"]["vs_aioquic_goodput"])))
    ratios, ok = r["ratios"], r["pass"]
    if "latency_floor" in ratios:
        rows.append((
            "Latency vs protocol floor, 64 B",
            f"{lat['ttnet_median_us']:.0f} us median send()->receiver fn",
            f"{lat['floor_median_us']:.0f} us floor one-way (same run)",
            f"{ratios['latency_floor']:.2f}x", f"<= {TARGET_FLOOR_LATENCY}x",
            verdict(ok["latency_floor"])))
    if split and "latency_floor_pinned" in ratios:
        rows.append((
            "Latency vs protocol floor, pinned",
            f"{split['ttnet_median_us']:.0f} us (A on CPU 0, B on CPU 1)",
            f"{split['floor_median_us']:.0f} us floor one-way, pinned",
            f"{ratios['latency_floor_pinned']:.2f}x", f"<= {TARGET_FLOOR_LATENCY}x",
            verdict(ok["latency_floor_pinned"])))
    if "cpu_floor" in ratios:
        cpu, csw = lat["cpu_us_per_rtt"], lat["ctxsw_per_rtt"]
        rows.append((
            "CPU per 64 B round trip vs floor",
            f"{cpu['tt']:.0f} us (A+B; {csw['tt']:.1f} context switches)",
            f"{cpu['floor']:.0f} us floor ({csw['floor']:.1f} context switches)",
            f"{ratios['cpu_floor']:.2f}x", f"<= {TARGET_FLOOR_CPU:.1f}x",
            verdict(ok["cpu_floor"])))
    for k, what in (("fast", "fast start"), ("inline", "fast start + inline callbacks")):
        for phase, d in (("", lat), (", pinned", split or {})):
            if not d.get(f"{k}_median_us"):
                continue
            judged = k == "inline" and phase and "fast_start_pinned" in ratios
            rows.append((
                f"{'Latency' if judged else 'ref: latency'}, 64 B, {what}{phase}",
                f"{d[f'{k}_median_us']:.0f} us median send()->receiver fn "
                f"(p90 {d[f'{k}_p90_us']:.0f}; no fast start: {d['ttnet_median_us']:.0f})",
                f"{d['baseline_median_us']:.0f} us UDP ping-pong RTT{phase}",
                f"{d[f'{k}_median_us'] / d['baseline_median_us']:.2f}x",
                f"<= {TARGET_FAST_START:.1f}x" if judged else "info",
                verdict(ok["fast_start_pinned"]) if judged else "-"))
    sp = r.get("spurious_retransmissions")
    if sp is not None:
        rows.append((
            "Spurious retransmissions, latency phases",
            f"{sp['retransmitted']} of {sp['sent']} DATA+REQ retransmitted "
            f"(rto_expired {sp['rto_expired']}, ACK(0) taken for echo "
            f"{sp['ack_start_echo_ignored']})",
            f"lossless loopback: kernel dropped {sp['kernel_drops']}",
            str(sp["retransmitted"]), f"= {TARGET_SPURIOUS}",
            verdict(ok["no_spurious_retx"])))
    return rows


def fast_start_round_trip_row(lat: dict[str, Any], name: str,
                              other: dict[str, Any]) -> list[tuple[str, ...]]:
    """An info row: ttnet's 64 B round trip with fast start + inline
    callbacks against another stack's (none if not measured)."""
    if not lat.get("inline_rtt_median_us"):
        return []
    return [(f"ref: {name.split()[0]} vs fast start + inline, 64 B",
             f"ttnet {lat['inline_rtt_median_us']:.0f} us median PING/PONG RTT",
             f"{other['median_rtt_us']:.0f} us ({name}, as above)",
             f"{lat['inline_rtt_median_us'] / other['median_rtt_us']:.2f}x", "info", "-")]


def explain_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for phase in ("goodput", "latency", "latency_split", "memory"):
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
                         f"median {median(xs):.2f}x, quartiles {pct(xs, 25):.2f}-"
                         f"{pct(xs, 75):.2f}x, range {xs[0]:.2f}-{xs[-1]:.2f}x"))
    for k in ("baseline", "plain", "auth", "floor"):
        rows.append(("goodput", f"runs MB/s: {LABEL[k]}",
                     " ".join(f"{x['MBps']:.1f}" for x in g[k]["runs"])))
    rows.append(("goodput", "UDP blast loss per run",
                 " ".join(f"{x['loss']:.1%}" for x in g["baseline"]["runs"])))
    return rows


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
        Console = None  # type: ignore[assignment,misc]
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
        print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for row in rows:
            print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print("\nwhat explains the numbers (counters are deltas over each phase)")
        for row in erows:
            print(f"  {row[0]:<8} {row[1]:<28} {row[2]}")
    print("verdict: " + ", ".join(f"{k} {verdict(v)}" for k, v in r["pass"].items())
          + f"  (took {m['seconds']:.0f} s)")
