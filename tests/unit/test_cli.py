"""The CLI as a user meets it (no root, no Docker): help, options anywhere,
error messages and exit codes, list, simulate. The emulating commands (run,
up, down, status, calibrate, all, signals) are in tests/e2e/test_cli_e2e.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "cli" / "tiny.yaml"
COMMANDS = ["list", "run", "up", "down", "status", "simulate", "compare", "power",
            "false-alarms", "calibrate", "all", "exec", "shell"]


def cli(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_help_is_for_users_with_examples_and_exit_codes():
    out = cli("--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout and "exit codes:" in out.stdout
    for c in COMMANDS:
        assert c in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--results" in text
    if command in ("run", "up", "simulate", "false-alarms"):
        assert "shipped topology" in text          # the positional has help
    if command in ("run", "up", "calibrate", "all"):
        assert "netns" in text and "docker if its engine" in text


def test_results_and_verbose_are_accepted_before_and_after_the_subcommand(tmp_path):
    parser = build_parser()
    before = parser.parse_args(["--results", str(tmp_path), "-v", "list"])
    after = parser.parse_args(["list", "--results", str(tmp_path), "-v"])
    default = parser.parse_args(["list"])
    assert before.results == after.results == str(tmp_path)
    assert before.verbose and after.verbose
    assert default.results == "results" and not default.verbose


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    bad = cli("simulate", "pair", "--host-cost", "-1")
    assert bad.returncode == 2 and "must be >= 0" in bad.stderr
    bad = cli("false-alarms", "pair", "--trials", "0")
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    bad = cli("all", "--remeasure", "-1")
    assert bad.returncode == 2 and "at least 0" in bad.stderr


def test_unknown_topology_is_one_line_with_the_known_names_and_exit_2(tmp_path):
    out = cli("simulate", "no-such-topology", "--results", str(tmp_path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "no such topology" in out.stderr and "pair" in out.stderr


def test_invalid_topology_file_names_the_file_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nensembles: [a, b]\nflows: [{name: x, from: a, to: c}]\n")
    out = cli("simulate", str(bad), "--results", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(bad) in out.stderr


def test_list_shows_shipped_topologies_and_runs_from_any_directory(tmp_path):
    (tmp_path / "results" / "pair" / "r1").mkdir(parents=True)
    (tmp_path / "results" / "pair" / "r1" / "meta.json").write_text("{}")
    out = cli("list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("pair", "star", "lossy", "edge-cloud", "mesh-20"):
        assert name in out.stdout
    assert "r1" in out.stdout


def test_simulate_writes_a_run_and_says_how_it_was_made(tmp_path):
    out = cli("simulate", str(TINY), "--results", str(tmp_path))
    assert out.returncode == 0, out.stderr
    runs = list((tmp_path / "tiny").glob("*-sim"))
    assert len(runs) == 1
    meta = json.loads((runs[0] / "meta.json").read_text())
    assert meta["kind"] == "simulated" and meta["replications"] == 20
    text = out.stdout + out.stderr
    assert "20 replications" in text
    assert "host model: default" in text       # no calibration under tmp_path
    assert "x real time" in text and text.count("x real time") == 1


def test_power_on_a_directory_that_is_not_a_run_exits_2(tmp_path):
    out = cli("power", str(tmp_path), "--results", str(tmp_path))
    assert out.returncode == 2 and "not a run directory" in out.stderr


def test_compare_of_a_missing_directory_exits_2(tmp_path):
    out = cli("compare", str(tmp_path / "nope"), "--results", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_list_shows_an_invalid_topology_with_its_error_and_the_others(tmp_path, monkeypatch,
                                                                       capsys):
    import testbed.cli as cli_mod
    from testbed.spec.topology import SHIPPED_DIR
    topo_dir = tmp_path / "topologies"
    topo_dir.mkdir()
    (topo_dir / "pair.yaml").write_text((SHIPPED_DIR / "pair.yaml").read_text())
    (topo_dir / "broken.yaml").write_text("name: broken\nensembles: [a, b\n")
    monkeypatch.setattr(cli_mod, "SHIPPED_DIR", topo_dir)
    assert main(["list", "--results", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "pair" in out and "2 ensembles" in out
    assert "broken" in out and "INVALID" in out and "broken.yaml:" in out


def test_setup_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    import testbed.emulate.backends as backends
    from testbed.emulate.backends.base import BackendError

    def refuse(*_a, **_k):
        raise BackendError("the docker engine does not answer; start it or use --backend netns")
    monkeypatch.setattr(backends, "make_backend", refuse)
    assert main(["run", str(TINY), "--no-compare", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the docker engine does not answer")
    assert "Traceback" not in err


# --- exec / shell (hands-on access to a live `up`) ------------------------------

def test_exec_and_shell_parse_ensemble_run_and_the_command_after_dashes():
    parser = build_parser()
    a = parser.parse_args(["exec", "a", "--", "ping", "-c", "1", "10.0.0.3"])
    assert (a.ensemble, a.run, a.fn.__name__) == ("a", None, "cmd_exec")
    assert [x for x in a.command if x != "--"] == ["ping", "-c", "1", "10.0.0.3"]
    a = parser.parse_args(["exec", "--run", "20260101-000000-abcd", "-v", "b", "ip", "-4"])
    assert (a.ensemble, a.run, a.verbose) == ("b", "20260101-000000-abcd", True)
    assert a.command == ["ip", "-4"]
    s = parser.parse_args(["shell", "--run", "x", "a"])
    assert (s.ensemble, s.run, s.fn.__name__) == ("a", "x", "cmd_shell")
    with pytest.raises(SystemExit):
        parser.parse_args(["shell"])            # an ensemble is required
    with pytest.raises(SystemExit):
        parser.parse_args(["shell", "a", "b"])  # shell takes no command


@pytest.fixture
def no_up(tmp_path, monkeypatch):
    """An empty up-state directory and no run claims."""
    import testbed.emulate.access as access
    import testbed.emulate.net as net
    monkeypatch.setattr(access, "STATE_DIR", tmp_path / "up")
    monkeypatch.setattr(net, "RUNS_DIR", tmp_path / "runs")
    return tmp_path


@pytest.mark.parametrize("argv", [["exec", "a", "--", "true"], ["shell", "a"],
                                  ["exec", "--run", "nope", "a", "--", "true"],
                                  ["set", "a->b", "delay=5ms"],
                                  ["set", "--run", "nope", "a->b", "delay=5ms"]])
def test_exec_shell_and_set_without_a_live_up_exit_2_saying_so(no_up, capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no `python -m testbed up` is holding hosts")
    assert "Traceback" not in err


def test_exec_of_an_unknown_ensemble_or_no_command_exits_2(no_up, capsys):
    import json
    import os

    from testbed.emulate.access import HostInfo, UpState, write_state
    (no_up / "runs").mkdir()
    (no_up / "runs" / "abc123.json").write_text(json.dumps(
        {"run_id": "abc123", "backend": "netns", "subnet": "10.210.1.0/24",
         "pid": os.getpid()}))
    write_state(UpState("20260101-000000-abcd-up", "abc123", "netns", "tiny", os.getpid(),
                        str(no_up), {"a": HostInfo("10.210.1.2", "/run/netns/x", "eth0")}),
                no_up / "up")
    assert main(["exec", "zz", "--", "true"]) == 2
    assert "no ensemble 'zz'" in capsys.readouterr().err
    assert main(["exec", "a"]) == 2
    assert "no command given" in capsys.readouterr().err


def test_set_finds_the_live_up_like_exec_and_asks_its_control_directory(no_up, capsys):
    import json
    import os
    import threading

    from testbed.emulate.access import HostInfo, UpState, write_state
    from testbed.emulate.control import ControlServer
    (no_up / "runs").mkdir()
    (no_up / "runs" / "abc123.json").write_text(json.dumps(
        {"run_id": "abc123", "backend": "netns", "subnet": "10.210.1.0/24",
         "pid": os.getpid()}))
    run_dir = no_up / "tiny" / "20260101-000000-abcd-up"
    write_state(UpState(run_dir.name, "abc123", "netns", "tiny", os.getpid(), str(run_dir),
                        {"a": HostInfo("10.210.1.2", "/run/netns/x", "eth0")}), no_up / "up")
    seen = []

    def handler(req):
        seen.append(req)
        return {"ok": True, "links": {"a->b": "a->b delay=5ms"}}
    server = ControlServer(run_dir, handler)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [server.poll() or stop.wait(0.01)
                                              for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        assert main(["set", "a->b", "delay=5ms"]) == 0          # the only live up
        assert main(["set", "--run", "abcd-up", "a->b", "delay=5ms"]) == 0   # by suffix
        assert main(["set", "--run", str(run_dir), "a->b", "delay=5ms"]) == 0  # by path
    finally:
        stop.set()
        thread.join()
        server.close()
    assert capsys.readouterr().out.count("a->b now delay=5ms") == 3
    assert seen == [{"op": "set", "link": "a->b", "set": {"delay": "5ms"}}] * 3


def test_all_leaves_out_only_the_fidelity_suite_whose_topologies_it_runs_itself(monkeypatch,
                                                                                tmp_path):
    """`all` (make testbed) skips tests/e2e/test_fidelity.py because it has
    just emulated and judged the same topologies, more strictly: that holds
    only while its default list covers every topology the suite judges."""
    import importlib.util

    from testbed import cli
    path = Path(__file__).resolve().parents[2] / cli.FIDELITY_SUITE
    spec = importlib.util.spec_from_file_location("fidelity_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert suite.TARGET and set(suite.TARGET) <= set(cli.DEFAULT_TOPOLOGIES)
    # the command `all` runs: the whole e2e suite but that one file
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv, **kw: calls.append(argv) or 0)
    monkeypatch.setattr(cli, "_default_topologies", lambda: [])
    monkeypatch.setattr("testbed.simulate.host.load_calibration",
                        lambda *a, **k: {"backend": "netns"})
    assert main(["--results", str(tmp_path), "all", "--backend", "netns"]) == 0
    (argv,) = calls
    assert argv[1:] == ["-m", "pytest", "tests/e2e", "-q", f"--ignore={cli.FIDELITY_SUITE}"]


class _Run:
    """What run_emulation returns, for `all`'s loop."""
    def __init__(self, run_dir, steal, ok=True):
        self.run_dir, self.ok = run_dir, ok
        self.meta = {"run_s": 10.0, "exit_codes": {"a": 0 if ok else 3}, "machine_cpu": {
            "cores": 2, "at_start": {"t": 0.0, "busy": 0.0, "steal": 0.0, "idle": 0.0},
            "at_end": {"t": 10.0, "busy": 5.0, "steal": steal * 10, "idle": 0.0}}}


