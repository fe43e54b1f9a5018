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


def _load_recorded(run_dir: Path):
    """(topology, the calibration pinned beside the run, emulated stats)."""
    topo = load_topology(run_dir / "topology.yaml")
    host = HostModel.from_calibration(json.loads((run_dir / "calibration.json").read_text()))
    return topo, host, flow_stats(load_events(run_dir))


@pytest.fixture(scope="module")
def recorded():
    return _load_recorded(RUN)


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
    return _load_recorded(RTO_RUN)


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


# --- the third recorded run: a LAN, where the hosts' CPU cost shows ---------
#: tests/data/fidelity/power-lan-run, recorded on the docker backend
#: (NFQUEUE) from tests/data/fidelity/power-lan.yaml right after its
#: calibration (pinned beside it: 18.1 us of agent CPU and 20.9 us of daemon
#: CPU per datagram, 2 cores): 400 KB transfers and 256-byte messages, both
#: ensure=True, over a lossless 1 ms link. The transfers are CPU-bound, so a
#: model charging three times the CPU per datagram predicts them far too
#: slow. Three recordings in a row (2026-12-03) gave the same outcome for
#: every mutation below: the faithful model 2 pass / 0 fail / 4
#: undetermined, host cost x3 caught by the transfers' p50 (and in two of
#: them the small messages' p50 too).
LAN_RUN = Path(__file__).resolve().parents[1] / "data" / "fidelity" / "power-lan-run"
#: The mutations that change this topology (no jitter, loss or rate).
LAN_APPLIES = {"delay x1.3", "delay x0.77", "RTO x2", "one direction only", "host cost x3"}


@pytest.fixture(scope="module")
def recorded_lan():
    return _load_recorded(LAN_RUN)


def test_third_recorded_run_is_whole_and_its_faithful_model_does_not_fail(recorded_lan):
    topo, host, emu = recorded_lan
    assert host.emulator_cost_s and host.cores == 2          # the machine model is in it
    assert all(emu[f.name].sent == emu[f.name].delivered == f.count for f in topo.flows)
    verdict = judge_against(emu, topo, host, replications=REPLICATIONS)
    assert verdict.ok, verdict.failures
    assert len(verdict.passed) >= 2, verdict.counts()


@pytest.mark.parametrize("mutation", [pytest.param(m, id=m.name) for m in MUTATIONS
                                      if m.name in LAN_APPLIES])
def test_wrong_model_fails_on_a_lan(recorded_lan, mutation):
    topo, host, emu = recorded_lan
    verdict = judge_against(emu, mutation.topology(topo), mutation.host(host),
                            mutation.engine, replications=REPLICATIONS)
    assert not verdict.ok and verdict.outcome == "FAIL", verdict.counts()


def test_every_listed_mutation_is_caught_by_one_recorded_run():
    """The union of the three runs catches every listed mutation (each
    test above pins its run's share). Host cost x3 escapes the first two
    (10-20 ms links) and is caught on the LAN."""
    names = {m.name for m in MUTATIONS}
    first, second = names - set(NOT_CAUGHT), RTO_APPLIES - set(RTO_NOT_CAUGHT)
    assert "host cost x3" not in first | second
    assert first | second | LAN_APPLIES == names
