"""Plain data describing one experiment: ensembles, directed links, flows.

This module owns the *validated* shape of a topology. It never reads files
(see ``testbed.spec.topology``) and never touches the network. It is stdlib-only
so the agent inside a container can import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkSpec:
    """Impairments of one *directed* link a -> b, applied on a's egress.

    delay_s/jitter_s are one-way seconds; loss/duplicate/corrupt are
    fractions in [0, 1]; rate_bps is bits per second (None = unlimited).
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    rate_bps: float | None = None
    duplicate: float = 0.0
    corrupt: float = 0.0

    @property
    def is_clean(self) -> bool:
        return (self.delay_s == 0 and self.jitter_s == 0 and self.loss == 0
                and self.rate_bps is None and self.duplicate == 0
                and self.corrupt == 0)


@dataclass(frozen=True)
class Flow:
    """Messages one ensemble sends to another.

    sizes cycles over the messages: message k has size sizes[k % len(sizes)].
    deadline_s bounds each ensure=True send (the engine fails it after that).
    """

    name: str
    src: str
    dst: str
    sizes: tuple[int, ...]
    count: int
    interval_s: float
    ensure: bool
    deadline_s: float = 30.0
    start_s: float = 0.0


@dataclass(frozen=True)
class Topology:
    name: str
    ensembles: tuple[str, ...]
    default_link: LinkSpec
    links: dict[tuple[str, str], LinkSpec] = field(default_factory=dict)
    flows: tuple[Flow, ...] = ()
    seed: int = 1
    auth_key: str | None = None
    # Free text shown by `list`/reports; no effect on the experiment.
    description: str = ""

    def link(self, src: str, dst: str) -> LinkSpec:
        """The impairments of the directed link src -> dst."""
        return self.links.get((src, dst), self.default_link)

    def expected_duration_s(self) -> float:
        """Latest moment a flow may still be busy: last send + its deadline."""
        ends = [f.start_s + f.interval_s * max(f.count - 1, 0) + f.deadline_s
                for f in self.flows]
        return max(ends, default=0.0)
