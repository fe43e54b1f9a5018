"""Host backends (docker, netns) and the ensemble image, on the real machine.

Each backend must: give every ensemble a reachable IP on one bridge, run the
command there with the run directory visible, report exit codes and logs,
and leave nothing behind after down(), a failed up(), a signal or a crash.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest
from pyroute2 import IPRoute, netns

from testbed.emulate import net
from testbed.emulate.backends import BackendError, cleanup_stale, make_backend
from testbed.emulate.image import ensure_image, find_debian_mirror
from testbed.spec.model import LinkSpec, Topology

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ["docker", "netns"]

# a echoes, b probes: COUNT datagrams, each answered; both bounded in count and time.
ECHO = textwrap.dedent("""
    import json, os, socket, sys, time
    role, me, peer, out = sys.argv[1:5]
    COUNT, PORT = 20, 40000
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((me, PORT))
    s.settimeout(0.2)
    got, end = 0, time.monotonic() + 20
    if role == "echo":
        while got < COUNT and time.monotonic() < end:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            s.sendto(data, addr); got += 1
    else:
        for i in range(COUNT):
            for _ in range(25):  # the echo side may still be binding
                s.sendto(str(i).encode(), (peer, PORT))
                try:
                    if s.recvfrom(2048)[0] == str(i).encode():
                        got += 1; break
                except socket.timeout:
                    pass
    json.dump({"role": role, "me": me, "replies": got},
              open(os.path.join(out, role + ".json"), "w"))
    print("probe-done", role, got, flush=True)
    sys.exit(0 if got == COUNT else 1)
""")


def _topo(*names: str) -> Topology:
    return Topology(name="backend-test", ensembles=names, default_link=LinkSpec())


def _docker():
    return docker.from_env(timeout=60)


def leftovers(rid: str) -> list[str]:
    """Everything on this machine that still carries run id rid."""
    found = []
    c = _docker()
    flt = {"label": f"ttnet.run={rid}"}
    found += [f"container {x['Id'][:12]}" for x in c.api.containers(all=True, filters=flt)]
    found += [f"network {x['Name']}" for x in c.api.networks(filters=flt)]
    found += [f"netns {n}" for n in netns.listnetns() if rid in n]
    with IPRoute() as ipr:
        found += [f"link {n}" for link in ipr.get_links()
                  if rid in (n := link.get_attr("IFLA_IFNAME"))]
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    found += [f"rule {r}" for r in rules.splitlines() if rid in r]
    found += [f"claim {p.name}" for p in net.RUNS_DIR.glob(f"{rid}*")]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in ps.splitlines() if f"ttnet-{rid}" in line]
    return found


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if text in line and "pytest" not in line]


def _echo_command(hosts_ip: dict[str, str]):
    def command(h):
        role = "echo" if h.name == "a" else "probe"
        peer = hosts_ip["b" if h.name == "a" else "a"]
        return ["python3", "-c", ECHO, role, h.ip, peer, h.results_dir]
    return command


# --- both backends ---------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_two_hosts_exchange_udp_and_leave_nothing_after_down(tmp_path, backend_name):
    backend = make_backend(backend_name)
    rid = backend.run_id
    seen_before_start = {}

    def before_start(hosts):
        # hosts exist, their netns is enterable, and no command has run yet.
        for h in hosts.values():
            assert os.path.exists(h.netns_path)
        seen_before_start["files"] = sorted(p.name for p in tmp_path.glob("*.json"))

    def command(h):
        # Ensembles get .2, .3, ... of the run's /24 in topology order.
        prefix = h.ip.rsplit(".", 1)[0]
        return _echo_command({"a": f"{prefix}.2", "b": f"{prefix}.3"})(h)

    with backend:
        hosts = backend.up(_topo("a", "b"), tmp_path, command, before_start=before_start)
        assert set(hosts) == {"a", "b"}
        assert hosts["a"].ip != hosts["b"].ip
        assert seen_before_start["files"] == []
        codes = backend.wait(timeout_s=60)
        assert codes == {"a": 0, "b": 0}, {n: backend.logs(n) for n in hosts}
        probe = json.loads((tmp_path / "probe.json").read_text())
        echo = json.loads((tmp_path / "echo.json").read_text())
        assert probe["replies"] == 20 and echo["replies"] == 20
        assert probe["me"] == hosts["b"].ip
        assert "probe-done probe 20" in backend.logs("b")
    assert "probe-done echo 20" in backend.logs("a"), "logs must stay readable after down()"
    assert leftovers(rid) == []


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_up_with_missing_command_raises_and_leaves_nothing(tmp_path, backend_name):
    backend = make_backend(backend_name)
    with pytest.raises(BackendError, match="ttnet-no-such-program"):
        backend.up(_topo("a", "b", "c"), tmp_path, lambda h: ["ttnet-no-such-program", "x"])
    assert leftovers(backend.run_id) == []


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_exception_in_before_start_tears_everything_down(tmp_path, backend_name, exc):
    """KeyboardInterrupt stands for Ctrl-C in the middle of up()."""
    backend = make_backend(backend_name)

    def explode(hosts):
        raise exc("injected")

    with pytest.raises(exc, match="injected"):
        backend.up(_topo("a", "b"), tmp_path, lambda h: ["sleep", "30"], before_start=explode)
    assert leftovers(backend.run_id) == []
    assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_wait_kills_commands_still_running_at_timeout(tmp_path, backend_name):
    with make_backend(backend_name) as backend:
        backend.up(_topo("fast", "slow"), tmp_path,
                   lambda h: ["sleep", "0" if h.name == "fast" else "60"])
        t0 = time.monotonic()
        codes = backend.wait(timeout_s=3)
        assert time.monotonic() - t0 < 30
        assert codes == {"fast": 0, "slow": -9}
    assert leftovers(backend.run_id) == []


_OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from testbed.emulate.backends import make_backend
    from testbed.spec.model import LinkSpec, Topology
    b = make_backend(sys.argv[1])
    with b:
        b.up(Topology("t", ("a", "b"), LinkSpec()), Path(sys.argv[2]), lambda h: ["sleep", "60"])
        print(b.run_id, flush=True)
        time.sleep(60)
""")


