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
    "RTO x2": "the judged flows recover losses mostly by fast retransmission; "
              "timer-driven recovery is rarer than 1 message in 20",
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
