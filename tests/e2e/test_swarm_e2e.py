"""The swarm backend end to end on a single-node swarm, through the real
CLI: a small pair topology with ``--backend swarm`` (delivery of every
ensure=True message, fragmentation, the handshake, latency against the
configured delay, every ensemble's clock measured against the clock
reference), a failing start, and SIGINT during ``up`` -- each leaving
nothing of its run behind (the clock reference's container included).

The ``swarm`` fixture joins the swarm this engine is in, or makes a
single-node one (``docker swarm init --advertise-addr 127.0.0.1``) and
leaves it again afterwards, also on failure -- removing
``docker_gwbridge`` too when the swarm made it. A swarm this engine was
already in is left alone.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.analysis.stats import flow_stats, load_events

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
DELAY_S = 0.010
TOPOLOGY = f"""\
name: swarm-pair
description: Two ensembles on a {DELAY_S * 1000:g} ms link, as swarm services.
seed: 5
# a on a manager (the one node here): the placement path, end to end.
ensembles: {{a: {{placement: [node.role==manager]}}, b: {{}}}}
defaults: {{delay: {DELAY_S * 1000:g}ms}}
flows:
  - {{name: small, from: a, to: b, size: 200, count: 40, interval: 20ms, ensure: true,
      deadline: 5s}}
  # 6000 B: five DATA datagrams (1200 B each) -- fragmentation.
  - {{name: big, from: a, to: b, size: 6000, count: 10, interval: 50ms, ensure: true,
      deadline: 10s}}
  - {{name: back, from: b, to: a, size: 64, count: 40, interval: 20ms, ensure: true,
      deadline: 5s}}
