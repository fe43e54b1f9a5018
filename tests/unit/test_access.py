"""testbed.emulate.access: the state file of a live `up` and the command
lines of `exec`/`shell` (no root, no Docker: nothing is run)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import testbed.emulate.access as access
import testbed.emulate.net as net
from testbed.emulate.access import (AccessError, HostInfo, UpState, find_up, host_argv,
                                    live_states, remove_state, shell_command, write_state)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(access, "STATE_DIR", tmp_path / "up")
    monkeypatch.setattr(net, "RUNS_DIR", tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    return tmp_path


def claim(root, tag: str, pid: int) -> None:
    (root / "runs" / f"{tag}.json").write_text(json.dumps(
        {"run_id": tag, "backend": "netns", "subnet": "10.210.9.0/24", "pid": pid}))


def state(tag: str, run_id: str, backend: str = "netns", pid: int | None = None,
          run_dir: str = "/nonexistent") -> UpState:
    hosts = {"a": HostInfo("10.210.9.2", "/proc/self/ns/net", "eth0",
                           f"ttnet-{tag}-a" if backend == "docker" else ""),
             "b": HostInfo("10.210.9.3", "/proc/self/ns/net", "eth0",
                           f"ttnet-{tag}-b" if backend == "docker" else "")}
    return UpState(run_id, tag, backend, "tiny", os.getpid() if pid is None else pid,
                   run_dir, hosts)


def test_state_round_trips_and_a_copy_lands_in_the_run_directory(dirs):
    s = state("abc123", "20260101-000000-abcd-up", run_dir=str(dirs))
    path = write_state(s)
    assert path == dirs / "up" / "abc123.json"
    assert UpState.from_json(path.read_text()) == s
    assert UpState.from_json((dirs / "hosts.json").read_text()) == s
    remove_state("abc123")
    assert not path.exists()
    remove_state("abc123")          # idempotent


def test_only_states_whose_owner_holds_the_claim_are_live(dirs):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_state(state("aaaaaa", "r1-up"))                  # no claim at all
    write_state(state("bbbbbb", "r2-up", pid=dead.pid))    # owner gone
    claim(dirs, "bbbbbb", dead.pid)
    write_state(state("cccccc", "r3-up"))                  # live
    claim(dirs, "cccccc", os.getpid())
    (dirs / "up" / "junk.json").write_text("{not json")
    assert [s.tag for s in live_states()] == ["cccccc"]
    # dead ones are forgotten, the unreadable one is left for a person to see
    assert sorted(p.name for p in (dirs / "up").iterdir()) == ["cccccc.json", "junk.json"]


def test_find_up_picks_the_only_one_or_asks_for_run(dirs):
    with pytest.raises(AccessError, match="no `python -m testbed up`"):
        find_up()
    write_state(state("aaaaaa", "20260101-000000-aaaa-up"))
    claim(dirs, "aaaaaa", os.getpid())
    assert find_up().tag == "aaaaaa"
    write_state(state("bbbbbb", "20260101-000001-bbbb-up"))
    claim(dirs, "bbbbbb", os.getpid())
    with pytest.raises(AccessError, match="2 `up` runs are live.*--run"):
        find_up()
    assert find_up("20260101-000001-bbbb-up").tag == "bbbbbb"     # full run id
    assert find_up("20260101-000000-aaaa").tag == "aaaaaa"        # as printed, a prefix
    assert find_up("bbbbbb").tag == "bbbbbb"                      # the backend's tag
    with pytest.raises(AccessError, match="matches no live"):
        find_up("nope")
    with pytest.raises(AccessError, match="more than one"):
        find_up("20260101-00000")


def test_netns_exec_enters_the_network_namespace_with_the_hosts_tools(monkeypatch):
    monkeypatch.setattr(access.shutil, "which", lambda p: f"/usr/bin/{p}")
    argv, env = host_argv(state("abc123", "r-up"), "b", ["ip", "-4", "addr"])
    assert argv == ["/usr/bin/nsenter", "--net=/proc/self/ns/net", "--", "ip", "-4", "addr"]
    assert env["TTNET_ENSEMBLE"] == "b" and env["TTNET_RUN"] == "abc123"


def test_netns_exec_of_a_vanished_namespace_is_an_error():
    s = state("abc123", "r-up")
    s.hosts["a"] = HostInfo("10.210.9.2", "/run/netns/ttnet-gone-0", "eth0")
    with pytest.raises(AccessError, match="is gone"):
        host_argv(s, "a", ["true"])


def test_docker_exec_uses_the_cli_with_i_and_t_only_when_asked(monkeypatch):
    monkeypatch.setattr(access.shutil, "which", lambda p: f"/usr/bin/{p}")
    s = state("abc123", "r-up", backend="docker")
    argv, env = host_argv(s, "a", ["false"])
    assert argv[:2] == ["/usr/bin/docker", "exec"] and argv[-2:] == ["ttnet-abc123-a", "false"]
    assert "-i" not in argv and "-t" not in argv and env == {}
    assert "TTNET_ENSEMBLE=a" in argv
    argv, _ = host_argv(s, "a", shell_command(), interactive=True, tty=True)
    assert argv[2:4] == ["-i", "-t"] and argv[-3:-1] == ["/bin/sh", "-c"]


def test_docker_exec_without_the_cli_enters_the_containers_namespaces(monkeypatch):
    monkeypatch.setattr(access.shutil, "which",
                        lambda p: None if p == "docker" else f"/usr/bin/{p}")
    monkeypatch.setattr(access, "_container_pid", lambda c: 4242)
    argv, env = host_argv(state("abc123", "r-up", backend="docker"), "b", ["true"])
    assert argv == ["/usr/bin/nsenter", "-t", "4242", "-m", "-u", "-i", "-n", "-p", "--",
                    "true"]
    assert env["TTNET_ENSEMBLE"] == "b"


def test_unknown_ensemble_and_empty_command_are_errors():
    s = state("abc123", "r-up")
    with pytest.raises(AccessError, match="no ensemble 'zz'.*a, b"):
        host_argv(s, "zz", ["true"])
    with pytest.raises(AccessError, match="no command"):
        host_argv(s, "a", [])


def test_the_shell_is_bash_where_there_is_one_and_reads_stdin():
    out = subprocess.run(shell_command(), input="echo hi; exit 3\n", capture_output=True,
                         text=True, timeout=30)
    assert (out.returncode, out.stdout) == (3, "hi\n")
