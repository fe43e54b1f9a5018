"""A topology's fault timeline (``events:``) as the links in force over time.

Owns the one meaning of a timeline, shared by the emulator (which applies
each step to the running impairment engine and hosts) and the simulator
(which applies it to the simulated links and interfaces):

- a link event lays its fields over the link's spec in force (the
  topology's ``links:``/``defaults:`` before any event);
- a partition is an overlay, not a change: while it is in force every
  directed link between two different groups drops everything (its spec
  with ``loss`` 1); ensembles in no group keep their links. A link event
  during a partition changes the spec underneath, which is what ``heal``
  (or a later partition) brings back. A new partition replaces the one in
  force;
- ensemble events (pause, resume, kill, restart) change no link.

Stdlib only, pure: it never touches a network or a clock.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from testbed.spec.model import (EnsembleEvent, Event, HealEvent, LinkEvent, LinkSpec,
                                PartitionEvent, Topology)
from testbed.spec.units import format_duration, format_percent, format_rate

Pair = tuple[str, str]


@dataclass(frozen=True)
class Step:
    """What one event does at ``at_s``: the directed links whose spec in
    force changes (and to what), and the ensemble action, if any."""

    at_s: float
    event: Event
    links: dict[Pair, LinkSpec]
    action: tuple[str, str] | None = None     # (ensemble, action)

    def describe(self) -> str:
        """One line for logs and meta.json."""
        return describe_event(self.event)


_KEYS = {"delay_s": "delay", "jitter_s": "jitter", "rate_bps": "rate"}


def _format(attr: str, value: float | None) -> str:
    if attr in ("delay_s", "jitter_s"):
        return str(format_duration(value or 0.0))
    if attr == "rate_bps":
        return str(format_rate(value) or "unlimited")
    return str(format_percent(value or 0.0))


def describe_event(event: Event) -> str:
    if isinstance(event, LinkEvent):
        sep = "<->" if event.both else "->"
        return f"{event.src}{sep}{event.dst} " + " ".join(
            f"{_KEYS.get(k, k)}={_format(k, v)}" for k, v in event.changes)
    if isinstance(event, EnsembleEvent):
        return f"{event.action} {event.ensemble}"
    if isinstance(event, PartitionEvent):
        return "partition " + " | ".join(",".join(g) for g in event.groups)
    return "heal"


def initial_links(topology: Topology) -> dict[Pair, LinkSpec]:
    """Every directed link between two ensembles, as the topology starts."""
    return {(a, b): topology.link(a, b) for a in topology.ensembles
            for b in topology.ensembles if a != b}


def _cut(groups: tuple[tuple[str, ...], ...]) -> set[Pair]:
    """The directed pairs between two different groups."""
    group_of = {e: i for i, g in enumerate(groups) for e in g}
    return {(a, b) for a in group_of for b in group_of if group_of[a] != group_of[b]}


def _overlay(spec: LinkSpec) -> LinkSpec:
    return replace(spec, loss=1.0)


def steps(topology: Topology) -> list[Step]:
    """One Step per event of ``topology.events``, in time order."""
    base = initial_links(topology)
    cut: set[Pair] = set()

    def in_force(pair: Pair) -> LinkSpec:
        return _overlay(base[pair]) if pair in cut else base[pair]

    out = []
    for event in topology.events:
        before = {pair: in_force(pair) for pair in base}
        action = None
        if isinstance(event, LinkEvent):
            for pair in event.pairs:
                base[pair] = replace(base[pair], **dict(event.changes))
        elif isinstance(event, PartitionEvent):
            cut = _cut(event.groups)
        elif isinstance(event, HealEvent):
            cut = set()
        else:
            action = (event.ensemble, event.action)
        changed = {pair: in_force(pair) for pair in base if in_force(pair) != before[pair]}
        out.append(Step(event.at_s, event, changed, action))
    return out


def links_at(topology: Topology, t: float) -> dict[Pair, LinkSpec]:
    """Every directed link's spec in force at ``t`` seconds from the start
    (events at exactly ``t`` applied)."""
    links = initial_links(topology)
    for step in steps(topology):
        if step.at_s > t:
            break
        links.update(step.links)
    return links


def link_history(topology: Topology, src: str, dst: str) -> list[tuple[float, LinkSpec]]:
    """(from when, spec) of the link src -> dst: the start (0.0) first,
    then one entry per event that changes it."""
    out = [(0.0, topology.link(src, dst))]
    for step in steps(topology):
        if (src, dst) in step.links:
            out.append((step.at_s, step.links[(src, dst)]))
    return out


def event_times(topology: Topology) -> list[float]:
    """The distinct event times, ascending (for plots)."""
    return sorted({e.at_s for e in topology.events})


def first_due_from(flow: dict, t: float) -> int:
    """The first message of ``flow`` (a plan entry: start_s, interval_s,
    count) planned at or after ``t`` seconds from the start; ``count`` if
    none is. A restarted ensemble sends from there on (both sides): what
    fell due before its restart went down with the old agent."""
    for k in range(int(flow["count"])):
        if flow["start_s"] + k * flow["interval_s"] >= t - 1e-9:
            return k
    return int(flow["count"])
