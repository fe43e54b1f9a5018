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


#: After ``duration``, apps get no more callbacks but their sends already
#: made may still take this long to resolve (the default ensure=True deadline).
APP_DRAIN_S = 30.0


@dataclass(frozen=True)
class EnsembleSettings:
    """What one ensemble runs besides the synthetic flows.

    run: a command line, executed by ``/bin/sh -c`` inside the ensemble's
    host from the topology file's directory (see docs/apps.md for its
    environment). app: ``path/to/file.py`` or ``path/to/file.py:function``
    (default function ``main``), relative to the topology file's directory:
    an app written against :mod:`testbed.spec.app`, run over UDP in
    emulation and over the simulated network in ``simulate``.
    cpus / memory: a device-like host: the share of CPU cores (0.25 is a
    quarter of one core) and the memory in bytes the host may use (docker:
    container limits; netns: not applied, a warning; simulate: cpus
    scales this host's per-datagram cost). None: unlimited.
    placement: swarm placement constraints (``node.labels.zone==edge``,
    ``node.role!=manager``) a node must meet to run this ensemble (the
    swarm backend; the others and simulate ignore them). None: any node.
    """

    run: str | None = None
    app: str | None = None
    cpus: float | None = None
    memory: int | None = None
    placement: tuple[str, ...] | None = None

    @property
    def app_path(self) -> str | None:
        """The app's file (without ``:function``)."""
        if self.app is None:
            return None
        path, _, _ = self._split()
        return path

    @property
    def app_function(self) -> str:
        return self._split()[2] or "main"

    def _split(self) -> tuple[str, str, str]:
        app = self.app or ""
        head, sep, tail = app.rpartition(":")
        if sep and tail.isidentifier() and head.endswith(".py"):
            return head, sep, tail
        return app, "", ""


#: What an ensemble event may do (``action:``). ``restart`` is a device
#: reboot: SIGKILL the agent if it still runs and start a fresh one (no
#: protocol state) at the same address; see docs/topologies.md.
ENSEMBLE_ACTIONS = ("pause", "resume", "kill", "restart")


@dataclass(frozen=True)
class LinkEvent:
    """At ``at_s`` (seconds from the experiment start), lay ``changes`` over
    the directed link src -> dst (and dst -> src when ``both``: written
    ``a<->b``). ``changes`` are (LinkSpec attribute, value) pairs in file
    order; fields not named keep the value in force."""

    at_s: float
    src: str
    dst: str
    changes: tuple[tuple[str, float | None], ...]
    both: bool = False

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The directed links this event changes."""
        return ((self.src, self.dst), (self.dst, self.src)) if self.both \
            else ((self.src, self.dst),)


@dataclass(frozen=True)
class EnsembleEvent:
    """At ``at_s``, pause, resume, kill or restart one ensemble (ENSEMBLE_ACTIONS)."""

    at_s: float
    ensemble: str
    action: str


@dataclass(frozen=True)
class PartitionEvent:
    """At ``at_s``, drop every packet between two different ``groups``
    (ensembles in no group keep their links) until a HealEvent. A new
    partition replaces the one in force."""

    at_s: float
    groups: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class HealEvent:
    """At ``at_s``, end the partition in force: every link is again what
    the links and link events say."""

    at_s: float


#: One entry of ``Topology.events``.
Event = LinkEvent | EnsembleEvent | PartitionEvent | HealEvent


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
    #: Ensembles that run a program or an app (absent: synthetic flows only).
    settings: dict[str, EnsembleSettings] = field(default_factory=dict)
    #: Planned run length for programs and apps (None: the flows decide).
    duration_s: float | None = None
    #: Write one pcap per ensemble into the run directory (``capture:``).
    capture: bool = False
    #: Every ensemble's ttnet sends one-packet ensure=True messages with
    #: fast start (``fast_start:``; EngineConfig.fast_start), emulated and
    #: simulated alike.
    fast_start: bool = False
    #: The fault timeline (``events:``), sorted by time (file order on ties).
    events: tuple[Event, ...] = ()
    #: The directory holding the topology file: ``run`` commands start
    #: there and ``app`` paths are relative to it. Not part of the model's
    #: identity (two equal files in two places are the same experiment).
    base_dir: str | None = field(default=None, compare=False)

    def engine_settings(self) -> dict:
        """The ``EngineConfig`` keywords this topology sets for every
        ensemble's engine (the agents' and the simulated hosts')."""
        return {"fast_start": True} if self.fast_start else {}

    def settings_of(self, name: str) -> EnsembleSettings:
        return self.settings.get(name, EnsembleSettings())

    @property
    def programs(self) -> dict[str, str]:
        """``run:`` command lines by ensemble."""
        return {n: s.run for n, s in self.settings.items() if s.run}

    @property
    def limits(self) -> dict[str, EnsembleSettings]:
        """Ensembles with a ``cpus:`` or ``memory:`` limit."""
        return {n: s for n, s in self.settings.items()
                if s.cpus is not None or s.memory is not None}

    @property
    def apps(self) -> dict[str, EnsembleSettings]:
        """Ensembles with an ``app:``."""
        return {n: s for n, s in self.settings.items() if s.app}

    def link(self, src: str, dst: str) -> LinkSpec:
        """The impairments of the directed link src -> dst."""
        return self.links.get((src, dst), self.default_link)

    def expected_duration_s(self) -> float:
        """Latest moment a flow may still be busy: last send + its deadline."""
        ends = [f.start_s + f.interval_s * max(f.count - 1, 0) + f.deadline_s
                for f in self.flows]
        if self.duration_s is not None:
            ends.append(self.duration_s + (APP_DRAIN_S if self.apps else 0.0))
        return max(ends, default=0.0)