def _start_owner(backend_name: str, run_dir: Path) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", _OWNER, backend_name, str(run_dir)],
                         stdout=subprocess.PIPE, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    rid = p.stdout.readline().strip()
    assert len(rid) == 6, f"owner did not come up (rc={p.poll()})"
    return p, rid


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_signal_during_run_leaves_nothing(tmp_path, backend_name, sig):
    p, rid = _start_owner(backend_name, tmp_path)
    try:
        assert leftovers(rid), "the run should exist while its owner lives"
        p.send_signal(sig)
        p.wait(timeout=60)
    finally:
        p.kill()
    assert leftovers(rid) == []


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cleanup_stale_removes_runs_of_a_killed_owner_only(tmp_path, backend_name):
    p, rid = _start_owner(backend_name, tmp_path / "dead")
    live = make_backend(backend_name)
    try:
        p.kill()  # SIGKILL: no finally runs, everything stays behind
        p.wait(timeout=30)
        assert leftovers(rid)
        with live:
            live.up(_topo("x"), tmp_path / "live", lambda h: ["sleep", "30"])
            removed = cleanup_stale()
            assert any(rid in r for r in removed), removed
            assert leftovers(rid) == []
            assert leftovers(live.run_id), "a live run must not be swept"
    finally:
        p.kill()
    assert leftovers(live.run_id) == []


# --- image -----------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(900)  # the first call on a machine runs debootstrap
def test_ensure_image_is_idempotent_and_image_imports_packages():
    tag = ensure_image(REPO)
    t0 = time.monotonic()
    again = ensure_image(REPO)
    took = time.monotonic() - t0
    assert again == tag and tag.startswith("ttnet-ensemble:")
    assert took < 2.0, f"cached ensure_image took {took:.2f} s"
    out = _docker().containers.run(tag, ["python3", "-c", "import ttnet, testbed; print('ok')"],
                                   remove=True, network_mode="none")
    assert out.strip() == b"ok"


# --- plain checks (no root needed) ------------------------------------------

def test_mirror_is_read_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] https://vendor.example/apt stable main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\n# comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert find_debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_missing_mirror_names_the_files_to_fix(tmp_path):
    (tmp_path / "sources.list").write_text("# nothing\n")
    with pytest.raises(RuntimeError, match="sources.list"):
        find_debian_mirror(tmp_path)


def test_unknown_backend_name_lists_the_choices():
    with pytest.raises(BackendError, match="docker, netns"):
        make_backend("qemu")


def test_too_many_ensembles_for_a_subnet_is_rejected():
    with pytest.raises(net.SubnetError, match="split the topology"):
        net.host_addresses(next(net.POOL.subnets(new_prefix=24)), 300)


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "x" * 64])
def test_bad_ensemble_names_are_rejected_before_anything_is_made(tmp_path, bad):
    backend = make_backend("netns")
    with pytest.raises(BackendError, match="ensemble name"):
        backend.up(_topo(bad), tmp_path, lambda h: ["true"])


def test_run_id_that_names_cannot_carry_is_rejected():
    with pytest.raises(BackendError, match="6 lowercase hex"):
        make_backend("netns", run_id="../etc")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_backend_cannot_be_brought_up_twice(tmp_path):
    with make_backend("netns") as backend:
        backend.up(_topo("a"), tmp_path, lambda h: ["true"])
        with pytest.raises(BackendError, match="already up"):
            backend.up(_topo("a"), tmp_path, lambda h: ["true"])
    assert leftovers(backend.run_id) == []
