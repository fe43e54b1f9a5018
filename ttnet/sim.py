"""TTNetworkInterfaceSim: the protocol engine driven over simpy-modelled links.

Two modes:
- No network model (TTPython's behaviour, :class:`SimHandOff`): the
  recipient is an ensemble object and the message is handed to its
  ``receive_network_message`` at the current simulated time.
  ``TTNetworkInterfaceSim(sim)`` is this mode, as in TTPython.
- With a :class:`SimNetwork`: every message travels packet by packet
  through the same :class:`ttnet.engine.Engine` the UDP interface uses, over
  directed links that drop, delay (+ jitter), and rate-limit datagrams, with
  a per-datagram host cost serialised on each host's CPU (rationed, on a
  host with a CPU limit, by a quota per 100 ms period as a container's
  ``--cpus`` is: :meth:`SimNetwork.cpu_finish`). A lost REQ or DATA
  packet therefore costs what it costs on a real network. Engine events
  become callbacks through the same :class:`ttnet.driver.DriverShell` as
  over UDP, run at once in the simulation's event loop.

Model order per datagram, matching the emulator (NFQUEUE on the sender's
OUTPUT hook, then the egress qdisc): host CPU -> the emulator (on an
impaired link: one FIFO server per machine, ``emulator_cost_s`` per packet,
as the NFQUEUE daemon is) -> loss -> delay (+ the
host's per-hop latency, a calibrated distribution) + jitter
(uniform in [-jitter, +jitter], clipped at 0; packets may reorder) -> rate
FIFO (Ethernet+IP+UDP overhead counted) -> receiver host CPU. With
``cores``, every CPU step (hosts' and the emulator's) also takes one of the
machine's cores, which the hosts share as on the emulating machine.

Faults while a simulation runs (the testbed's fault timeline): a link's
parameters change with :meth:`SimNetwork.set_link` (datagrams already in
flight keep their arrival time); a host can be paused
(:meth:`TTNetworkInterfaceSim.pause`: datagrams that arrive are held and
handled at :meth:`~TTNetworkInterfaceSim.resume`, its timers and sends wait
until then, as a SIGSTOPped process's socket buffer and threads do) or
killed (:meth:`~TTNetworkInterfaceSim.kill`: it drops everything and never
calls back again) or restarted (:meth:`~TTNetworkInterfaceSim.restart`: a
reboot, killed and at once running again with a fresh engine).

Must never: read the wall clock or global random state (same seed, same
result), hold protocol logic (that belongs to the engine), or import the
socket driver :mod:`ttnet.udp`.
"""
from __future__ import annotations

import bisect
import logging
import random
import zlib
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Generator, Hashable

from . import codec
from .driver import AfterFn, DriverShell, FailureFn, PendingSend, ReceiverFn, SendHandle, pending_send
from .engine import Engine, EngineConfig

log = logging.getLogger(__name__)

#: Bytes a UDP datagram occupies on an Ethernet link beyond its payload
#: (14 Ethernet + 20 IPv4 + 8 UDP); rate limiters count these too.
WIRE_OVERHEAD_BYTES = 42
#: The least time a datagram spends between two hosts (1 us).
MIN_HOP_S = 1e-6
#: The CPU-limit accounting period: Docker's default CFS period
#: (cpu.cfs_period_us = 100000), in which a ``--cpus`` limit is enforced.
CPU_PERIOD_S = 0.1
#: simpy's priority of an ordinary event (``simpy.events.NORMAL``).
_NORMAL = 1


class _Call:
    """A simpy event that calls ``fn(*args)`` when processed: what
    ``sim.timeout(delay)`` plus a callback does, without a Timeout, a
    closure and a bound-method chain per datagram (the simulator's
    commonest event). Scheduled by :func:`_scheduler`'s function exactly
    as ``Environment.schedule`` schedules a timeout (same time, priority
    and event-id order), so the run is the same; :func:`run_until` calls
    it directly, ``Environment.step`` through ``callbacks``."""

    __slots__ = ("fn", "args")
    _ok = True
    _value = None

    def __init__(self, fn: Any, args: tuple) -> None:
        self.fn = fn
        self.args = args

    @property
    def callbacks(self) -> list:
        return [_fire]

    @callbacks.setter
    def callbacks(self, _value: Any) -> None:
        pass            # processed once: nothing else subscribes to it