def _all_with(monkeypatch, tmp_path, steals, verdicts, oks=None):
    """Run `all` on pair with run_emulation and compare_run replaced: run i
    had ``steals[i]`` cores of steal and the verdict outcome ``verdicts[i]``."""
    from types import SimpleNamespace

    from testbed import cli
    runs = iter(range(len(steals)))
    seen = []

    def run_emulation(topo, backend, results, **kw):
        i = next(runs)
        seen.append(i)
        d = tmp_path / f"run{i}"
        d.mkdir()
        return _Run(d, steals[i], True if oks is None else oks[i])

    def compare_run(run_dir):
        i = int(run_dir.name[3:])
        v = SimpleNamespace(outcome=verdicts[i], ok=verdicts[i] != "FAIL",
                            counts=lambda: verdicts[i], failures=[], judgements=[],
                            passed=[], failed=[], undetermined=[])
        return [], v, run_dir / "report.md"

    monkeypatch.setattr("testbed.emulate.run.run_emulation", run_emulation)
    monkeypatch.setattr(cli, "compare_run", compare_run)
    monkeypatch.setattr(cli, "_summarise", lambda d: None)
    monkeypatch.setattr(cli, "_print_verdict", lambda v, n: None)
    monkeypatch.setattr(cli, "_present", lambda name, res, judged: 0 if judged[1].ok else 1)
    monkeypatch.setattr("testbed.simulate.host.load_calibration",
                        lambda *a, **k: {"backend": "netns"})
    return seen


