"""The fault timeline's ``restart`` (a device reboot): how the loader reads
it, what the simulator makes of it, the agent's bookkeeping of a fresh
incarnation and what the emulation's timeline tells the backend."""
from __future__ import annotations

import json
import re
import textwrap
import time

import pytest

from testbed.emulate.timeline import TimelineRunner
from testbed.guest.agent import EXIT_OK, Outcome, _sent_before, restart_marker
from testbed.simulate.simulator import simulate_events
from testbed.spec.model import EnsembleEvent
from testbed.spec.timeline import first_due_from, steps
from testbed.spec.topology import TopologyError, load_topology_text

BASE = textwrap.dedent("""\
    name: rs
    seed: 3
    ensembles: [a, b]
    defaults: {delay: 10ms}
    flows:
      - {name: to-b, from: a, to: b, size: 2KB, count: 40, interval: 100ms, ensure: true, deadline: 10s}
      - {name: from-b, from: b, to: a, size: 128, count: 40, interval: 100ms, deadline: 2s}
    """)
KILL, UP = 1.05, 2.05


def load(text: str):
    return load_topology_text(text, "t.yaml")


def _events(*lines: str) -> str:
    return BASE + "events:\n" + "".join(f"  - {line}\n" for line in lines)


# --- the loader --------------------------------------------------------------------

def test_restart_is_accepted_alone_after_a_kill_and_after_a_pause():
    alone = load(_events("{at: 2s, ensemble: b, action: restart}"))
    assert alone.events == (EnsembleEvent(2.0, "b", "restart"),)
    assert steps(alone)[0].action == ("b", "restart") and steps(alone)[0].links == {}
    reboot = load(_events("{at: 4s, ensemble: b, action: restart}",
                          "{at: 2s, ensemble: b, action: kill}",
                          "{at: 5s, ensemble: b, action: pause}",
                          "{at: 6s, ensemble: b, action: restart}"))
    assert [e.action for e in reboot.events] == ["kill", "restart", "pause", "restart"]


@pytest.mark.parametrize("events, where, words", [
    (["{at: 1s, ensemble: b, action: kill}", "{at: 2s, ensemble: b, action: pause}"],
     "events[1].action", "killed earlier"),
    (["{at: 1s, ensemble: x, action: restart}"], "events[0].ensemble", "unknown ensemble"),
    (["{at: 1s, ensemble: b, action: reboot}"], "events[0].action", "unknown action"),
    (["{at: 1s, ensemble: b, action: restart}", "{at: 2s, ensemble: b, action: resume}"],
     "events[1].action", "not paused"),
])
def test_restart_errors_say_where_and_how(events, where, words):
    with pytest.raises(TopologyError) as err:
        load(_events(*events))
    e = err.value
    assert e.entry == where and words in e.problem and e.fix, str(e)
    assert re.match(r"t\.yaml:\d+:\d+: ", str(e)), str(e)
    if "killed earlier" in words:
        assert "restart" in e.fix


def test_first_due_from():
    f = {"start_s": 0.5, "interval_s": 0.1, "count": 10}
    assert first_due_from(f, 0.0) == 0 and first_due_from(f, 0.8) == 3
    assert first_due_from(f, 0.85) == 4 and first_due_from(f, 9.0) == 10


# --- the simulator --------------------------------------------------------------------

def _by_msg(events):
    sends, first = {}, {}
    for e in events:
        key = (e.get("flow"), e.get("msg"))
        if e["event"] == "send":
            sends[key] = e["t"]
        elif e["event"] == "deliver" and e.get("intact", True):
            first.setdefault(key, e["t"])
    return sends, first


def test_simulated_kill_then_restart_reboots_the_ensemble():
    topo = load(_events(f"{{at: {KILL}s, ensemble: b, action: kill}}",
                        f"{{at: {UP}s, ensemble: b, action: restart}}"))
    events, _ = simulate_events(topo)
    sends, first = _by_msg(events)
    # from b: what fell due while it was down was never sent; the rest was
    down = {k for k in range(40) if KILL <= k * 0.1 < UP}
    from_b = {k for (f, k) in sends if f == "from-b"}
    assert from_b == set(range(40)) - down and len(down) == 10
    after = [sends[("from-b", k)] for k in from_b if k * 0.1 >= UP]
    assert after and min(after) >= UP
    # to b: every ensured message arrives, those sent while b was down after the reboot
    assert all(("to-b", k) in first for k in range(40))
    outage = [k for k in range(40) if KILL <= sends[("to-b", k)] < UP]
    assert len(outage) == 10 and all(first[("to-b", k)] >= UP for k in outage)
    completes = {e["msg"] for e in events if e["event"] == "complete" and e["flow"] == "to-b"}
    assert completes == set(range(40))


