"""The fault timeline's ``restart`` (a device reboot) end to end, on netns
and docker: a kill at 1.05 s then a restart at 2.55 s, and a restart
alone. The restarted agent appends to its events file, sends what is
planned from the restart on, the peer's ensure=True messages sent while it
was down arrive after the reboot, every agent exits 0, and the simulator
predicts the same deliveries.

Only this module's own runs are checked for leftovers."""
from __future__ import annotations

import os
import re
import textwrap

import pytest

from testbed.emulate.run import run_emulation
from testbed.pipelines.evaluate import compare_run
from testbed.simulate.host import HostModel
from testbed.simulate.simulator import simulate_host
from testbed.spec.topology import load_topology
from testbed.analysis.stats import load_events

pytestmark = [pytest.mark.e2e]

KILL, UP = 1.05, 2.55
PAIR = """
name: rs-{kind}
seed: 1
ensembles: [a, b]
defaults: {{delay: 10ms}}
flows:
  - {{name: to-b, from: a, to: b, size: 2KB, count: 40, interval: 100ms, ensure: true, deadline: 20s}}
  - {{name: from-b, from: b, to: a, size: 128, count: 40, interval: 100ms, deadline: 2s}}
events:
{events}"""
EVENTS = {
    "reboot": f"  - {{at: {KILL}s, ensemble: b, action: kill}}\n"
              f"  - {{at: {UP}s, ensemble: b, action: restart}}\n",
    "instant": f"  - {{at: {UP}s, ensemble: b, action: restart}}\n",
}


def _backends():
    out = [pytest.param("netns", marks=pytest.mark.skipif(os.geteuid() != 0,
                                                            reason="netns needs root"))]
    from testbed.emulate.backends.docker import client_or_none
    out.append(pytest.param("docker", marks=pytest.mark.skipif(
        client_or_none() is None, reason="no docker engine")))
    return out


def _by_message(events, t0: float):
    sends, first = {}, {}
    for e in events:
        key = (e.get("flow"), e.get("msg"))
        if e.get("event") == "send":
            sends[key] = e["t"] - t0
        elif e.get("event") == "deliver" and e.get("intact", True):
            first[key] = min(e["t"] - t0, first.get(key, float("inf")))
    return {k: (t, first.get(k)) for k, t in sends.items()}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kind", ["reboot", "instant"])
def test_restart_reboots_the_ensemble_as_the_simulator_predicts(tmp_path, backend, kind):
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(PAIR.format(kind=kind, events=EVENTS[kind])))
    topo = load_topology(path)
    paths: list[str] = []
    res = run_emulation(topo, backend, tmp_path / "results",
                        extra_setup=lambda hosts: paths.extend(
                            h.netns_path for h in hosts.values()))
    meta = res.meta
    if backend == "netns":
        assert paths and not [p for p in paths if os.path.exists(p)], "hosts left behind"
    assert meta["exit_codes"] == {"a": 0, "b": 0}, (meta, res.run_dir)
    applied = meta["events_applied"]
    assert len(applied) == len(topo.events) and not [a for a in applied if "error" in a]
    outcome = meta["outcomes"]["b"]
    assert outcome["restart"]["incarnation"] == 2 and outcome["exit_code"] == 0
    down = {k for k in range(40) if KILL <= k * 0.1 < UP} if kind == "reboot" else set()
    # When the kill took effect: `docker kill` takes ~0.1 s, in which b may still send.
    killed_at = applied[0]["t"] + applied[0]["took_s"] if kind == "reboot" else UP

    # b's events file holds both incarnations: sends before the kill and after the restart
    lines = (res.run_dir / "events-b.jsonl").read_text().splitlines()
    t0 = meta["start_at"]
    emu = _by_message(load_events(res.run_dir), t0)
    b_sends = sorted(t for (f, _), (t, _) in emu.items() if f == "from-b")
    assert lines and b_sends[0] < KILL and b_sends[-1] > UP
    sent_b = {k for (f, k) in emu if f == "from-b"}
    # every message planned outside the outage was sent; one planned in it
    # only if the old agent sent it before the kill took effect; the others
    # are counted not sent (down), not as a failure
    assert set(range(40)) - down <= sent_b, sorted(set(range(40)) - down - sent_b)
    assert all(emu[("from-b", k)][0] < killed_at + 0.02 for k in sent_b & down)
    assert len(sent_b) + sum(outcome["not_sent_down"].values()) == 40, outcome
    # the peer's ensured messages: all arrive, those sent while b was down after its reboot
    to_b = {k: v for (f, k), v in emu.items() if f == "to-b"}
    assert len(to_b) == 40 and all(d is not None for _, d in to_b.values())
    if kind == "reboot":
        outage = [(t, d) for t, d in to_b.values() if killed_at + 0.02 <= t < UP]
        assert len(outage) >= 5 and all(d >= UP for _, d in outage), outage

    # the reboot keeps the host's network: its link's 10 ms still delays
    # the fresh agent's messages (~3 one-way trips each)
    after = sorted(d - t for (f, k), (t, d) in emu.items()
                   if f == "from-b" and k * 0.1 >= UP + 0.8 and d is not None)
    assert len(after) >= 5 and 0.025 < after[len(after) // 2] < 0.2, after
    assert outcome["restart"]["boot_s"] > 0, outcome["restart"]

    # the simulator predicts the same deliveries
    events, _ = simulate_host(topo, HostModel.from_calibration(None), seed=topo.seed)
    sim = _by_message(events, 0.0)
    sim_sent = {k for (f, k) in sim if f == "from-b"}
    assert sim_sent == set(range(40)) - down and sim_sent ^ sent_b <= down
    assert all(d is not None for (f, _), (_, d) in sim.items() if f == "to-b")
    # (b's messages sent before its kill took effect aside: the simulated kill is instant)
    late = {("from-b", k) for k in sent_b & down}
    delivered = {key for key, (_, d) in emu.items() if d is not None} - late
    sim_delivered = {key for key, (_, d) in sim.items() if d is not None}
    assert len(delivered ^ sim_delivered) <= 2, sorted(delivered ^ sim_delivered)
    if backend == "netns" and kind == "reboot":     # the report says what a reboot costs
        _, _, report = compare_run(res.run_dir, replications=2)
        text = report.read_text()
        assert "fault timeline: 2 of 2 events applied" in text
        assert re.search(r"restart: the fresh agent's boot time .*: b \d+\.\d\d s", text), text