@pytest.mark.parametrize("steals, verdicts, runs, code", [
    ([0.0], ["PASS"], 1, 0),                        # quiet: measured once
    ([0.0], ["FAIL"], 1, 1),                        # a quiet FAIL stands
    ([0.2, 0.0], ["FAIL", "PASS"], 2, 0),           # stolen: measured again
    ([0.2, 0.0], ["PASS", "FAIL"], 2, 1),           # whatever its verdict
    ([0.2, 0.3], ["FAIL", "FAIL"], 2, 1),           # at most once: the last one stands
])
def test_all_measures_a_disturbed_run_again_whatever_its_verdict(monkeypatch, tmp_path, capsys,
                                                                steals, verdicts, runs, code):
    seen = _all_with(monkeypatch, tmp_path, steals, verdicts)
    assert main(["--results", str(tmp_path), "all", "pair", "--backend", "netns",
                 "--skip-e2e"]) == code
    assert len(seen) == runs
    out = capsys.readouterr().out
    if runs == 2:
        assert "not a measurement of the testbed: WARNING: the hypervisor took 0.20" in out
        assert f"measured again: pair ({verdicts[0]} in {tmp_path / 'run0'}" in out


def test_all_remeasure_0_and_lost_messages_of_a_disturbed_run(monkeypatch, tmp_path):
    seen = _all_with(monkeypatch, tmp_path, [0.2], ["FAIL"])
    assert main(["--results", str(tmp_path), "all", "pair", "--backend", "netns",
                 "--skip-e2e", "--remeasure", "0"]) == 1 and seen == [0]
    # an ensure=True message lost in a disturbed run fails `all`, measured again or not
    seen = _all_with(monkeypatch, tmp_path / "b", [0.2, 0.0], ["PASS", "PASS"], [False, True])
    (tmp_path / "b").mkdir()
    assert main(["--results", str(tmp_path / "b"), "all", "pair", "--backend", "netns",
                 "--skip-e2e"]) == 1 and seen == [0, 1]