def test_simulated_restart_alone_is_an_instant_reboot():
    topo = load(_events(f"{{at: {UP}s, ensemble: b, action: restart}}"))
    events, _ = simulate_events(topo)
    sends, first = _by_msg(events)
    assert {k for (f, k) in sends if f == "from-b"} == set(range(40))
    assert all(("to-b", k) in first for k in range(40))
    assert all(("from-b", k) in first for k in range(40))


def test_an_app_restarts_from_scratch_and_old_timers_die(tmp_path):
    app = tmp_path / "tick.py"
    app.write_text(textwrap.dedent("""\
        def main(ctx):
            ctx.record("boot", ctx.now())
            def tick():
                ctx.record("tick", ctx.now())
                ctx.call_later(0.5, tick)
            ctx.call_later(0.5, tick)
        """))
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent("""\
        name: rs-app
        ensembles: {a: {}, b: {app: tick.py}}
        duration: 3s
        flows: []
        events:
          - {at: 1.2s, ensemble: b, action: restart}
        """))
    from testbed.spec.topology import load_topology
    events, _ = simulate_events(load_topology(path))
    boots = [e for e in events if e.get("name") == "boot"]
    ticks = [e for e in events if e.get("name") == "tick"]
    assert len(boots) == 2, events
    # one tick chain before the reboot (0.5, 1.0), one after (1.7, 2.2, 2.7): no doubles
    times = sorted(round(e["t"], 3) for e in ticks)
    assert times == [0.5, 1.0, 1.7, 2.2, 2.7], times


# --- the agent's bookkeeping ---------------------------------------------------------

def test_messages_due_while_down_are_not_sent_but_not_a_failure():
    o = Outcome()
    o.not_sent_down("sure", 0, True)
    o.not_sent_down("best", 0, False)
    o.sent("sure", 1, True)
    o.resolved("sure", 1, True)
    o.freeze()
    s = o.summary("b")
    assert s["exit_code"] == EXIT_OK and s["ensure_failures"] == 0 and s["problems"] == []
    assert s["not_sent"] == 2 and s["not_sent_down"] == {"ensure": 1, "best_effort": 1}
    o2 = Outcome()
    o2.not_sent("sure", 0, True, "run end time came first")
    assert o2.exit_code != EXIT_OK          # the other not_sent still fails


def test_a_fresh_agent_reads_its_marker_and_what_it_sent_before(tmp_path):
    assert restart_marker(tmp_path, "b") is None
    (tmp_path / "restart-b.json").write_text(json.dumps({"incarnation": 2, "at": 2.05}))
    assert restart_marker(tmp_path, "b") == {"incarnation": 2, "at": 2.05}
    ev = tmp_path / "events-b.jsonl"
    ev.write_text('{"event": "send", "flow": "f", "msg": 0, "t": 1}\n'
                  '{"event": "deliver", "flow": "g", "msg": 0, "t": 1}\n'
                  '{"event": "send", "flow": "f", "ms')           # torn by the kill
    assert _sent_before(ev) == {("f", 0)}
    assert ev.read_text().endswith("\n")    # the next record starts on its own line


# --- the emulation's timeline ---------------------------------------------------------

class FakeBackend:
    def __init__(self):
        self.actions, self.expected = [], []

    def expect_restarts(self, due):
        self.expected.append(dict(due))

    def kill(self, name):
        self.actions.append(("kill", name))

    def restart(self, name):
        self.actions.append(("restart", name))


