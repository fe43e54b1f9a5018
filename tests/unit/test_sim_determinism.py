"""The simulator is seeded and deterministic: a topology + seed + host model
gives the same event log every time, and the same one as before any change
meant only to make it faster. The golden digests below were recorded from
the simulator as it was before its speed-ups (issue 13); a change of the
model itself (the engine's timing, the link or host model, the event
schema) changes them on purpose: then re-record them (run this file with
``-s``; a failing digest prints the new value) and say why in the commit."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from testbed.simulate.host import HostModel
from testbed.simulate.simulator import simulate_host
from testbed.spec.topology import load_topology_text

APPS = Path(__file__).resolve().parents[1] / "data" / "apps"

#: Every link feature (delay, jitter, loss, rate, duplicate, corrupt), a
#: multi-packet ensure=True flow, best-effort messages with deadlines, and
#: a fault timeline (link change, pause/resume, partition/heal, kill).
#: No ``cpus:`` limits: that model is owned elsewhere and may change.
LINKS = """
name: golden-links
seed: 7
ensembles: [a, b, c]
defaults: {delay: 4ms, jitter: 1ms, loss: 3%}
links:
  a->b: {delay: 10ms, jitter: 3ms, loss: 5%, rate: 2mbit, duplicate: 2%, corrupt: 1%}
  b->a: {delay: 10ms, loss: 5%, rate: 5mbit}
flows:
  - {name: bulk, from: a, to: b, size: 6KB, count: 25, interval: 120ms, ensure: true, deadline: 4s}
  - {name: tokens, from: b, to: c, sizes: [64, 300], count: 60, interval: 40ms, ensure: false, deadline: 1s, start: 3ms}
  - {name: back, from: c, to: a, size: 1500, count: 30, interval: 90ms, ensure: true, deadline: 3s, start: 7ms}
events:
  - {at: 0.8s, link: a<->b, set: {loss: 30%}}
  - {at: 1.2s, link: a<->b, set: {loss: 5%}}
  - {at: 1.5s, ensemble: c, action: pause}
  - {at: 1.9s, ensemble: c, action: resume}
  - {at: 2.2s, partition: [[a, b], [c]]}
  - {at: 2.5s, heal: true}
  - {at: 3.1s, ensemble: c, action: kill}
"""

#: Two apps (testbed.spec.app) on simulated time next to a synthetic flow.
APP_TOPOLOGY = """
name: golden-apps
seed: 3
ensembles:
  ping: {app: echo.py:ping}
  pong: {app: echo.py:pong}
duration: 3s
defaults: {delay: 10ms, loss: 2%}
flows:
  - {name: bulk, from: ping, to: pong, size: 3KB, count: 10, interval: 200ms, ensure: true}
"""

HOST = HostModel(2e-5, 4e-4, (-1e-4, 0.0, 5e-5, 2e-4, 1.5e-3), "test")

#: sha256 (first 16 hex digits) of the events (JSON, sorted keys) and the
#: link counters, recorded before the simulator's speed-ups.
GOLDEN = {
    ("links", 7): "e3a802209ef33701",
    ("links", 8): "e24c1fcac9473040",
    ("apps", 3): "6f8cc5a95ccfdc41",
}


def _topology(which: str):
    if which == "links":
        return load_topology_text(LINKS, "golden-links.yaml")
    return load_topology_text(APP_TOPOLOGY, "golden-apps.yaml", base_dir=APPS)


def _run(which: str, seed: int) -> tuple[list[dict], dict]:
    events, counters = simulate_host(_topology(which), HOST, seed)
    return events, counters["_links"]


def _digest(events: list[dict], links: dict) -> str:
    blob = json.dumps({"events": events, "links": links}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.parametrize("which, seed", sorted(GOLDEN))
def test_simulated_event_log_matches_the_recorded_golden_digest(which, seed):
    events, links = _run(which, seed)
    digest = _digest(events, links)
    print(f"{which} seed {seed}: {digest} ({len(events)} events, {links})")
    assert events, "the golden run logged nothing"
    assert digest == GOLDEN[(which, seed)]


@pytest.mark.parametrize("which", ["links", "apps"])
def test_same_seed_twice_gives_identical_events_in_identical_order(which):
    a = _run(which, 11)
    b = _run(which, 11)
    assert a == b
    assert a != _run(which, 12)


def test_the_simulators_event_loop_runs_events_as_simpys_own_does(monkeypatch):
    # run_until calls the simulator's own events directly; simpy's
    # Environment.run (through their ``callbacks``) must give the same run.
    fast = _run("links", 7)
    import ttnet.sim
    monkeypatch.setattr(ttnet.sim, "run_until", lambda env, until: env.run(until=until))
    assert _run("links", 7) == fast


def test_importing_ttnet_and_the_agent_loads_no_simpy():
    # The guest image has no simpy: ttnet.sim imports it only inside the
    # functions that drive a simulation (pyproject's import contract
    # ignores that import for this reason).
    import subprocess
    import sys
    code = ("import sys, ttnet, ttnet.sim, testbed.guest.agent\n"
            "assert 'simpy' not in sys.modules, sorted(m for m in sys.modules if 'simpy' in m)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
