"""How good is the fidelity verdict? Its power and its false-alarm rate.

Owns two measurements of :mod:`testbed.analysis.fidelity` itself:

- **power**: judge one recorded emulated run against deliberately wrong
  models (delay x1.3 and x0.77, jitter x3, loss x2 and x0.5, rate x0.5,
  RTO x2, impairments applied in one direction only, host CPU cost x3). A
  verdict worth having FAILs every one of them and PASSes the faithful
  model.
- **false alarms**: judge single simulated runs of the faithful model (new
  seeds, standing in for emulated runs of a perfect emulator) against the
  baseline; the share of FAIL verdicts estimates the false-alarm rate, the
  share of UNDETERMINED ones whether the topology carries enough messages.

It runs simulations only (never an emulation) and writes nothing unless
asked.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from testbed.analysis.compare import compare_stats
from testbed.analysis.fidelity import Verdict, judge
from testbed.spec.model import LinkSpec, Topology
from testbed.simulate.host import HostModel
from testbed.simulate.simulator import REPLICATIONS, replicate, simulate_host
from testbed.analysis.stats import flow_stats

#: Seeds of the stand-in "emulated" runs start here, far from the
#: baseline's seeds (topology seed + 0..replications-1).
NULL_SEED_OFFSET = 100_000


@dataclass(frozen=True)
class Mutation:
    """A wrong model: how it changes the topology, host and engine."""

    name: str
    topology: Callable[[Topology], Topology] = lambda t: t
    host: Callable[[HostModel], HostModel] = lambda h: h
    engine: dict | None = None


def _links(topology: Topology, fn: Callable[[str, str, LinkSpec], LinkSpec]) -> Topology:
    """Every directed link made explicit and passed through fn."""
    links = {(a, b): fn(a, b, topology.link(a, b))
             for a in topology.ensembles for b in topology.ensembles if a != b}
    return replace(topology, links=links)


def _scale(**factors: float) -> Callable[[Topology], Topology]:
    def apply(t: Topology) -> Topology:
        def one(_a: str, _b: str, spec: LinkSpec) -> LinkSpec:
            changes = {}
            for key, k in factors.items():
                value = getattr(spec, key)
                if value is not None:
                    changes[key] = min(1.0, value * k) if key == "loss" else value * k
            return replace(spec, **changes)
        return _links(t, one)
    return apply


def _one_direction(t: Topology) -> Topology:
    """Impairments only from the first-named to the later-named ensemble of
    each pair; the way back is a clean link."""
    order = {e: i for i, e in enumerate(t.ensembles)}
    return _links(t, lambda a, b, spec: spec if order[a] < order[b] else LinkSpec())


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("delay x1.3", _scale(delay_s=1.3)),
    Mutation("delay x0.77", _scale(delay_s=0.77)),
    Mutation("jitter x3", _scale(jitter_s=3.0)),
    Mutation("loss x2", _scale(loss=2.0)),
    Mutation("loss x0.5", _scale(loss=0.5)),
    Mutation("rate x0.5", _scale(rate_bps=0.5)),
    Mutation("RTO x2", engine={"rto_scale": 2.0}),
    Mutation("one direction only", _one_direction),
    Mutation("host cost x3", host=lambda h: replace(h, host_cost_s=h.host_cost_s * 3)),
)


def simulated_stats(topology: Topology, host: HostModel, seeds: range,
                    engine: dict | None = None) -> tuple[dict, list[dict]]:
    """(pooled per-flow stats, per-replication stats) over ``seeds``."""
    pooled: list[dict] = []
    per_run = []
    for _r, events, _counters in replicate(topology, host, seeds, engine):
        pooled += events
        per_run.append(flow_stats(events))
    return flow_stats(pooled), per_run


def judge_against(emu_stats: dict, topology: Topology, host: HostModel,
                  engine: dict | None = None, replications: int = REPLICATIONS,
                  flows: set[str] | None = None) -> Verdict:
    """Verdict of emulated stats against the model (topology, host, engine)."""
    pooled, per_run = simulated_stats(topology, host,
                                      range(topology.seed, topology.seed + replications), engine)
    rows = [r for r in compare_stats(emu_stats, pooled) if flows is None or r.flow in flows]
    return judge(rows, per_run)


def power_table(emu_stats: dict, topology: Topology, host: HostModel,
                mutations: tuple[Mutation, ...] = MUTATIONS,
                replications: int = REPLICATIONS) -> list[tuple[str, Verdict | None]]:
    """(mutation name, verdict) for the faithful model and each mutation;
    None where the mutation does not change this topology (e.g. jitter x3
    without jitter)."""
    out: list[tuple[str, Verdict | None]] = [
        ("faithful", judge_against(emu_stats, topology, host, None, replications))]
    for m in mutations:
        t, h = m.topology(topology), m.host(host)
        if t == _links(topology, lambda a, b, s: s) and h == host and not m.engine:
            out.append((m.name, None))
            continue
        out.append((m.name, judge_against(emu_stats, t, h, m.engine, replications)))
    return out


def null_trials(topology: Topology, host: HostModel, trials: int,
                replications: int = REPLICATIONS) -> list[Verdict]:
    """Judge ``trials`` fresh single runs of the faithful model against the
    baseline: every FAIL among them is a false alarm."""
    pooled, per_run = simulated_stats(topology, host,
                                      range(topology.seed, topology.seed + replications))
    verdicts = []
    for i in range(trials):
        seed = topology.seed + NULL_SEED_OFFSET + i
        events, _ = simulate_host(topology, host, seed)
        verdicts.append(judge(compare_stats(flow_stats(events), pooled), per_run))
    return verdicts
