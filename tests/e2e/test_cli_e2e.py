"""The emulating commands through the real entry point (``python -m
testbed``): run, up, down, status, calibrate, all; their exit codes; and
SIGINT/SIGTERM at any point leaving nothing behind."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_testbed import _leftovers  # tests/e2e is on sys.path under pytest

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
TINY = DATA / "cli" / "tiny.yaml"
BLACKHOLE = DATA / "cli" / "blackhole.yaml"


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    """Read the process's output until a line contains ``needle``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never printed {needle!r}; output: {''.join(seen)[-3000:]}")


def signal_at(proc: subprocess.Popen, needle: str, sig: int, delay_s: float = 0.0,
              check=None) -> str:
    """Once ``proc`` printed ``needle`` (and ``check()`` holds), send ``sig``;
    the rest of its output after it exits."""
    try:
        wait_for_line(proc, needle, 180)
        if check is not None:
            assert check()
        time.sleep(delay_s)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rest


@pytest.fixture
def clean():
    assert _leftovers() == [], "leftovers from an earlier test"
    yield
    left = _leftovers()
    if left:
        cli("down")
    assert left == []


@pytest.mark.timeout(300)
def test_run_exits_0_and_summarises(tmp_path, clean):
    out = cli("run", str(TINY), "--backend", "netns", "--no-compare", "--results", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ping" in out.stdout and "pong" in out.stdout
    (run_dir,) = (tmp_path / "tiny").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["exit_codes"] == {"a": 0, "b": 0}


@pytest.mark.timeout(300)
def test_run_exits_1_when_an_ensure_message_does_not_arrive(tmp_path, clean):
    out = cli("run", str(BLACKHOLE), "--backend", "netns", "--no-compare",
              "--results", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "agents exited" in out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_status_and_down_exit_0(clean):
    out = cli("status")
    assert out.returncode == 0 and "resource(s) present" in out.stdout + out.stderr
    out = cli("down")
    assert out.returncode == 0 and "removed" in out.stdout + out.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("backend", ["netns", "docker"])
def test_up_holds_until_a_signal_then_leaves_nothing(tmp_path, clean, sig, backend):
    proc = start("up", str(TINY), "--backend", backend, "--results", str(tmp_path))
    rest = signal_at(proc, "holding", sig, check=lambda: _leftovers() != [])  # really up
    assert proc.returncode == 0, rest
    assert "down in" in rest
    assert _leftovers() == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_interrupted_while_flows_run_exits_130_and_leaves_nothing(tmp_path, clean, sig):
    long_run = tmp_path / "long.yaml"
    long_run.write_text(TINY.read_text().replace("count: 30", "count: 3000"))
    proc = start("run", str(long_run), "--backend", "netns", "--results", str(tmp_path))
    rest = signal_at(proc, "running flows", sig, delay_s=1.0)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert _leftovers() == []


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_calibrate_interrupted_leaves_nothing(tmp_path, clean, sig):
    proc = start("calibrate", "--backend", "netns", "--results", str(tmp_path))
    rest = signal_at(proc, "running flows", sig)
    assert proc.returncode == 130, rest
    assert _leftovers() == []
    assert not (tmp_path / "calibration.json").exists()


@pytest.mark.timeout(600)
def test_all_runs_judges_and_reports(tmp_path, clean):
    # A calibration for this backend in place, so `all` does not calibrate
    # first (the model's accuracy does not matter to this test).
    cal = json.loads((DATA / "fidelity" / "power-run" / "calibration.json").read_text())
    (tmp_path / "calibration-netns.json").write_text(json.dumps({**cal, "backend": "netns"}))
    out = cli("all", str(TINY), "--backend", "netns", "--skip-e2e", "--results", str(tmp_path),
              timeout=500)
    text = out.stdout + out.stderr
    assert "fidelity tiny:" in text and "testbed finished" in text, text[-3000:]
    verdict = json.loads(next((tmp_path / "tiny").glob("*/verdict.json")).read_text())
    # The exit code is the verdict's (the agents all succeed on this topology).
    assert out.returncode == (0 if verdict["outcome"] != "FAIL" else 1), text[-3000:]
    assert ("PASS (end-to-end" in text) == (out.returncode == 0)


@pytest.mark.timeout(400)
def test_calibrate_writes_the_backends_calibration(tmp_path, clean):
    out = cli("calibrate", "--backend", "netns", "--results", str(tmp_path), timeout=360)
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads((tmp_path / "calibration-netns.json").read_text())
    assert info["backend"] == "netns" and info["source"] == "calibrated"
    assert info["hop_latency_s"] > 0 and info["capacity_pps"] > 0
    # CPU per datagram measured directly in each agent: microseconds, not 0 or seconds
    measured = info["measured_cpu_per_datagram_s"]
    assert set(measured) == {"c0", "c1"} and all(1e-6 < v < 1e-3 for v in measured.values())
    assert "process CPU per datagram" in out.stdout + out.stderr
    # the model's CPU cost is that measurement, not a fit; the emulator's
    # own cost is measured where a daemon impairs; the bulk flow is the check
    assert info["host_cost_method"] == "measured"
    assert info["host_cost_s"] == pytest.approx(sum(measured.values()) / 2)
    assert info["cores"] >= 1 and info["model_bulk_median_s"] > 0
    # the whole machine during the calibration's flows: at least the agents' own work
    whole = info["machine"]
    assert 0 < whole["busy_cores"] <= info["cores"] and 0 <= whole["steal_cores"] <= info["cores"]
    assert "machine during the calibration: busy" in out.stdout + out.stderr
    if info["impairment_engine"] == "nfqueue":
        assert 1e-6 < info["emulator_cost_s"] < 1e-3
        assert info["emulator_capacity_pps"] == pytest.approx(1 / info["emulator_cost_s"])
        assert "emulator" in out.stdout + out.stderr and "bulk median: emulated" in out.stdout + out.stderr
    assert json.loads((tmp_path / "calibration.json").read_text()) == info


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_all_interrupted_exits_130_and_leaves_nothing(tmp_path, clean, sig):
    cal = json.loads((DATA / "fidelity" / "power-run" / "calibration.json").read_text())
    (tmp_path / "calibration-netns.json").write_text(json.dumps({**cal, "backend": "netns"}))
    long_run = tmp_path / "long.yaml"
    long_run.write_text(TINY.read_text().replace("count: 30", "count: 3000"))
    proc = start("all", str(long_run), "--backend", "netns", "--skip-e2e",
                 "--results", str(tmp_path))
    rest = signal_at(proc, "running flows", sig, delay_s=1.0)
    assert proc.returncode == 130, rest
    assert _leftovers() == []


@pytest.mark.timeout(180)
def test_run_exits_1_when_a_program_fails_and_stops_the_one_still_running(tmp_path):
    done = cli("run", str(DATA / "cli" / "program-fails.yaml"), "--backend", "netns",
               "--no-compare", "--results", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "agents exited with {'a': 4, 'b': 0}" in done.stdout + done.stderr
    (run,) = (tmp_path / "program-fails").iterdir()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["outcomes"]["a"]["program"]["exit_code"] == 3
    assert meta["outcomes"]["b"]["program"]["stopped_at_duration"]
    assert (run / "logs" / "program-a.log").read_text() == "program of a ran\n"
    assert not _leftovers()