def test_the_timeline_marks_the_incarnation_and_tells_the_backend(tmp_path):
    topo = load(_events("{at: 0s, ensemble: b, action: kill}",
                        "{at: 0.05s, ensemble: b, action: restart}",
                        "{at: 0.1s, ensemble: b, action: restart}",
                        "{at: 900s, ensemble: b, action: restart}"))   # after the end
    backend = FakeBackend()
    now = time.time()
    runner = TimelineRunner(topo, {}, None, backend, now, now + 5.0, say=lambda _m: None,
                            run_dir=tmp_path)
    runner.start()
    deadline = time.time() + 5
    while len(backend.actions) < 3 and time.time() < deadline:
        time.sleep(0.01)
    runner.stop()
    assert backend.actions == [("kill", "b"), ("restart", "b"), ("restart", "b")]
    assert backend.expected == [{"b": 2}, {}]      # the late one is not waited for
    marker = json.loads((tmp_path / "restart-b.json").read_text())
    assert marker["incarnation"] == 3 and marker["at"] == 0.1 and marker["written"] > now
    assert not [a for a in runner.applied if "error" in a]


# --- the simulated interface's restart, protocol-level ------------------------------

def _pair(rate_bps=None):
    import simpy

    from ttnet import LinkParams, SimNetwork, TTNetworkInterfaceSim
    env = simpy.Environment()
    net = SimNetwork(env, LinkParams(delay_s=0.01, rate_bps=rate_bps), seed=5)
    got: list[bytes] = []
    a = TTNetworkInterfaceSim(env, net, "a")
    b = TTNetworkInterfaceSim(env, net, "b", receiver_function=lambda m: got.append(m.payload))
    return env, net, a, b, got


def _send(env, a, payload, outcome):
    from ttnet import TTNetworkMessageSim
    a.send(TTNetworkMessageSim("b", payload), ensure=True, deadline_s=60,
           after=lambda _m: outcome.append(("done", env.now)),
           on_failure=lambda _m, why: outcome.append(("failed", why)))


def test_an_ensured_message_in_flight_across_a_reboot_still_arrives_once():
    """b reboots mid-transfer: its fresh engine drops the rest of a message
    it never heard of; the sender, hearing nothing, restarts the send
    (stall_restart_s) and the message arrives whole, once."""
    env, _, a, b, got = _pair(rate_bps=2_000_000)
    payload, outcome = bytes(range(256)) * 1200, []          # ~300 KB: ~1.2 s on the link
    _send(env, a, payload, outcome)
    old = b.engine
    env.timeout(0.5).callbacks.append(lambda _e: b.restart())
    env.run(until=40)
    assert b.engine is not old and b.incarnation == 1 and b.state == "running"
    assert got == [payload] and outcome and outcome[0][0] == "done", outcome
    assert a.counters["send_restarted"] == 1 and b.counters["dropped_unknown_message"] > 0
    assert outcome[0][1] > a.engine.config.stall_restart_s


def test_a_reboot_forgets_completed_messages_so_a_duplicate_is_possible():
    """Only the ACKs are lost, then b reboots: its memory of the completed
    message is gone, so the sender's restarted send is delivered again
    (without the reboot it is answered from that memory: once)."""
    from ttnet import LinkParams
    for reboot, deliveries in ((False, 1), (True, 2)):
        env, net, a, b, got = _pair()
        payload, outcome = bytes(30_000), []
        _send(env, a, payload, outcome)
        env.timeout(0.015).callbacks.append(
            lambda _e, net=net: net.set_link("b", "a", LinkParams(delay_s=0.01, loss=1.0)))
        if reboot:
            env.timeout(1.0).callbacks.append(lambda _e, b=b: b.restart())
        env.timeout(5.0).callbacks.append(
            lambda _e, net=net: net.set_link("b", "a", LinkParams(delay_s=0.01)))
        env.run(until=40)
        assert len(got) == deliveries and outcome[0][0] == "done", (reboot, got, outcome)


def test_pending_callbacks_of_a_rebooted_sender_never_fire():
    env, net, a, b, got = _pair()
    from ttnet import LinkParams
    net.set_link("a", "b", LinkParams(delay_s=0.01, loss=1.0))
    outcome: list = []
    _send(env, a, bytes(1000), outcome)
    env.timeout(0.5).callbacks.append(lambda _e: a.restart())
    env.run(until=80)
    assert outcome == [] and got == [] and a.engine.pending_sends() == 0