def _fire(ev: _Call) -> None:
    ev.fn(*ev.args)


def _scheduler(sim: Any):
    """``call_in(delay, fn, *args)``: ``fn(*args)`` in ``delay`` (>= 0)
    simulated seconds, ordered like a ``sim.timeout(delay)`` created now
    (a real timeout on an environment that is not a plain simpy one)."""
    if not _plain_simpy(sim):
        def by_timeout(delay: float, fn: Any, *args: Any) -> None:
            sim.timeout(delay).callbacks.append(lambda _e: fn(*args))
        return by_timeout

    queue, eid = sim._queue, sim._eid

    def by_queue(delay: float, fn: Any, *args: Any) -> None:
        heappush(queue, (sim._now + delay, _NORMAL, next(eid), _Call(fn, args)))
    return by_queue


def run_until(sim: Any, until: float) -> None:
    """``sim.run(until=until)`` for a simpy Environment, with the
    simulator's own events (:class:`_Call`) called directly instead of
    through ``Environment.step``: the same events in the same order
    (time, priority, event id); an ordinary simpy event is processed as
    ``step`` does (its callbacks, then a failure not defused is raised)."""
    if not _plain_simpy(sim):
        sim.run(until=until)
        return
    from simpy.events import URGENT, Event
    at = until if isinstance(until, int) else float(until)
    if at <= sim._now:
        raise ValueError(f"until ({at}) must be greater than the current simulation time")
    stop = Event(sim)
    stop._ok, stop._value = True, None
    sim.schedule(stop, URGENT, at - sim._now)
    queue = sim._queue
    call = _Call
    while queue:
        sim._now, _, _, ev = heappop(queue)
        if ev is stop:
            stop.callbacks = None
            return
        if type(ev) is call:
            ev.fn(*ev.args)
            continue
        callbacks, ev.callbacks = ev.callbacks, None
        for callback in callbacks:
            callback(ev)
        if not ev._ok and not hasattr(ev, "_defused"):
            exc = type(ev._value)(*ev._value.args)
            exc.__cause__ = ev._value
            raise exc
    raise RuntimeError(f'No scheduled events left but "until" event was not triggered: {stop}')


def _plain_simpy(sim: Any) -> bool:
    """Whether ``sim`` steps and schedules as ``simpy.Environment`` does
    (simpy is imported here, not with ttnet: only a simulation needs it)."""
    try:
        from simpy.core import Environment
    except ImportError:
        return False
    return (type(sim).step is Environment.step and type(sim).schedule is Environment.schedule
            and hasattr(sim, "_queue") and hasattr(sim, "_eid"))


@dataclass(frozen=True)
class LinkParams:
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0           # fraction 0..1
    rate_bps: float | None = None
    duplicate: float = 0.0      # fraction 0..1
    corrupt: float = 0.0        # fraction 0..1

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must be >= 0")
        for name in ("loss", "duplicate", "corrupt"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1]")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError("rate_bps must be > 0 or None")


class TTNetworkMessageSim:
    """A simulated message, ``TTNetworkMessageSim(recipient, payload)``:
    ``recipient`` is an ensemble object (or, with a network model, its
    name) and ``payload`` the object or bytes."""

    def __init__(self, recipient: Any, payload: Any) -> None:
        self.recipient = recipient
        self.payload = payload

    def get_address(self) -> Any:
        return self.recipient


@dataclass
class _LinkState:
    params: LinkParams
    free_at: float = 0.0
    #: latest arrival so far from the host's per-hop spread: that spread
    #: delays a datagram but never reorders it (the host path is FIFO;
    #: only a link's configured jitter reorders)
    fifo_at: float = 0.0
    #: the host's current extra delay on this link and until when it holds
    noise: float = 0.0
    noise_until: float = float("-inf")


