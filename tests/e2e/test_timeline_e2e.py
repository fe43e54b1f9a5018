"""The fault timeline end to end on the netns backend: an outage and a delay
change applied to the running impairment engine, pause/resume and kill of
ensembles, each measured and compared with the simulator's prediction of
the same timeline; and `testbed set` changing a link of a held `up`,
measured with ping from inside a host.

Only this module's own runs are checked for leftovers (their namespace
paths, their `up` process); other runs may be live on the machine."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.emulate.run import run_emulation
from testbed.pipelines.evaluate import compare_run
from testbed.simulate.host import HostModel
from testbed.simulate.simulator import simulate_host
from testbed.spec.quantiles import percentile
from testbed.spec.topology import load_topology
from testbed.analysis.stats import load_events

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]

# The shape of the shipped `pair` (best-effort tokens and replies, ensured
# control messages), with small counts: flows run 7.5 s.
OUTAGE = """
name: tl-outage
seed: 1
ensembles: [a, b]
defaults: {delay: 10ms}
flows:
  - {name: tokens, from: a, to: b, sizes: [64, 128, 256], count: 150, interval: 50ms, deadline: 2s}
  - {name: control, from: a, to: b, size: 4KB, count: 75, interval: 100ms, ensure: true, deadline: 10s}
  - {name: replies, from: b, to: a, size: 128, count: 150, interval: 50ms, deadline: 2s}
events:
  # between two sends (every 50 ms, a message takes ~3 one-way trips)
  - {at: 2.04s, link: a<->b, set: {loss: 100%}}
  - {at: 4.04s, link: a<->b, set: {loss: 0%}}
  - {at: 5.04s, link: a<->b, set: {delay: 50ms}}
"""
OUT_FROM, OUT_TO, DELAY_AT = 2.04, 4.04, 5.04

PAUSE = """
name: tl-pause
ensembles: [a, b, c]
defaults: {delay: 10ms}
flows:
  - {name: to-b, from: a, to: b, size: 2KB, count: 30, interval: 100ms, ensure: true, deadline: 5s}
  - {name: from-b, from: b, to: a, size: 128, count: 30, interval: 100ms, deadline: 2s}
  - {name: to-c, from: a, to: c, size: 128, count: 30, interval: 100ms, deadline: 2s}
  - {name: from-c, from: c, to: a, size: 128, count: 30, interval: 100ms, deadline: 2s}
events:
  - {at: 1.04s, ensemble: b, action: pause}
  - {at: 2.04s, ensemble: b, action: resume}
  - {at: 1.54s, ensemble: c, action: kill}
"""

TWO = """
name: tl-two
ensembles: [a, b]
links:
  a<->b: {delay: 10ms}
