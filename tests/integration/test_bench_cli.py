"""`make bench` (python -m benchmarks) through its command line, on
loopback: a short run writes its tables and JSON, and --report prints a
saved result again. Speed targets are the benchmark's business, not this
test's: it checks that every row was measured and judged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(360)
def test_a_short_bench_run_measures_and_judges_every_row(tmp_path):
    out_json = tmp_path / "bench.json"
    out = bench("--reps", "1", "--pings", "60", "--rounds", "2", "--skip-memory",
                "--skip-sim", "--plain", "--json", str(out_json))
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out_json.read_text())
    judged = {"goodput", "latency", "auth", "latency_floor", "cpu_floor", "no_spurious_retx"}
    if (os.cpu_count() or 1) >= 2:                   # the pinned phase needs two CPUs
        judged |= {"latency_floor_pinned", "fast_start_pinned"}
    assert set(result["pass"]) >= judged
    # fast start was measured over interfaces that really used it
    for k in ("fast", "inline"):
        assert result["latency"][f"{k}_samples"] >= 50 and result["latency"][f"{k}_timeouts"] == 0
        fast = result["counters"]["latency"]["sender"][k]
        assert fast["fast_starts"] > 0 and fast.get("req_sent", 0) == 0
    assert "ref: latency, 64 B, fast start + inline callbacks" in out.stdout
    # the other stacks (the test extra installs them: pyzmq, aioquic)
    others = result["others"]
    for name in ("pyzmq", "aioquic"):
        assert others[name]["latency"]["samples"] >= 50, others[name]
        assert others[name]["goodput"]["median_MBps"] > 0
    assert {"vs_aioquic_latency", "vs_aioquic_goodput"} <= set(result["pass"])
    assert "Beats aioquic: 10 MiB" in out.stdout and "ref: pyzmq REQ/REP" in out.stdout
    assert all(isinstance(v, bool) for v in result["pass"].values())
    assert all(r > 0 for r in result["ratios"].values() if isinstance(r, (int, float)))
    assert "verdict:" in out.stdout and "Spurious retransmissions" in out.stdout
    again = bench("--report", str(out_json), "--plain")
    assert again.returncode == 0, again.stderr
    assert "Latency, 64 B ensure=True" in again.stdout


def test_bench_refuses_a_missing_or_foreign_report_file_with_exit_2(tmp_path):
    out = bench("--report", str(tmp_path / "none.json"))
    assert out.returncode == 2 and "cannot read a saved benchmark result" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "other.json").write_text("[1, 2]")
    out = bench("--report", str(tmp_path / "other.json"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    out = bench("--reps", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_simbench_measures_a_topology_and_refuses_unknown_ones(tmp_path):
    run = [sys.executable, "-m", "benchmarks.simbench"]
    out = subprocess.run(run + ["--reps", "2", "devices", "--json", str(tmp_path / "s.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = json.loads((tmp_path / "s.json").read_text())["devices"]
    assert len(row["speedups"]) == 2 and row["speedup"] > 0 and row["simulated_s"] > 5
    assert "target 100x" in out.stdout and "devices" in out.stdout
    for bad in (["nosuch"], ["--reps", "0", "pair"]):
        out = subprocess.run(run + bad, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