"""


def _docker(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=60)


def _swarm_state() -> tuple[str, bool]:
    out = _docker("info", "--format", "{{json .Swarm}}")
    if out.returncode != 0:
        pytest.skip(f"no docker engine: {out.stderr.strip()}")
    info = json.loads(out.stdout)
    return info.get("LocalNodeState", "inactive"), bool(info.get("ControlAvailable"))


def _has_gwbridge() -> bool:
    return bool(_docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").stdout.strip())


@pytest.fixture(scope="module")
def swarm():
    state, manager = _swarm_state()
    created = False
    gwbridge_before = _has_gwbridge()
    if state == "active" and not manager:
        pytest.skip("this engine is a swarm worker; the swarm backend runs on a manager")
    if state != "active":
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=True)
        created = True
    try:
        yield
    finally:
        if created:
            _docker("swarm", "leave", "--force")
            if not gwbridge_before and _has_gwbridge():
                _docker("network", "rm", "docker_gwbridge")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _left_of(rid: str) -> list[str]:
    """What of the run tagged ``rid`` is still there: services, networks,
    containers (by its label), its run claim."""
    flt = f"label=ttnet.run={rid}"
    left = [f"service {s}" for s in _docker("service", "ls", "-q", "--filter", flt).stdout.split()]
    left += [f"network {n}" for n in _docker("network", "ls", "-q", "--filter", flt).stdout.split()]
    left += [f"container {c}" for c in _docker("ps", "-aq", "--filter", flt).stdout.split()]
    if Path(f"/run/ttnet/runs/{rid}.json").exists():
        left.append(f"run claim {rid}")
    return left


@pytest.mark.timeout(150)
def test_swarm_run_delivers_fragments_and_keeps_the_link_delay(tmp_path, swarm):
    topo = tmp_path / "swarm-pair.yaml"
    topo.write_text(TOPOLOGY)
    t0 = time.monotonic()
    out = cli("run", str(topo), "--backend", "swarm", "--no-compare",
              "--results", str(tmp_path / "res"))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = next((tmp_path / "res" / "swarm-pair").iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["backend"] == "swarm" and meta["exit_codes"] == {"a": 0, "b": 0}
    rid = meta["backend_run_id"]
    assert _left_of(rid) == []
    assert not _docker("ps", "-aq", "--filter", f"name=ttnet-{rid}-clock").stdout.strip()
    # Every ensemble measured its clock against the reference at its start
    # and end. One node: one kernel clock, so the offset is 0 within the
    # measurement's uncertainty (+1 ms for the clock reads themselves).
    clocks = meta["clocks"]
    assert clocks["method"] == "ntp-probe" and clocks["reference"], clocks
    assert set(clocks["ensembles"]) == {"a", "b"}, clocks
    for name, entry in clocks["ensembles"].items():
        for when in ("start", "end"):
            m = entry[when]
            assert "error" not in m, (name, when, m)
            assert abs(m["offset_s"]) <= m["uncertainty_s"] + 0.001, (name, when, m)
            assert m["uncertainty_s"] < 0.005, (name, when, m)
        assert entry["drift_ppm"] is not None
    assert "answered" in (run_dir / "logs" / "clock.log").read_text()
    # Every ensure=True message arrived, exactly once, intact.
    assert all(o.get("ensure_failures") == 0 for o in meta["outcomes"].values()), meta["outcomes"]
    events = load_events(run_dir)
    stats = flow_stats(events)
    for name, count in (("small", 40), ("big", 10), ("back", 40)):
        fs = stats[name]
        assert fs.sent == fs.delivered == fs.completed == count, fs
        assert fs.duplicates == 0 and fs.corrupted == 0 and fs.failed == 0
    assert all(e["intact"] for e in events if e["event"] == "deliver")
    assert sorted({e["size"] for e in events if e["event"] == "deliver"}) == [64, 200, 6000]
    # The handshake ran: every message's REQ was answered.
    c = meta["counters"]
    assert c["a"]["handshakes"] >= 50 and c["b"]["req_received"] >= 50, c
    # A message takes REQ, ACK_START and its DATA: three crossings of a
    # 10 ms link. The impairment delays every packet by at least the
    # delay; the host adds a few ms (NFQUEUE pass, wake-ups), as on docker.
    for name in ("small", "big", "back"):
        fs = stats[name]
        assert min(fs.latencies) >= 3 * DELAY_S * 0.98, (name, min(fs.latencies))
        assert 3 * DELAY_S <= fs.p50 <= 3 * DELAY_S + 0.015, (name, fs.p50)
    # Overlay MTU 1450 > the largest ttnet datagram (1217 B + 28 B of UDP/IP).
    print(f"swarm run: up {meta['up_s']} s, down {meta['down_s']} s, whole {took:.1f} s; "
          f"p50 ms: {', '.join(f'{n} {stats[n].p50 * 1e3:.1f}' for n in stats)}; clocks: "
          + "; ".join(f"{n} {w} offset {m['offset_s'] * 1e6:+.1f} us "
                      f"+-{m['uncertainty_s'] * 1e6:.1f} us"
                      for n, e in clocks["ensembles"].items()
                      for w, m in (("start", e["start"]), ("end", e["end"])))
          + "; drift ppm " + ", ".join(f"{n} {e['drift_ppm']}"
                                       for n, e in clocks["ensembles"].items()))


@pytest.mark.timeout(120)
def test_swarm_failed_start_leaves_nothing(tmp_path, swarm):
    from testbed.emulate.backends import BackendError, make_backend
    from testbed.spec.model import LinkSpec, Topology
    backend = make_backend("swarm")
    topo = Topology("swarm-fail", ("a", "b"), LinkSpec())
    with pytest.raises(BackendError, match="not found|exited|ended"):
        with backend:
            backend.up(topo, tmp_path, lambda h: ["no-such-program-ttnet"])
    assert _left_of(backend.run_id) == []


@pytest.mark.timeout(120)
def test_swarm_up_sigint_removes_everything(tmp_path, swarm):
    topo = tmp_path / "swarm-pair.yaml"
    topo.write_text(TOPOLOGY)
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", str(topo), "--backend",
                             "swarm", "--results", str(tmp_path / "res")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    try:
        deadline = time.monotonic() + 90
        while "holding" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        rid = re.search(r"container ttnet-([0-9a-f]{6})-a\.1\.", seen)
        assert rid, seen
        rid = rid.group(1)
        spec = json.loads(_docker("service", "inspect", f"ttnet-{rid}-a").stdout)[0]["Spec"]
        task = spec["TaskTemplate"]
        assert task["Placement"]["Constraints"] == ["node.role==manager"]
        assert task["ContainerSpec"]["CapabilityAdd"] == ["CAP_NET_ADMIN"]
        assert task["RestartPolicy"]["Condition"] == "none"
        assert spec["Labels"]["ttnet.run"] == rid
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + rest
    assert "down in" in rest
    assert _left_of(rid) == []
