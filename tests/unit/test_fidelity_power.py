"""The fidelity verdict can fail and can pass: one recorded emulated run
(tests/data/fidelity/power-run, made with `testbed.emulate.run.run_emulation` on
the Docker backend from tests/data/fidelity/power.yaml, with the
calibration measured just before it) judged against the faithful model and
against deliberately wrong ones (testbed.pipelines.power.MUTATIONS). Simulation only:
no emulation runs here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.pipelines.power import MUTATIONS, judge_against
from testbed.simulate.host import HostModel
from testbed.analysis.stats import flow_stats, load_events
from testbed.spec.topology import load_topology

RUN = Path(__file__).resolve().parents[1] / "data" / "fidelity" / "power-run"
#: Fewer than the default 20 replications keeps this test near 3 minutes;
#: the design effect still has 10 runs to be measured from.
REPLICATIONS = 10
#: The flows judged. The recorded run also has `lan-bulk` (100 KB over a
#: 1 ms link), which the faithful model itself FAILs (simulated p50 about a
#: third of the emulated one: bulk transfers on LAN links are not modelled
#: well yet, docs/simulation.md), so it cannot tell a wrong model.
JUDGED = {"tokens", "replies", "control"}
#: Mutations this recorded run does not catch (measured; docs/simulation.md
#: has the table): strict xfail, so catching one turns this list red.
NOT_CAUGHT = {
    "loss x0.5": "2% -> 1% loss changes best-effort delivery by 2 points (the tolerance) and "
                 "4 KB messages' p95 by less than the interval's width",
    "host cost x3": "CPU cost shows in bulk transfers on fast links, and the model of "
                    "those (lan-bulk) fails even when faithful",
}


@pytest.fixture(scope="module")
def recorded():
    topo = load_topology(RUN / "topology.yaml")
    host = HostModel.from_calibration(json.loads((RUN / "calibration.json").read_text()))
    return topo, host, flow_stats(load_events(RUN))


def test_the_recorded_run_is_whole(recorded):
    topo, _, emu = recorded
    assert set(emu) == {f.name for f in topo.flows}
    assert all(s.sent == f.count for f in topo.flows for s in [emu[f.name]])
    assert emu["control"].delivered == emu["control"].sent       # ensure=True


def test_faithful_model_does_not_fail(recorded):
    topo, host, emu = recorded
    verdict = judge_against(emu, topo, host, replications=REPLICATIONS, flows=JUDGED)
    assert verdict.ok, verdict.failures
    assert len(verdict.passed) >= 6, verdict.counts()


@pytest.mark.parametrize("mutation", [
    pytest.param(m, id=m.name, marks=[pytest.mark.xfail(strict=True, reason=NOT_CAUGHT[m.name])]
                 if m.name in NOT_CAUGHT else [])
    for m in MUTATIONS])
def test_wrong_model_fails(recorded, mutation):
    topo, host, emu = recorded
    verdict = judge_against(emu, mutation.topology(topo), mutation.host(host),
                            mutation.engine, replications=REPLICATIONS, flows=JUDGED)
    assert not verdict.ok and verdict.outcome == "FAIL", verdict.counts()


# --- the second recorded run: losses recovered by timers ---------------------
#: tests/data/fidelity/power-rto-run, recorded on the netns backend from
#: tests/data/fidelity/power-rto.yaml right after its calibration (pinned
#: beside it): a 10 ms link with 10% loss both ways and no jitter; 1500
#: single-packet ensure=True messages (every loss is recovered by a timer:
#: there is no later packet to trigger a fast retransmission) and 1500
#: best-effort tokens (their delivery share is about (1 - loss)^2).
RTO_RUN = Path(__file__).resolve().parents[1] / "data" / "fidelity" / "power-rto-run"
#: The mutations that change this topology (it has no jitter and no rate).
RTO_APPLIES = {"delay x1.3", "delay x0.77", "loss x2", "loss x0.5", "RTO x2",
               "one direction only", "host cost x3"}
RTO_NOT_CAUGHT = {
    "host cost x3": "27 us x 3 per datagram moves 30 ms latencies by well under the 5% band",
}


@pytest.fixture(scope="module")
def recorded_rto():
    topo = load_topology(RTO_RUN / "topology.yaml")
    host = HostModel.from_calibration(json.loads((RTO_RUN / "calibration.json").read_text()))
    return topo, host, flow_stats(load_events(RTO_RUN))


def test_second_recorded_run_is_whole_and_its_faithful_model_does_not_fail(recorded_rto):
    topo, host, emu = recorded_rto
    assert all(emu[f.name].sent == f.count for f in topo.flows)
    assert emu["pings"].delivered == emu["pings"].sent
    verdict = judge_against(emu, topo, host, replications=REPLICATIONS)
    assert verdict.ok, verdict.failures
    assert len(verdict.passed) >= 4, verdict.counts()


@pytest.mark.parametrize("mutation", [
    pytest.param(m, id=m.name,
                 marks=[pytest.mark.xfail(strict=True, reason=RTO_NOT_CAUGHT[m.name])]
                 if m.name in RTO_NOT_CAUGHT else [])
    for m in MUTATIONS if m.name in RTO_APPLIES])
def test_wrong_model_fails_on_timer_recovered_losses(recorded_rto, mutation):
    topo, host, emu = recorded_rto
    verdict = judge_against(emu, mutation.topology(topo), mutation.host(host),
                            mutation.engine, replications=REPLICATIONS)
    assert not verdict.ok and verdict.outcome == "FAIL", verdict.counts()


def test_every_listed_mutation_is_caught_by_one_recorded_run_but_host_cost():
    """The union of the two runs: only host cost x3 escapes both (measured)."""
    escaped = set(NOT_CAUGHT) & (set(RTO_NOT_CAUGHT) | {m.name for m in MUTATIONS
                                                        if m.name not in RTO_APPLIES})
    assert escaped == {"host cost x3"}
