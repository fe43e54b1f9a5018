"""The fidelity verdict's statistics: intervals that cover, outcomes that
follow from them, error rates that hold (testbed.analysis.fidelity)."""
from __future__ import annotations

import random

import pytest

from testbed.analysis.compare import compare
from testbed.analysis.fidelity import (FAIL, PASS, UNDETERMINED, judge, newcombe,
                              order_statistic_bounds, quantile_design_effect,
                              quantile_interval, share_design_effect, wilson)
from testbed.analysis.stats import flow_stats


def run_events(latencies: dict[int, float | None], flow: str = "f1",
               ensure: bool = False) -> list[dict]:
    events = []
    for msg, lat in latencies.items():
        base = {"flow": flow, "msg": msg, "src": "a", "dst": "b", "size": 100, "ensure": ensure}
        events.append({"event": "send", "t": 1000.0 + msg, **base})
        if lat is not None:
            events.append({"event": "deliver", "t": 1000.0 + msg + lat, "intact": True, **base})
    return events


def sample(rng: random.Random, n: int, base: float = 0.060, spread: float = 0.004,
           loss: float = 0.0, offset: int = 0) -> dict[int, float | None]:
    return {offset + k: (None if rng.random() < loss else base + rng.expovariate(1 / spread))
            for k in range(n)}


def replications(seed: int, reps: int, n: int, **kw) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    pooled, per_run = [], []
    for r in range(reps):
        lat = sample(rng, n, offset=r * 1_000_000, **kw)
        events = run_events(lat)
        pooled += events
        per_run.append(flow_stats(events))
    return pooled, per_run


# --- intervals ---------------------------------------------------------------

def test_order_statistic_bounds_cover_the_median_of_small_samples_exactly():
    # n = 10, q = .5: P(x(2) <= Q < x(9)) = 1 - 2 * 11/1024 = 0.9785 >= 0.95
    assert order_statistic_bounds(10, 0.5, 0.05) == (2, 9)
    # too few samples for a 95% interval of the 95th percentile: unbounded above
    assert order_statistic_bounds(20, 0.95, 0.05)[1] is None


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_quantile_interval_covers_the_true_quantile_at_its_confidence(q):
    rng = random.Random(4)
    true_q = -0.01 * __import__("math").log(1 - q)       # exponential, mean 10 ms
    misses = 0
    for _ in range(400):
        xs = [rng.expovariate(100) for _ in range(200)]
        lo, hi = quantile_interval(xs, q, alpha=0.1)
        misses += not ((lo is None or lo <= true_q) and (hi is None or true_q <= hi))
    assert misses / 400 <= 0.1 + 0.04        # nominal 10%, binomial slack


def test_wilson_and_newcombe_handle_all_or_nothing_and_bracket_the_difference():
    lo, hi = wilson(100, 100, 1.96)
    assert hi == pytest.approx(1.0) and 0.95 < lo < 0.97
    lo, hi = newcombe(90, 100, 80, 100, 1.96)
    assert lo < 0.10 < hi and lo > -0.01


def test_design_effect_is_one_for_independent_samples_and_grows_with_correlation():
    rng = random.Random(1)
    runs = [[rng.random() for _ in range(200)] for _ in range(30)]
    assert quantile_design_effect([x for r in runs for x in r], runs, 0.5) < 2.0
    # each run shifted as a whole: its median moves far more than sampling does
    shifted = [[x + shift for x in r] for r, shift in ((r, rng.random()) for r in runs)]
    assert quantile_design_effect([x for r in shifted for x in r], shifted, 0.5) > 5
    assert share_design_effect([(50, 100)] * 10) == 1.0
    assert share_design_effect([(10, 100), (90, 100)] * 5) > 10


# --- outcomes ----------------------------------------------------------------

def test_faithful_model_with_enough_samples_passes_every_quantity():
    pooled, per_run = replications(1, 20, 2000, loss=0.03)
    emu = run_events(sample(random.Random(99), 2000, loss=0.03))
    verdict = judge(compare(emu, pooled), per_run)
    assert verdict.outcome == PASS, [j.describe() for j in verdict.judgements]
    assert [j.quantity for j in verdict.judgements] == ["delivery", "p50", "p95"]


@pytest.mark.parametrize("change", [dict(base=0.066), dict(spread=0.008), dict(loss=0.08)])
def test_wrong_model_fails(change):
    pooled, per_run = replications(1, 20, 2000, **{"loss": 0.03, **change})
    emu = run_events(sample(random.Random(99), 2000, loss=0.03))
    verdict = judge(compare(emu, pooled), per_run)
    assert verdict.outcome == FAIL and not verdict.ok


def test_few_samples_are_undetermined_never_passed_or_failed():
    pooled, per_run = replications(1, 20, 2000)
    emu = run_events(sample(random.Random(99), 30))
    verdict = judge(compare(emu, pooled), per_run)
    p95 = [j for j in verdict.judgements if j.quantity == "p95"][0]
    assert p95.outcome == UNDETERMINED and p95.emu_hi is None
    assert verdict.ok and verdict.outcome == UNDETERMINED


def test_a_gross_error_fails_even_from_few_samples():
    pooled, per_run = replications(1, 20, 500)
    emu = run_events({k: 0.2 for k in range(30)})      # 3x the model's latency
    verdict = judge(compare(emu, pooled), per_run)
    assert [j.outcome for j in verdict.judgements if j.quantity == "p50"] == [FAIL]


def test_ensure_delivery_is_a_guarantee_and_missing_flows_are_structural_failures():
    full = run_events({k: 0.06 for k in range(40)}, ensure=True)
    verdict = judge(compare(full, full), [])
    assert verdict.judgements[0].outcome == PASS
    gone = judge(compare(full + run_events({0: 0.1}, "gone"), full), [])
    assert gone.structural == ["gone: no messages sent in the simulation"]
    assert gone.outcome == FAIL
    nothing = judge(compare(run_events({0: None}), run_events({0: 0.1})), [])
    assert nothing.structural == ["f1: nothing delivered in the emulation"]


def test_false_alarm_rate_of_a_faithful_model_stays_within_the_family_budget():
    """200 faithful 'emulated' runs of a 5-flow topology judged at a
    deliberately loose family alpha of 0.2: FAIL may happen in at most
    alpha/2 = 10% of them (binomial slack included)."""
    rng = random.Random(7)
    flows = [f"f{i}" for i in range(5)]

    def topo_run(n: int, offset: int = 0) -> list[dict]:
        out = []
        for f in flows:
            out += run_events(sample(rng, n, loss=0.02, offset=offset), f)
        return out

    per_run = [flow_stats(topo_run(300, r * 1_000_000)) for r in range(20)]
    pooled = []
    for r in range(20):
        pooled += topo_run(300, r * 1_000_000)
    fails = sum(not judge(compare(topo_run(300), pooled), per_run, family_alpha=0.2).ok
                for _ in range(200))
    assert fails <= 200 * (0.1 + 0.05)
