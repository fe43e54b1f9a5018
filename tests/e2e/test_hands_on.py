"""Hands-on access to a live ``python -m testbed up``: ``exec ENSEMBLE -- CMD``
and ``shell ENSEMBLE`` through the real entry point, on docker and netns.

Other runs may be live on this machine at the same time, so every check
looks only at this test's own run (its tag, from the state file ``up``
writes), and every exec names that run with ``--run``.
"""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "cli" / "tiny.yaml"
STATE_DIR = Path("/run/ttnet/up")


def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def own_resources(tag: str) -> list[str]:
    """What of run ``tag`` (and only of it) still exists."""
    out = []
    for kind in ("ps", "network"):
        cmd = ["docker", kind, *(["-a"] if kind == "ps" else ["ls"]),
               "--filter", f"label=ttnet.run={tag}", "-q"]
        found = subprocess.run(cmd, capture_output=True, text=True).stdout.split()
        out += [f"docker {kind} {x}" for x in found]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {line}" for line in ns.splitlines() if line.startswith(f"ttnet-{tag}-")]
    if (STATE_DIR / f"{tag}.json").exists():
        out.append(f"state file {tag}.json")
    return out


@contextlib.contextmanager
def held_up(topology: Path, backend: str, results: Path) -> Iterator[dict]:
    """`up TOPOLOGY --backend X` held in a subprocess: yields its state (the
    run directory's hosts.json); then SIGINT, exit 0 and "down in", and a
    check that its own resources are gone, also when the test fails. (The
    timeline e2e test's `set` case uses it too.)"""
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", str(topology), "--backend",
                             backend, "--results", str(results)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tag = None
    try:
        seen, deadline = [], time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "holding" in line:
                break
        else:
            raise AssertionError("up never held")
        assert "holding" in "".join(seen), "".join(seen)
        (hosts_file,) = results.glob("*/*-up/hosts.json")
        state = json.loads(hosts_file.read_text())
        tag = state["tag"]
        assert (STATE_DIR / f"{tag}.json").exists()
        assert state["backend"] == backend
        yield state
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                rest, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                rest, _ = proc.communicate()
            assert proc.returncode == 0, rest
            assert "down in" in rest, rest
        if tag is not None:
            left = own_resources(tag)
            if left:
                cli("down")
            assert left == []


@pytest.fixture
def live_up(request, tmp_path):
    """`up tiny` held on the backend given as the parameter."""
    with held_up(TINY, request.param, tmp_path) as state:
        assert set(state["hosts"]) == {"a", "b"}
        yield state


@pytest.mark.timeout(300)
@pytest.mark.parametrize("live_up", ["docker", "netns"], indirect=True)
def test_exec_and_shell_reach_the_hosts_of_a_live_up(live_up):
    run = ["--run", live_up["run_id"]]
    a, b = live_up["hosts"]["a"], live_up["hosts"]["b"]

    out = cli("exec", *run, "a", "--", "ip", "-4", "addr")
    assert out.returncode == 0, out.stderr
    assert f"inet {a['ip']}/" in out.stdout and b["ip"] not in out.stdout

    out = cli("exec", *run, "a", "--", "ping", "-c", "1", "-W", "2", b["ip"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 received" in out.stdout

    # The tools are there (docker: in the image; netns: this machine's).
    out = cli("exec", *run, "b", "--", "tcpdump", "--version")
    assert out.returncode == 0 and "tcpdump version" in out.stdout + out.stderr

    out = cli("exec", *run, "a", "--", "false")
    assert out.returncode == 1, out.stderr
    out = cli("exec", *run, "b", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7, out.stderr

    out = cli("exec", *run, "nosuch", "--", "true")
    assert out.returncode == 2
    assert "no ensemble 'nosuch'" in out.stderr and "a, b" in out.stderr
    assert "Traceback" not in out.stderr

    out = cli("shell", *run, "b", stdin="echo hi; exit 3\n")
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines() == ["hi"]

    # The one live `up` of this test is found without --run only when no
    # other engineer's `up` is live too; with --run it always is.
    out = cli("exec", "--run", live_up["tag"], "b", "--", "ip", "-4", "addr")
    assert out.returncode == 0 and f"inet {b['ip']}/" in out.stdout


@pytest.mark.timeout(120)
def test_exec_of_an_up_that_is_not_there_exits_2():
    out = cli("exec", "--run", "no-such-run-000", "a", "--", "true")
    assert out.returncode == 2
    assert "error:" in out.stderr and "Traceback" not in out.stderr