#: Reservations per core searched for a gap; beyond it a job queues at the end.
MAX_GAP_SCAN = 32


class SimNetwork:
    """Directed links between named simulated hosts."""

    def __init__(self, sim: Any, default: LinkParams | None = None,
                 links: dict[tuple[Hashable, Hashable], LinkParams] | None = None,
                 seed: int = 1, host_cost_s: float = 0.0, hop_latency_s: float = 0.0,
                 hop_noise_s: "list[float] | tuple[float, ...]" = (),
                 noise_hold_s: float = 0.001,
                 host_costs: "dict[Hashable, float] | None" = None,
                 cpu_limits: "dict[Hashable, float] | None" = None,
                 cpu_period_s: float = CPU_PERIOD_S,
                 emulator_cost_s: float = 0.0,
                 cores: int | None = None) -> None:
        self.sim = sim
        self._call_in = _scheduler(sim)
        self.default = default or LinkParams()
        self._params = dict(links or {})
        self._links: dict[tuple[Hashable, Hashable], _LinkState] = {}
        self.rng = random.Random(seed)
        self.seed = seed
        self.host_cost_s = host_cost_s
        #: Per-host overrides of host_cost_s (a slower, device-like host).
        self.host_costs: dict[Hashable, float] = dict(host_costs or {})
        #: Per-host CPU limits in cores (a container's ``--cpus``): a quota
        #: of cpus x cpu_period_s CPU seconds per period (see cpu_finish).
        self.cpu_limits: dict[Hashable, float] = dict(cpu_limits or {})
        if not cpu_period_s > 0 or any(not c > 0 for c in self.cpu_limits.values()):
            raise ValueError("cpu_period_s and every CPU limit must be positive")
        self.cpu_period_s = cpu_period_s
        #: host -> [index of its current period, CPU seconds used in it]
        self._quota_used: dict[Hashable, list] = {}
        #: Fixed extra latency of every datagram that does not occupy a CPU
        #: (wake-ups, an NFQUEUE pass): added in flight, not serialised.
        self.hop_latency_s = hop_latency_s
        #: The spread around it: quantiles (at evenly spaced levels 0..1) of
        #: a per-datagram latency added on top, drawn by inverse transform
        #: from an RNG of its own, so the same seed loses the same packets
        #: with or without it. Empty: no spread.
        self.hop_noise_s = tuple(sorted(hop_noise_s))
        self._noise_rng = random.Random(seed ^ 0x6E6F6973)
        #: A host stall lasts a while: datagrams entering a link within
        #: this long of a draw share it (a burst meets one stall, as on a
        #: real host, not one per datagram).
        self.noise_hold_s = noise_hold_s
        #: The emulator as one server shared by every impaired link: each
        #: datagram put on a link with delay, jitter, loss, duplication or
        #: corruption first waits its turn for ``emulator_cost_s`` of it (as
        #: the testbed's NFQUEUE daemon, one process, handles each packet
        #: in turn before it can delay or drop it). 0: no such server.
        if not emulator_cost_s >= 0:
            raise ValueError(f"emulator_cost_s must be >= 0, got {emulator_cost_s!r}")
        self.emulator_cost_s = emulator_cost_s
        self._emulator_free = 0.0
        #: The machine the hosts share: with ``cores``, every CPU job (a
        #: host's per-datagram cost, the emulator's per-packet cost) also
        #: needs one of that many cores, taken in the order jobs are
        #: computed (the earliest free core). None: every host has a CPU of
        #: its own.
        if cores is not None and not (isinstance(cores, int) and cores >= 1):
            raise ValueError(f"cores must be a positive int or None, got {cores!r}")
        self._cores: list[list[tuple[float, float]]] | None = (
            [[] for _ in range(cores)] if cores else None)
        self.hosts: dict[Hashable, "TTNetworkInterfaceSim"] = {}
        self.dropped = 0
        self.duplicated = 0
        self.corrupted = 0

    def link(self, src: Hashable, dst: Hashable) -> _LinkState:
        st = self._links.get((src, dst))
        if st is None:
            st = _LinkState(self._params.get((src, dst), self.default))
            self._links[(src, dst)] = st
        return st

    def set_link(self, src: Hashable, dst: Hashable, params: LinkParams) -> None:
        """From now on, datagrams put on src -> dst see ``params``; those
        already in flight keep their arrival time (and a rate queue its
        backlog)."""
        if not isinstance(params, LinkParams):
            raise TypeError(f"params must be LinkParams, not {type(params).__name__}")
        self._params[(src, dst)] = params
        st = self._links.get((src, dst))
        if st is not None:
            st.params = params

    def params(self, src: Hashable, dst: Hashable) -> LinkParams:
        """The parameters in force on src -> dst."""
        return self._params.get((src, dst), self.default)

    def host_cost(self, name: Hashable) -> float:
        """CPU seconds per datagram on host ``name``: its override in
        ``host_costs``, else ``host_cost_s``."""
        return self.host_costs.get(name, self.host_cost_s)

    def cpu_finish(self, name: Hashable, start: float, cost: float) -> float:
        """When ``cost`` CPU seconds of host ``name``, begun at ``start``
        (its CPU free), are done. Without a CPU limit: ``start + cost``.
        With one (a CFS quota): the host runs at full speed while its
        period's quota (cpus x cpu_period_s; periods at multiples of
        cpu_period_s from time 0) lasts, then waits for the next period,
        whose quota is fresh (unused quota is not carried over). A quota
        of a core or more never binds a host that runs one datagram at a
        time."""
        if self._cores is not None:
            start = self._take_core(start, cost)
        cpus = self.cpu_limits.get(name)
        if cpus is None or cpus >= 1:
            return start + cost
        period = self.cpu_period_s
        quota = cpus * period
        state = self._quota_used.setdefault(name, [0, 0.0])
        k = int(start // period)
        if k > state[0]:
            state[0], state[1] = k, 0.0
        t, left, waited = start, cost, 0.0
        while True:
            end = (state[0] + 1) * period
            to_end = max(0.0, end - t)
            step = max(0.0, min(left, quota - state[1], to_end))
            state[1] += step
            left -= step
            if left <= 1e-12:           # done (to a picosecond of rounding)
                return start + cost + waited
            # Stopped before the period's end: its quota ran out, so the
            # host is throttled until the next period begins.
            waited += to_end - step
            t = end
            state[0], state[1] = state[0] + 1, 0.0

    def _take_core(self, start: float, cost: float) -> float:
        """When a job ready at ``start`` gets a core: the earliest gap of
        ``cost`` on any core at or after ``start`` (jobs are reserved as
        they are computed, some ahead of others that come earlier in time:
        gaps left between reservations are filled, not lost)."""
        cores = self._cores
        assert cores is not None, "_take_core needs cores"
        now = self.sim.now
        best_t, best = float("inf"), cores[0]
        for busy in cores:
            if busy and busy[0][1] <= now:      # forget jobs already done
                k = 1
                while k < len(busy) and busy[k][1] <= now:
                    k += 1
                del busy[:k]
            if not busy or start >= busy[-1][1]:
                t = start                       # after every reservation: no scan
            elif len(busy) > MAX_GAP_SCAN:
                # an overloaded machine's backlog: queue at its end rather
                # than search it (bounded work per job)
                t = busy[-1][1]
            else:
                t = start
                for b0, b1 in busy:
                    if t + cost <= b0:
                        break
                    if b1 > t:
                        t = b1
            if t < best_t:
                best_t, best = t, busy
                if t == start:
                    break                       # no core can do better
        if not best or best_t >= best[-1][0]:
            best.append((best_t, best_t + cost))
        else:
            bisect.insort(best, (best_t, best_t + cost))
        return best_t

    def attach(self, name: Hashable, iface: "TTNetworkInterfaceSim") -> None:
        if name in self.hosts:
            raise ValueError(f"a host named {name!r} is already attached")
        self.hosts[name] = iface

    def transmit(self, src: Hashable, dst: Hashable, datagram: bytes, at: float) -> None:
        """Put a datagram on the link src -> dst at simulated time ``at``."""
        target = self.hosts.get(dst)
        if target is None:
            self.dropped += 1
            return
        st = self.link(src, dst)
        p, rng = st.params, self.rng
        if self.emulator_cost_s and (p.delay_s or p.jitter_s or p.loss
                                     or p.duplicate or p.corrupt):
            at = max(at, self._emulator_free)
            if self._cores is not None:
                at = self._take_core(at, self.emulator_cost_s)
            at = self._emulator_free = at + self.emulator_cost_s
        if p.loss and rng.random() < p.loss:
            self.dropped += 1
            return
        copies = 1
        if p.duplicate and rng.random() < p.duplicate:
            copies, self.duplicated = 2, self.duplicated + 1
        for _ in range(copies):
            data = datagram
            if p.corrupt and rng.random() < p.corrupt:
                self.corrupted += 1
                b = bytearray(data)
                b[rng.randrange(len(b))] ^= 0xFF
                data = bytes(b)
            extra = self.hop_latency_s
            if self.hop_noise_s:
                if at >= st.noise_until:
                    st.noise, st.noise_until = self._draw_noise(), at + self.noise_hold_s
                # the host adds latency, it never takes any of the link's away
                extra = max(0.0, extra + st.noise)
            t = at + p.delay_s + extra
            if self.hop_noise_s:
                t = st.fifo_at = max(t, st.fifo_at)
            if p.jitter_s:
                t += rng.uniform(-p.jitter_s, p.jitter_s)
            # Every hop takes some time: on a zero-delay link a protocol
            # exchange must not run in zero simulated time.
            t = max(t, at + MIN_HOP_S)
            if p.rate_bps:
                # Join the rate queue when the delayed packet reaches it, so
                # the queue serves packets in the order jitter left them
                # (as the emulator's qdisc does), not in the order sent.
                self._call_in(max(0.0, t - self.sim.now), self._serialise,
                              st, p.rate_bps, data, target, src)
            else:       # target._arrive(data, src, t), inline
                target._call_in(max(0.0, t - self.sim.now), target._on_datagram, data, src)

    def _draw_noise(self) -> float:
        q = self.hop_noise_s
        if len(q) == 1:
            return q[0]
        u = self._noise_rng.random() * (len(q) - 1)
        i = int(u)
        return q[i] + (q[i + 1] - q[i]) * (u - i)

    def _serialise(self, st: _LinkState, rate_bps: float, data: bytes,
                   target: "TTNetworkInterfaceSim", src: Hashable) -> None:
        start = max(self.sim.now, st.free_at)
        st.free_at = start + (len(data) + WIRE_OVERHEAD_BYTES) * 8 / rate_bps
        target._arrive(data, src, st.free_at)


class SimHandOff:
    """TTPython's simulated interface: no network model, no engine.

    ``send()`` hands the message itself (a :class:`TTNetworkMessageSim`,
    its payload the object, unpickled) to the recipient ensemble's
    ``receive_network_message``, as TTPython does, at the current simulated
    time, in a simpy process of its own, then calls ``after(message)``
    (the rule of :func:`ttnet.driver.completion_callback`). Nothing is lost
    or delayed, so ``ensure``, ``on_failure`` and ``deadline_s`` have
    nothing to act on.
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def send(self, message: TTNetworkMessageSim, ensure: bool = False, *,
             after: AfterFn | None = None, on_failure: FailureFn | None = None,
             deadline_s: float | None = None) -> SendHandle:
        _check_ensure(ensure)
        p = pending_send(message, after, on_failure)
        self.sim.process(self._hand_off(message, p))
        return p.handle

    def listen(self) -> None:
        return None

    def cleanup(self) -> None:
        return None

    @property
    def counters(self) -> dict[str, int]:
        return {}

    def _hand_off(self, message: TTNetworkMessageSim,
                  p: PendingSend) -> Generator[Any, Any, None]:
        yield self.sim.timeout(0)
        message.recipient.receive_network_message(message)
        p.handle._set(True)
        if p.after is not None:
            p.after(message)


def _check_ensure(ensure: Any) -> None:
    """TTPython's simulated ``send(message, ensure=False)`` takes ``ensure``
    second; a callable there is an ``after`` passed by position."""
    if callable(ensure):
        raise TypeError("TTNetworkInterfaceSim.send(message, ensure=False, *, after=None, ...): "
                        "the second argument is ensure; pass after= by keyword")


class TTNetworkInterfaceSim(DriverShell):
    """Simulated interface. ``TTNetworkInterfaceSim(sim)`` is TTPython's
    direct hand-off (it delegates to :attr:`hand_off`, a
    :class:`SimHandOff`); pass ``network=`` and ``name=`` for modelled
    links. ``send(message, ensure=False, *, after=None, on_failure=None,
    deadline_s=None)``: TTPython's order, then ttnet's extras by keyword.
    Callbacks (the contract of :mod:`ttnet.driver`: ``after(message)``,
    ``receiver_function(TTReceivedMessage)``, ``on_failure(message,
    reason)``) run in the simulation's event loop, at the simulated time
    their event happens; an exception from one propagates into
    ``env.run()``."""

    #: The links this host is attached to (set only with a network model).
    _net: SimNetwork

    def __init__(self, sim: Any, network: SimNetwork | None = None,
                 name: Hashable | None = None,
                 receiver_function: ReceiverFn | None = None,
                 config: EngineConfig | None = None,
                 failure_function: FailureFn | None = None) -> None:
        #: TTPython's mode (no network model): every send is handed off.
        self.hand_off: SimHandOff | None = None
        if network is None:
            self.hand_off = SimHandOff(sim)
            engine = Engine(config, random.Random(0))   # idle: hand-offs skip it
        else:
            if name is None:
                raise ValueError("a simulated interface on a SimNetwork needs a name")
            seed = network.seed ^ zlib.crc32(str(name).encode())
            engine = Engine(config, random.Random(seed))
        super().__init__(engine, receiver_function, failure_function)
        self.sim = sim
        self._call_in = _scheduler(sim)
        self.network = network
        self.name = name
        self._cpu_free = 0.0
        self._wake_at = float("inf")
        #: "running", "paused" or "killed" (see pause/resume/kill/restart)
        self.state = "running"
        #: How many times restart() gave this host a fresh engine.
        self.incarnation = 0
        self._held: list[tuple[bytes, Hashable]] = []
        self._waiters: list[Any] = []
        if network is not None:
            self._net = network
            network.attach(name, self)

    # ------------------------------------------------------------ public API
    def send(self, message: TTNetworkMessageSim, ensure: bool = False, *,
             after: AfterFn | None = None, on_failure: FailureFn | None = None,
             deadline_s: float | None = None) -> SendHandle:
        """Start sending ``message``; returns its :class:`SendHandle`.
        Raises MessageTooLarge above the engine's ``max_message_size``."""
        if self.hand_off is not None:
            return self.hand_off.send(message, ensure, after=after, on_failure=on_failure,
                                      deadline_s=deadline_s)
        _check_ensure(ensure)
        recipient = message.recipient
        dst = getattr(recipient, "name", recipient)
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = codec.dumps(payload)
        p = pending_send(message, after, on_failure)
        self._start_send(dst, payload, self.sim.now, ensure, deadline_s, p)
        self._pump()
        return p.handle

    def listen(self) -> None:
        return None

    def cleanup(self) -> None:
        if self.hand_off is None:
            self.engine.cancel_all("interface closed", self.sim.now)
            self._dispatch_events()

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.engine.counters)

    # ------------------------------------------------------------- faults
    def pause(self) -> None:
        """Stop handling anything until :meth:`resume`: datagrams that
        arrive are held, timers and sends wait. No effect once killed."""
        if self.state == "running":
            self.state = "paused"

    def resume(self) -> None:
        """Handle the held datagrams (in arrival order, each costing host
        CPU), fire the overdue timers, send what waited, and wake whatever
        waits in :meth:`when_running`."""
        if self.state != "paused":
            return
        self.state = "running"
        held, self._held = self._held, []
        for data, src in held:
            self._on_datagram(data, src)
        self._wake_at = float("inf")
        self._pump()
        waiters, self._waiters = self._waiters, []
        for ev in waiters:
            ev.succeed()

    def kill(self) -> None:
        """Drop everything from now on: held and arriving datagrams,
        timers, sends; no callback of this engine fires again. Whatever
        waits in :meth:`when_running` waits for a :meth:`restart`."""
        self.state = "killed"
        self._held.clear()

    def restart(self) -> None:
        """A device reboot at the same name: what runs is killed (as
        :meth:`kill`) and the host at once runs a fresh engine -- no peers,
        no message in flight, no memory of completed ones (a peer's
        retransmission of a message delivered before may be delivered
        again). Callbacks of earlier sends never fire; counters start at
        zero; :attr:`incarnation` counts the restarts. Whatever waits in
        :meth:`when_running` wakes."""
        if self.hand_off is not None:
            raise ValueError("only an interface on a SimNetwork can be restarted")
        self.kill()
        self.incarnation += 1
        seed = self._net.seed ^ zlib.crc32(f"{self.name}#{self.incarnation}".encode())
        DriverShell.__init__(self, Engine(self.engine.config, random.Random(seed)),
                             self.receiver_function, self.failure_function)
        self._wake_at = float("inf")     # the old engine's timers only pump the new one
        self.state = "running"
        waiters, self._waiters = self._waiters, []
        for ev in waiters:
            ev.succeed()

    def when_running(self) -> Any:
        """A simpy event that fires now if this host runs, at resume if
        it is paused, at restart if it was killed (never without one)."""
        ev = self.sim.event()
        if self.state == "running":
            ev.succeed()
        else:
            self._waiters.append(ev)
        return ev

    # -------------------------------------------------------------- internals
    def _arrive(self, data: bytes, src: Hashable, at: float) -> None:
        """Schedule a datagram's arrival; the host CPU serialises handling."""
        self._call_in(max(0.0, at - self.sim.now), self._on_datagram, data, src)

    def _on_datagram(self, data: bytes, src: Hashable) -> None:
        if self.state != "running":
            if self.state == "paused":
                self._held.append((data, src))
            return
        cost = self._net.host_cost(self.name)
        if cost:
            now = self.sim.now
            done = self._net.cpu_finish(self.name, max(now, self._cpu_free), cost)
            self._cpu_free = done
            if done > now:
                self._call_in(done - now, self._process, data, src)
                return
        self._process(data, src)

    def _process(self, data: bytes, src: Hashable) -> None:
        if self.state != "running":
            if self.state == "paused":
                self._held.append((data, src))
            return
        self.engine.datagram_received(data, src, self.sim.now)
        self._pump()

    def _pump(self) -> None:
        if self.state != "running":
            return      # resume() pumps (a killed host never does)
        engine, sim, net = self.engine, self.sim, self._net
        now = sim.now
        engine.handle_timers(now)
        out = engine.datagrams_to_send(now)
        cost = net.host_cost(self.name) if out else 0.0
        for data, dst in out:
            if cost:
                self._cpu_free = net.cpu_finish(self.name, max(now, self._cpu_free), cost)
                net.transmit(self.name, dst, data, self._cpu_free)
            else:
                net.transmit(self.name, dst, data, now)
        self._dispatch_events()
        nt = engine.next_timer()
        if nt is not None and nt < self._wake_at:
            self._wake_at = nt
            self._call_in(max(0.0, nt - now), self._on_timer, nt)

    def _on_timer(self, when: float) -> None:
        if when == self._wake_at:
            self._wake_at = float("inf")
        self._pump()
