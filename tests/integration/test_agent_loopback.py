"""The testbed agent, for real, on loopback: no Docker, no namespaces.

Each ensemble's agent is a subprocess (``python -m testbed.guest.agent``) bound to
its own 127.0.0.x address (plan ``bind``), all on one port as in a run; the
test plays the host: plan.json, wait for ready-*, go.json, exit codes."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed.spec.events import load_events
from testbed.spec.jsonio import write_json_atomic
from testbed.spec.model import Flow, LinkSpec, Topology

ROOT = Path(__file__).resolve().parents[2]
ADDR = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}


def _free_port() -> int:
    # A wildcard bind conflicts with every 127.0.0.x bind of the same port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _flow(name, src, dst, *, ensure, count=5, sizes=(100,), interval_s=0.02, deadline_s=2.0,
          start_s=0.0):
    return dict(name=name, src=src, dst=dst, sizes=list(sizes), count=count,
                interval_s=interval_s, ensure=ensure, deadline_s=deadline_s, start_s=start_s)


def _run_agents(results: Path, ensembles, running, flows, span_s, plan_extra=None):
    """Start agents for ``running`` (a subset of ``ensembles``), give the go
    signal with ``end_at = start_at + span_s``; their exit codes and outcomes."""
    port = _free_port()
    write_json_atomic(results / "plan.json", {
        "run_id": "t", "topology": "t", "ensembles": list(ensembles), "port": port,
        "flows": flows, "auth_key": None, "engine": {},
        "bind": {e: ADDR[e] for e in ensembles}, **(plan_extra or {})})
    procs = {}
    try:
        for n in running:
            log = open(results / f"agent-{n}.log", "w")
            procs[n] = subprocess.Popen(
                [sys.executable, "-m", "testbed.guest.agent", "--name", n, "--results", str(results)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        deadline = time.monotonic() + 15
        while not all((results / f"ready-{n}").exists() for n in running):
            assert time.monotonic() < deadline, "agents never became ready"
            assert all(p.poll() is None for p in procs.values()), _logs(results, running)
            time.sleep(0.02)
        start_at = time.time() + 0.3
        write_json_atomic(results / "go.json", {
            "routes": {e: f"{ADDR[e]}:{port}" for e in ensembles},
            "start_at": start_at, "end_at": start_at + span_s})
        codes = {n: p.wait(timeout=span_s + 10) for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    outcomes = {n: json.loads((results / f"outcome-{n}.json").read_text())
                for n in running if (results / f"outcome-{n}.json").exists()}
    return codes, outcomes


def _logs(results: Path, names) -> str:
    return "\n".join(f"--- {n}\n" + (results / f"agent-{n}.log").read_text()[-2000:]
                     for n in names if (results / f"agent-{n}.log").exists())


@pytest.mark.timeout(30)
def test_all_ensure_messages_delivered_exit_zero(tmp_path):
    flows = [_flow("ab", "a", "b", ensure=True, count=8, sizes=(100, 5000, 30000)),
             _flow("ba", "b", "a", ensure=True, count=4, sizes=(700,))]
    codes, out = _run_agents(tmp_path, ["a", "b"], ["a", "b"], flows, span_s=6.0)
    assert codes == {"a": 0, "b": 0}, _logs(tmp_path, "ab")
    a, b = out["a"], out["b"]
    assert a["ensure"] == dict(sent=8, completed=8, failed=0, unresolved=0, not_sent=0)
    assert b["ensure"] == dict(sent=4, completed=4, failed=0, unresolved=0, not_sent=0)
    assert a["sent"] == a["completed"] == 8 and b["sent"] == b["completed"] == 4
    assert a["ensure_failures"] == b["ensure_failures"] == 0
    assert a["problems"] == b["problems"] == [] and a["exit_code"] == 0
    # The events agree: every message delivered once, from the right source.
    events = (tmp_path / "events-b.jsonl").read_text().splitlines()
    delivered = [e for e in map(json.loads, events) if e["event"] == "deliver"]
    assert sorted(e["msg"] for e in delivered) == list(range(8))
    assert all(e["src"] == "a" and e["intact"] for e in delivered)


@pytest.mark.timeout(30)
def test_agents_measure_their_clock_at_start_and_end(tmp_path):
    """A plan ``clock`` reference: each agent's outcome has a start and an
    end measurement against it (one kernel here: offset within the
    uncertainty); an unreachable reference is recorded, and costs no exit."""
    from testbed.guest.clock import Responder
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    responder = Responder(sock)
    th = threading.Thread(target=responder.serve, args=(time.monotonic() + 20,), daemon=True)
    th.start()
    ref = f"127.0.0.1:{sock.getsockname()[1]}"
    flows = [_flow("ab", "a", "b", ensure=True, count=4)]
    codes, out = _run_agents(tmp_path, ["a", "b"], ["a", "b"], flows, span_s=4.0,
                             plan_extra={"clock": {"reference": ref}})
    assert codes == {"a": 0, "b": 0}, _logs(tmp_path, "ab")
    for name in "ab":
        clock = out[name]["clock"]
        assert clock["reference"] == ref
        for when in ("start", "end"):
            m = clock[when]
            assert m["answered"] >= 1, clock
            assert abs(m["offset_s"]) <= m["uncertainty_s"] + 1e-6, clock
            assert m["at"] > 0 and m["rtt_s"] >= 0
        assert clock["end"]["at"] > clock["start"]["at"]
    closed = _free_port()
    (tmp_path / "x").mkdir()
    codes, out = _run_agents(tmp_path / "x", ["a"], ["a"], [], span_s=1.0,
                             plan_extra={"clock": {"reference": f"127.0.0.1:{closed}"}})
    assert codes == {"a": 0}
    assert "error" in out["a"]["clock"]["start"] and "error" in out["a"]["clock"]["end"]


@pytest.mark.timeout(30)
def test_absent_receiver_ensure_failures_exit_three(tmp_path):
    flows = [_flow("sure", "a", "b", ensure=True, count=3, deadline_s=1.0),
             # Deadline past the end time: still pending when the run ends.
             _flow("slow", "a", "b", ensure=True, count=1, deadline_s=30.0),
             # Due after the end time: never sent.
             _flow("late", "a", "b", ensure=True, count=2, start_s=10.0)]
    codes, out = _run_agents(tmp_path, ["a", "b"], ["a"], flows, span_s=2.0)
    assert codes == {"a": 3}, _logs(tmp_path, "a")
    a = out["a"]
    assert a["ensure"] == dict(sent=4, completed=0, failed=3, unresolved=1, not_sent=2)
    assert a["ensure_failures"] == 6 and a["exit_code"] == 3
    reasons = {(p["flow"], p["msg"]): p["reason"] for p in a["problems"]}
    assert set(reasons) == {("sure", 0), ("sure", 1), ("sure", 2), ("slow", 0),
                            ("late", 0), ("late", 1)}
    assert all("failed" in reasons["sure", k] and "no ACK_START" in reasons["sure", k]
               for k in range(3))
    assert "unresolved" in reasons["slow", 0]
    assert all("not sent" in reasons["late", k] for k in range(2))
    # Its on_failure fired at close, after the end time: logged, not counted.
    events = [json.loads(line) for line in (tmp_path / "events-a.jsonl").read_text().splitlines()]
    late = [e for e in events if e["event"] == "fail" and e["flow"] == "slow"]
    assert len(late) == 1 and "closed" in late[0]["reason"]


@pytest.mark.timeout(30)
def test_best_effort_failures_alone_exit_zero(tmp_path):
    flows = [_flow("sure", "a", "b", ensure=True, count=4),
             _flow("best", "a", "c", ensure=False, count=3, deadline_s=0.5)]
    codes, out = _run_agents(tmp_path, ["a", "b", "c"], ["a", "b"], flows, span_s=2.0)
    assert codes == {"a": 0, "b": 0}, _logs(tmp_path, "ab")
    a = out["a"]
    assert a["ensure"] == dict(sent=4, completed=4, failed=0, unresolved=0, not_sent=0)
    assert a["best_effort"] == dict(sent=3, completed=0, failed=3, unresolved=0, not_sent=0)
    assert a["failed"] == 3 and a["ensure_failures"] == 0 and a["problems"] == []


@pytest.mark.timeout(60)
def test_agent_and_simulator_write_the_same_records(tmp_path):
    """The verdict compares agent records with simulator records: for the
    same plan they must be the same records, up to the times."""
    from testbed.simulate.simulator import simulate_events

    flows = [_flow("ab", "a", "b", ensure=True, count=6, sizes=(100, 5000)),
             _flow("ba", "b", "a", ensure=False, count=3, sizes=(700,))]
    codes, _ = _run_agents(tmp_path, ["a", "b"], ["a", "b"], flows, span_s=6.0)
    assert codes == {"a": 0, "b": 0}, _logs(tmp_path, "ab")
    topo = Topology("t", ("a", "b"), LinkSpec(), flows=tuple(
        Flow(**{**f, "sizes": tuple(f["sizes"])}) for f in flows))
    simulated, _ = simulate_events(topo)

    def untimed(events):
        return sorted(json.dumps({k: v for k, v in e.items() if k != "t"}, sort_keys=True)
                      for e in events)
    emulated = load_events(tmp_path)
    assert len(emulated) == len(simulated) == 3 * 9    # send, deliver, complete
    assert untimed(emulated) == untimed(simulated)