flows: []
"""


def _topology(tmp_path: Path, text: str):
    path = tmp_path / "topology.yaml"
    path.write_text(textwrap.dedent(text))
    return load_topology(path)


def _emulate(tmp_path: Path, topo):
    """Run on netns; returns (result, netns paths of this run's hosts)."""
    paths: list[str] = []
    res = run_emulation(topo, "netns", tmp_path / "results",
                        extra_setup=lambda hosts: paths.extend(
                            h.netns_path for h in hosts.values()))
    assert paths and not [p for p in paths if os.path.exists(p)], "hosts left behind"
    return res, paths


def _by_message(events, t0: float):
    """(send time from t0, first intact delivery from t0 or None) by (flow, msg)."""
    sends, first = {}, {}
    for e in events:
        key = (e.get("flow"), e.get("msg"))
        if e.get("event") == "send":
            sends[key] = e["t"] - t0
        elif e.get("event") == "deliver" and e.get("intact", True):
            first[key] = min(e["t"] - t0, first.get(key, float("inf")))
    return {k: (t, first.get(k)) for k, t in sends.items()}


def _simulated(topo):
    events, _ = simulate_host(topo, HostModel.from_calibration(None), seed=topo.seed)
    return _by_message(events, 0.0)


def _ratio(msgs, flow):
    mine = [d for (f, _), (_, d) in msgs.items() if f == flow]
    return sum(d is not None for d in mine) / len(mine)


def _p50(msgs, flow, lo=0.0, hi=float("inf")):
    return percentile([d - t for (f, _), (t, d) in msgs.items()
                       if f == flow and d is not None and lo <= t < hi], 50)


def _applied_on_time(meta, n):
    applied = meta["events_applied"]
    assert len(applied) == n and not [a for a in applied if "error" in a], applied
    for a in applied:
        assert 0 <= a["t"] - a["at"] < 0.05, a


@pytest.mark.timeout(180)
def test_outage_and_delay_change_as_the_simulator_predicts(tmp_path):
    topo = _topology(tmp_path, OUTAGE)
    res, _ = _emulate(tmp_path, topo)
    meta = res.meta
    assert meta["exit_codes"] == {"a": 0, "b": 0}, meta      # every ensured one arrived
    _applied_on_time(meta, 3)
    emu = _by_message(load_events(res.run_dir), meta["start_at"])
    sim = _simulated(topo)

    for flow in ("tokens", "replies"):
        # best effort: what was sent during the outage is lost, the rest arrives
        during = {k for (f, k), (t, _) in emu.items() if f == flow and OUT_FROM <= t < OUT_TO}
        lost = {k for (f, k), (_, d) in emu.items() if f == flow and d is None}
        assert len(during) == 40 and lost == during, (flow, sorted(lost ^ during))
        sim_lost = {k for (f, k), (_, d) in sim.items() if f == flow and d is None}
        assert len(lost ^ sim_lost) <= 3, (flow, sorted(lost ^ sim_lost))
        assert abs(_ratio(emu, flow) - _ratio(sim, flow)) <= 0.02
    # ensured: every one arrives, those sent during the outage after it
    control = {k: v for (f, k), v in emu.items() if f == "control"}
    assert len(control) == 75 and all(d is not None for _, d in control.values())
    late = [(t, d) for t, d in control.values() if OUT_FROM <= t < OUT_TO]
    assert late and all(d >= OUT_TO for _, d in late)
    for lo, hi in ((0.0, 99.0), (OUT_FROM, OUT_TO)):
        e, s = _p50(emu, "control", lo, hi), _p50(sim, "control", lo, hi)
        assert abs(s - e) / e <= 0.25, (lo, hi, e, s)
    # the live delay change: ~3 one-way trips per message, at 10 ms then at 50 ms
    before, after = _p50(emu, "tokens", 0.2, OUT_FROM), _p50(emu, "tokens", DELAY_AT + 0.1)
    assert 0.025 < before < 0.045 and 0.145 < after < 0.175, (before, after)
    assert abs(_p50(sim, "tokens", DELAY_AT + 0.1) - after) / after <= 0.1
    # the report draws latency over time with the events
    _, _, report = compare_run(res.run_dir, replications=2)
    text = report.read_text()
    assert "## Latency over time" in text and (res.run_dir / "latency-time.png").exists()
    assert "fault timeline: 3 of 3 events applied" in text


@pytest.mark.timeout(180)
def test_pause_resume_and_kill_as_the_simulator_predicts(tmp_path):
    topo = _topology(tmp_path, PAUSE)
    res, _ = _emulate(tmp_path, topo)
    meta = res.meta
    # the killed agent's code is reported; the run still ended and tore down
    assert meta["exit_codes"] == {"a": 0, "b": 0, "c": -9}, meta
    assert meta["outcomes"]["c"].get("missing") is True
    _applied_on_time(meta, 3)
    emu = _by_message(load_events(res.run_dir), meta["start_at"])
    sim = _simulated(topo)
    # to the paused ensemble: sent on time, all delivered, after the resume
    paused = [(t, d) for (f, _), (t, d) in emu.items() if f == "to-b" and 1.1 <= t < 2.0]
    assert len(paused) >= 8 and all(d is not None and d >= 2.04 for _, d in paused)
    assert all(d is not None for (f, _), (_, d) in emu.items() if f == "to-b")
    # from the paused ensemble: what fell due during the pause went at the resume
    due = {k for k in range(30) if 1.04 < k * 0.1 < 2.04}
    late = {k for (f, k), (t, _) in emu.items() if f == "from-b" and 2.04 <= t < 2.1}
    assert due and due <= late, (sorted(due), sorted(late))
    # the killed ensemble: nothing from it after the kill, nothing to it arrives
    assert max(t for (f, _), (t, _) in emu.items() if f == "from-c") < 1.54
    to_c = {k for (f, k), (_, d) in emu.items() if f == "to-c" and d is not None}
    sim_to_c = {k for (f, k), (_, d) in sim.items() if f == "to-c" and d is not None}
    assert len(to_c ^ sim_to_c) <= 1 and max(to_c) <= 16, (to_c, sim_to_c)
    for flow in ("to-b", "from-b"):
        e, s = _p50(emu, flow), _p50(sim, flow)
        assert abs(s - e) / e <= 0.25, (flow, e, s)
    assert _ratio(emu, "from-b") == _ratio(sim, "from-b") == 1.0


def _ping_ms(ns: str, ip: str, count: int = 10) -> tuple[float, int]:
    """(average RTT in ms, packets received) of a bounded ping from inside ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count),
                          "-i", "0.05", "-W", "1", ip], capture_output=True, text=True,
                         timeout=30).stdout
    received = int(re.search(r"(\d+) received", out).group(1))
    avg = re.search(r"= [\d.]+/([\d.]+)/", out)
    return (float(avg.group(1)) if avg else float("nan")), received


def _set(results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", "--results", str(results),
                           "set", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(180)
def test_set_changes_a_link_of_a_held_up(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent(TWO))
    results = tmp_path / "results"
    from tests.e2e.test_hands_on import held_up
    with held_up(path, "netns", results) as state:
        hosts = state["hosts"]
        assert set(hosts) == {"a", "b"}
        ns_a, ip_b = Path(hosts["a"]["netns_path"]).name, hosts["b"]["ip"]
        run_id = state["run_id"]      # other `up`s may be live on this machine
        before, got = _ping_ms(ns_a, ip_b)
        assert got == 10 and 19 < before < 26, before             # 10 ms each way
        done = _set(results, "--run", run_id, "a->b", "delay=50ms")
        assert done.returncode == 0, done.stderr
        assert "a->b now delay=50ms" in done.stdout
        after, got = _ping_ms(ns_a, ip_b)
        assert got == 10 and 59 < after < 66, after                # 50 + 10 ms
        done = _set(results, "--run", run_id, "a<->b", "delay=0", "loss=100%")
        assert done.returncode == 0, done.stderr
        assert _ping_ms(ns_a, ip_b, count=5)[1] == 0
        done = _set(results, "--run", run_id, "a<->b", "loss=0%")
        assert done.returncode == 0 and _ping_ms(ns_a, ip_b)[0] < 5
        for bad, words in ((("a->x", "delay=1ms"), "unknown ensemble 'x'"),
                           (("a->b", "delay=1"), "no unit"),
                           (("a->b", "latency=1ms"), "unknown link field")):
            done = _set(results, "--run", run_id, *bad)
            assert done.returncode == 2 and words in done.stderr, done.stderr
    done = _set(results, "--run", run_id, "a->b", "delay=1ms")
    assert done.returncode == 2, done.stderr
    assert "testbed up` is holding" in done.stderr or "matches no live" in done.stderr
    assert not list(results.glob("*/*/control"))
