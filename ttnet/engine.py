"""The ttnet protocol engine: TTPython's UDP protocol as a sans-I/O machine.

What it owns: every protocol decision for one local endpoint -- the
handshake (REQ / ACK_START, REQ retransmission for ``ensure=True``),
fragmentation, the selective-repeat windows, acknowledgements,
retransmission timers (adaptive RTO per peer), fast retransmit, the
congestion window that paces what is in flight, exactly-once delivery
(recently completed messages are remembered and their late duplicates
re-ACKed, never re-delivered), send deadlines, and the memory bounds on
what peers may make it hold. Also ttnet's one wire extension, fast start
(``EngineConfig.fast_start``, off by default): a one-packet ensure=True
message sent as a single FAST packet, REQ and DATA together.

What it must never do: open a socket, start a thread, sleep or read a
clock. The caller drives it::

    engine.send_message(address, payload, now, ensure=True)   -> handle
    engine.datagram_received(data, address, now)
    engine.handle_timers(now)
    engine.datagrams_to_send(now)       -> [(bytes, address), ...]
    engine.next_timer()                 -> absolute time or None
    engine.pop_events()                 -> [EngineEvent: Delivered | SendCompleted | SendFailed]

Time is whatever monotonic seconds the driver uses (real or simulated).
Bad datagrams are counted in :attr:`Engine.counters` and dropped; nothing a
peer sends can make these methods raise. Datagrams are read only through
:func:`ttnet.wire.parse_datagram`. An observer may follow every step
through ``EngineConfig.tracer`` (see :mod:`ttnet.events`); with no tracer
the engine builds no trace events at all.
"""
from __future__ import annotations

import heapq
import logging
import math
import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .events import (Address, Delivered, EngineEvent, SendCompleted, SendFailed,
                     TraceEvent, TraceKind, Tracer)
from .rtt import CongestionWindow, RttEstimator
from .window import TTSlidingWindow
from .wire import (ACK_KIND, DATA_KIND, FAST_KIND, MAX_DATA, REQ_KIND, MalformedPacket,
                   encode_ack, encode_data, encode_fast, encode_req, packet_count,
                   parse_datagram)

log = logging.getLogger(__name__)

__all__ = ["Address", "Delivered", "Engine", "EngineConfig", "EngineEvent",
           "MessageTooLarge", "SendCompleted", "SendFailed", "TraceEvent", "TraceKind",
           "Tracer"]

_INF = float("inf")
_RECEIVED, _SENT, _RESENT, _DROPPED = (
    TraceKind.DATAGRAM_RECEIVED, TraceKind.DATAGRAM_SENT,
    TraceKind.DATAGRAM_RETRANSMITTED, TraceKind.DATAGRAM_DROPPED)

# packet states on the sending side
_UNSENT, _INFLIGHT, _LOST, _ACKED = 0, 1, 2, 3


@dataclass
class EngineConfig:
    """Tunables. Defaults are what a TTPython deployment should run with."""

    window_size: int = 1000          # fixed by the wire format (seq mod 2W+1)
    initial_rto_s: float = 0.1       # TTPython's timeout_ms default
    min_rto_s: float = 0.005
    max_rto_s: float = 2.0
    #: Multiplies every computed retransmission timeout. 1 is RFC 6298;
    #: the simulator's fidelity tests use other values as a wrong model.
    rto_scale: float = 1.0
    #: ensure=True sends give up (and report failure) after this long.
    send_deadline_s: float = 30.0
    #: ensure=False sends REQ once; they are abandoned after this long.
    best_effort_deadline_s: float = 5.0
    #: Largest message accepted in either direction (REQs above it are refused).
    max_message_size: int = 64 * 1024 * 1024
    #: Incomplete incoming messages one peer may have at once.
    max_incoming_per_peer: int = 256
    #: Bytes of incomplete incoming messages one peer may reserve.
    peer_receive_budget: int = 128 * 1024 * 1024
    #: Bytes of incomplete incoming messages all peers together may reserve.
    total_receive_budget: int = 512 * 1024 * 1024
    #: An incoming message with no new packet for this long is dropped.
    incoming_idle_timeout_s: float = 15.0
    #: A started ensure=True send that has heard no ACK for this long goes
    #: back to its handshake: the receiver has probably forgotten the
    #: message (its incoming_idle_timeout_s passed), so every DATA packet
    #: would be dropped as unknown until the deadline. The send re-sends its
    #: REQ (same message id) and, once ACK_START comes back, every packet
    #: from the first. None: never (a send then fails at its deadline).
    stall_restart_s: float | None = 15.0
    #: How long a completed message is remembered to suppress duplicates.
    completed_ttl_s: float = 120.0
    completed_max: int = 1 << 16
    initial_cwnd: int = 32
    #: The congestion window never shrinks below this. Loss on the links
    #: ttnet runs over is mostly random, not congestion; collapsing the
    #: window to a few packets turned each loss into several extra round
    #: trips for every later message. 32 x 1217 B = 39 KB in flight is far
    #: below any socket buffer, so it cannot overrun a receiver either.
    min_cwnd: int = 32
    #: Packets sent after a missing one, once acknowledged, mark it lost
    #: (raised per peer, up to max_reorder, when reordering is observed).
    dup_thresh: int = 3
    max_reorder: int = 128
    #: A repeated REQ arriving this soon after our ACK_START is a network
    #: duplicate, not a retransmission (our REQ RTO is >= min_rto_s, and
    #: TTPython's is 100 ms): answering it would only make an ACK(0) that
    #: the sender could take for the acknowledgement of packet 0.
    ack_start_guard_s: float = 0.005
    #: Called with every :class:`ttnet.events.TraceEvent` (datagrams
    #: received, sent, retransmitted, dropped with the reason; each step of
    #: a message), in the thread driving the engine. None: no tracing, and
    #: no cost. Read once, when the Engine is made.
    tracer: Tracer | None = field(default=None, compare=False)
    #: Fast start, ttnet to ttnet only: an ensure=True message that fits one
    #: datagram (<= 1200 bytes) goes out as one FAST packet -- its REQ and
    #: its DATA together -- and completes on the receiver's ACK(0): one
    #: one-way trip to delivery instead of three (REQ, ACK_START, DATA).
    #: A TTPython receiver drops FAST as an unknown packet type, so such a
    #: send would fail at its deadline: only name peers that run ttnet.
    #: False (the default): never. True: to every peer. A collection of
    #: ``(ip, port)`` addresses: to those peers only. Receiving FAST needs
    #: no setting. Larger and best-effort messages keep the handshake.
    fast_start: bool | frozenset = False

    def __post_init__(self) -> None:
        if self.window_size < 1:
            raise ValueError("window_size must be >= 1")
        if not isinstance(self.fast_start, bool):
            value = self.fast_start
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError
                # addresses as the driver names peers: (ip, port) for UDP
                # (lists from JSON/YAML become tuples), host names in a
                # simulation
                self.fast_start = frozenset(tuple(a) if isinstance(a, list) else a
                                            for a in value)
            except TypeError as exc:
                raise ValueError("fast_start must be True, False or a collection of peer "
                                 f"addresses such as ('10.0.0.2', 8225), got {value!r}"
                                 ) from exc
        if self.max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")


class MessageTooLarge(ValueError):
    pass


# --- per-message and per-peer state -----------------------------------------
@dataclass(eq=False)
class _Outgoing:
    handle: int
    address: Address
    message_id: int
    payload: bytes
    ensure: bool
    deadline: float
    window: TTSlidingWindow
    state: bytearray
    sent_at: list[float]
    last_tx: list[int]
    first_tx: list[int]
    fast_lost: bytearray
    retransmitted: bytearray
    started: bool = False
    req_count: int = 0
    req_next_at: float = _INF
    req_rto: float = 0.1
    req_first_at: float = 0.0
    started_at: float = 0.0
    #: When an ACK of this message last arrived (any ACK: duplicates too,
    #: they show the receiver still knows the message).
    heard_at: float = 0.0
    restarts: int = 0
    echo_budget: int = 0
    next_new: int = 0
    lost: deque = field(default_factory=deque)     # indices to resend
    flight: deque = field(default_factory=deque)   # (tx, index) by send order
    backoff: float = 1.0
    last_served: int = 0
    scheduled_at: float = _INF
    done: bool = False
    #: Sent with fast start: no handshake, the one packet goes as FAST.
    fast: bool = False

    @property
    def num_packets(self) -> int:
        return self.window.total


@dataclass(eq=False)
class _Incoming:
    address: Address
    message_id: int
    window: TTSlidingWindow
    reserved: int
    last_progress: float
    last_ack_start: float
    scheduled_at: float = _INF
    done: bool = False


@dataclass(eq=False)
class _Peer:
    address: Address
    rtt: RttEstimator
    cwnd: CongestionWindow
    inflight: int = 0
    outgoing: dict[int, _Outgoing] = field(default_factory=dict)
    incoming: dict[int, _Incoming] = field(default_factory=dict)
    reserved: int = 0
    #: Highest transmission number acknowledged, and how many later
    #: transmissions may be acknowledged before a packet is presumed lost
    #: (starts at dup_thresh, raised when the path is seen to reorder).
    max_acked_tx: int = 0
    reorder: int = 3
    #: The path to this peer was seen duplicating a datagram (an ACK of a
    #: packet sent once arriving twice, an ACK_START copy arriving before
    #: DATA 0 was sent -- not a repeated REQ: a stalled receiver reads a REQ
    #: and its retransmission back to back). Until then an ACK(0)
    #: is taken for an echo of ACK_START only if it came too soon to be a
    #: real one (see _on_ack).
    duplicates_seen: bool = False


class Engine:
    """One endpoint's protocol state. Not thread-safe: one driver owns it."""

    def __init__(self, config: EngineConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config or EngineConfig()
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter()
        self._tracer = self.config.tracer
        self._peers: dict[Address, _Peer] = {}
        self._control: deque[tuple[bytes, Address]] = deque()
        self._events: list[EngineEvent] = []
        self._timers: list[tuple[float, int, Any]] = []
        self._timer_seq = 0
        self._handles = 0
        self._tx = 0
        self._served = 0
        self._reserved_total = 0
        self._completed: OrderedDict[tuple[Address, int], tuple[int, float]] = OrderedDict()
        self._sending: dict[int, _Outgoing] = {}   # handle -> message, started ones

    # ------------------------------------------------------------------ API
    def send_message(self, address: Address, payload: bytes, now: float,
                     ensure: bool = False, deadline_s: float | None = None) -> int:
        """Queue a message; returns a handle that later events name.

        Raises MessageTooLarge above ``config.max_message_size``.
        """
        payload = bytes(payload)
        cfg = self.config
        if len(payload) > cfg.max_message_size:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds max_message_size="
                f"{cfg.max_message_size}; raise it in EngineConfig or split the object")
        if deadline_s is None:
            deadline_s = cfg.send_deadline_s if ensure else cfg.best_effort_deadline_s
        peer = self._peer(address)
        mid = self.rng.getrandbits(64)
        while mid in peer.outgoing:
            mid = self.rng.getrandbits(64)
        self._handles += 1
        n = packet_count(len(payload))
        out = _Outgoing(
            handle=self._handles, address=address, message_id=mid, payload=payload,
            ensure=ensure, deadline=now + deadline_s,
            window=TTSlidingWindow(cfg.window_size, int(cfg.initial_rto_s * 1000),
                                   initializer=n),
            state=bytearray(n), sent_at=[0.0] * n, last_tx=[0] * n, first_tx=[0] * n,
            fast_lost=bytearray(n),
            retransmitted=bytearray(n), req_rto=peer.rtt.rto, req_first_at=now)
        peer.outgoing[mid] = out
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.SEND_QUEUED, now, address, mid, None, n,
                                   len(payload)))
        fast = cfg.fast_start
        if ensure and n == 1 and fast and (fast is True or address in fast):
            self._fast_start(out, now)
        else:
            self._send_req(out, now)
        self._rearm(out)
        self.counters["messages_queued"] += 1
        return out.handle

    def datagram_received(self, data: bytes, address: Address, now: float) -> None:
        """Feed one datagram. Never raises for bad input; counts and drops."""
        self.counters["packets_received"] += 1
        try:
            dg = parse_datagram(data)
        except MalformedPacket:
            if self._tracer is not None:
                self._trace(TraceEvent(_RECEIVED, now, address, size=len(data)))
            self._drop("dropped_malformed", address, None, now)
            return
        if dg is None:
            if self._tracer is not None:
                self._trace(TraceEvent(_RECEIVED, now, address, size=len(data)))
            self._drop("dropped_crc", address, None, now)
            return
        kind, mid, number, body, _ = dg
        if self._tracer is not None:
            self._trace(TraceEvent(_RECEIVED, now, address, mid, kind, number, len(data)))
        if kind == ACK_KIND:
            self._on_ack(address, mid, number, now)
        elif kind == DATA_KIND:
            self._on_data(address, mid, number, body, now)
        elif kind == REQ_KIND:
            self._on_req(address, mid, number, now)
        else:
            self._on_fast(address, mid, number, body, now)

    def handle_timers(self, now: float) -> None:
        """Run everything due at or before ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, obj = heapq.heappop(timers)
            if obj.done or when != obj.scheduled_at:
                continue                      # stale entry
            obj.scheduled_at = _INF
            if isinstance(obj, _Outgoing):
                self._service_outgoing(obj, now)
                if not obj.done:
                    self._rearm(obj)
            else:
                self._service_incoming(obj, now)
        if self._completed:
            self._purge_completed(now)

    def next_timer(self) -> float | None:
        timers = self._timers
        while timers:
            when, _, obj = timers[0]
            if obj.done or when != obj.scheduled_at:
                heapq.heappop(timers)
                continue
            return when
        return None

    def datagrams_to_send(self, now: float, limit: int = 1 << 30) -> list[tuple[bytes, Address]]:
        """Control packets first (ACKs, REQs), then DATA within each peer's
        congestion window, round robin over that peer's messages so tokens
        are not stuck behind bulk transfers. At most ``limit`` datagrams."""
        out: list[tuple[bytes, Address]] = []
        control = self._control
        while control and len(out) < limit:
            out.append(control.popleft())
        if len(out) >= limit or not self._sending:
            return out
        by_peer: dict[Address, list[_Outgoing]] = {}
        for msg in self._sending.values():
            by_peer.setdefault(msg.address, []).append(msg)
        for address, msgs in by_peer.items():
            peer = self._peers[address]
            cwnd = peer.cwnd
            if len(msgs) == 1:
                msg = msgs[0]
                while peer.inflight < cwnd.cwnd and len(out) < limit:
                    dg = self._next_data(msg, peer, now)
                    if dg is None:
                        break
                    out.append((dg, address))
                continue
            # Round robin, one packet per message per pass, least recently
            # served first: a token waits behind at most one packet of each
            # bulk transfer, and no transfer starves (smallest-first did,
            # under a steady stream of small messages).
            msgs.sort(key=lambda m: m.last_served)
            while msgs and peer.inflight < cwnd.cwnd and len(out) < limit:
                busy = []
                for msg in msgs:
                    if peer.inflight >= cwnd.cwnd or len(out) >= limit:
                        break
                    dg = self._next_data(msg, peer, now)
                    if dg is not None:
                        self._served += 1
                        msg.last_served = self._served
                        out.append((dg, address))
                        busy.append(msg)
                msgs = busy
        return out

    def has_events(self) -> bool:
        """Whether pop_events would return anything."""
        return bool(self._events)

    def pop_events(self) -> list[EngineEvent]:
        ev, self._events = self._events, []
        return ev

    def send_ack_start(self, address: Address, message_id: int, now: float) -> None:
        """Queue an ACK_START (ACK of sequence 0) for ``message_id`` to
        ``address``; it leaves with the next ``datagrams_to_send``. The
        engine answers every acceptable REQ itself; this is for drivers
        that offer TTPython's ``terminate_handshake``."""
        self._ack(address, message_id, 0, now)

    def cancel_all(self, reason: str, now: float | None = None) -> None:
        """Fail every pending send (used when the interface closes)."""
        t = math.nan if now is None else now
        for peer in self._peers.values():
            for out in list(peer.outgoing.values()):
                self._fail(out, reason, t)

    # ---------------------------------------------------------------- queries
    def pending_sends(self) -> int:
        return sum(len(p.outgoing) for p in self._peers.values())

    def pending_receives(self) -> int:
        return sum(len(p.incoming) for p in self._peers.values())

    @property
    def reserved_bytes(self) -> int:
        return self._reserved_total

    def reserved_bytes_by_peer(self) -> dict[Address, int]:
        """Bytes each peer's incomplete incoming messages reserve."""
        return {address: peer.reserved for address, peer in self._peers.items()}

    def rtt_of(self, address: Address) -> RttEstimator | None:
        peer = self._peers.get(address)
        return peer.rtt if peer else None

    def sending_window(self, address: Address, message_id: int) -> TTSlidingWindow | None:
        """The window of a send to ``address`` still under way, else None."""
        peer = self._peers.get(address)
        out = peer.outgoing.get(message_id) if peer else None
        return out.window if out else None

    def receiving_window(self, address: Address, message_id: int) -> TTSlidingWindow | None:
        """The window of a message from ``address`` still arriving, else None."""
        peer = self._peers.get(address)
        inc = peer.incoming.get(message_id) if peer else None
        return inc.window if inc else None

    # ---------------------------------------------------------------- helpers
    def _peer(self, address: Address) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            cfg = self.config
            peer = _Peer(address,
                         RttEstimator(cfg.initial_rto_s, cfg.min_rto_s, cfg.max_rto_s,
                                      cfg.rto_scale),
                         CongestionWindow(initial=cfg.initial_cwnd, maximum=cfg.window_size,
                                          minimum=min(cfg.min_cwnd, cfg.window_size)),
                         reorder=cfg.dup_thresh)
            self._peers[address] = peer
        return peer

    def _trace(self, event: TraceEvent) -> None:
        """Hand ``event`` to the tracer. Callers check ``self._tracer`` first,
        so no event is built without one. The tracer's failures are counted,
        never raised into the protocol."""
        tracer = self._tracer
        if tracer is None:
            return
        try:
            tracer(event)
        except Exception:
            if not self.counters["tracer_errors"]:
                log.exception("ttnet tracer raised; counting further errors silently")
            self.counters["tracer_errors"] += 1

    def _drop(self, reason: str, address: Address, mid: int | None, now: float) -> None:
        """A received datagram that changes nothing: count it under ``reason``."""
        self.counters[reason] += 1
        if self._tracer is not None:
            self._trace(TraceEvent(_DROPPED, now, address, mid, reason=reason))

    def _schedule(self, obj: Any, when: float) -> None:
        if when < obj.scheduled_at:
            obj.scheduled_at = when
            self._timer_seq += 1
            heapq.heappush(self._timers, (when, self._timer_seq, obj))

    # ------------------------------------------------------------ sender side
    def _send_req(self, out: _Outgoing, now: float) -> None:
        dg = encode_req(out.message_id, out.num_packets)
        self._control.append((dg, out.address))
        self.counters["req_sent"] += 1
        if out.req_count:
            self.counters["req_retransmitted"] += 1
        if self._tracer is not None:
            self._trace(TraceEvent(_RESENT if out.req_count else _SENT, now, out.address,
                                   out.message_id, REQ_KIND, out.num_packets, len(dg)))
        out.req_count += 1
        if out.ensure:
            out.req_next_at = now + out.req_rto
            out.req_rto = min(out.req_rto * 2, self.config.max_rto_s)
        else:
            out.req_next_at = _INF

    def _fast_start(self, out: _Outgoing, now: float) -> None:
        """Start a send with no handshake: its one packet leaves as FAST
        with the next datagrams_to_send, and is retransmitted like any
        DATA packet (each copy is a complete request on its own, so the
        stall restart never applies)."""
        out.fast = True
        out.heard_at = now
        self._mark_started(out, now)
        self._sending[out.handle] = out
        self.counters["fast_starts"] += 1

    def _mark_started(self, out: _Outgoing, now: float) -> None:
        """The send's packets may go: by its ACK_START, or at once (fast start)."""
        out.started = True
        out.started_at = now
        out.window.start(now=now)
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.SEND_STARTED, now, out.address, out.message_id,
                                   None, out.num_packets, len(out.payload)))

    def _rearm(self, out: _Outgoing) -> None:
        when = out.deadline
        if not out.started:
            when = min(when, out.req_next_at)
        else:
            head = self._flight_head(out)
            if head is not None:
                rto = self._backed_off_rto(out, self._peers[out.address])
                when = min(when, out.sent_at[head] + rto)
            stall = self.config.stall_restart_s
            if out.ensure and stall is not None and not out.fast:
                when = min(when, out.heard_at + stall)
        self._schedule(out, when)

    def _backed_off_rto(self, out: _Outgoing, peer: _Peer) -> float:
        # The backed-off timer is capped by max_rto_s: during an outage the
        # sender must keep probing well inside the receiver's
        # incoming_idle_timeout_s, or the receiver forgets the message
        # before the link returns (uncapped, 64 x RTO reached minutes).
        return min(peer.rtt.rto * out.backoff, max(self.config.max_rto_s, peer.rtt.rto))

    def _flight_head(self, out: _Outgoing) -> int | None:
        flight, state, last_tx = out.flight, out.state, out.last_tx
        while flight:
            tx, idx = flight[0]
            if state[idx] == _INFLIGHT and last_tx[idx] == tx:
                return idx
            flight.popleft()
        return None

    def _service_outgoing(self, out: _Outgoing, now: float) -> None:
        if now >= out.deadline:
            if not out.started:
                reason = (f"deadline: no ACK_START after {out.req_count} REQ(s)"
                          + ("" if out.ensure else " (best effort sends REQ once)"))
            else:
                reason = (f"deadline: {out.window.done_count}/{out.num_packets} "
                          "packets acknowledged")
            self._fail(out, reason, now)
            return
        if not out.started:
            if now >= out.req_next_at:
                self._send_req(out, now)
            return
        peer = self._peers[out.address]
        stall = self.config.stall_restart_s
        if out.ensure and stall is not None and not out.fast and now >= out.heard_at + stall:
            self._restart(out, peer, now)
            return
        rto = self._backed_off_rto(out, peer)
        head = self._flight_head(out)
        if head is None or out.sent_at[head] + rto > now:
            return
        # The oldest packet timed out: presume everything still in flight of
        # this message lost too (as TCP does on RTO). Expiring packets one
        # by one, each with a doubled timer, left the rest of a large flight
        # counted against cwnd for minutes after an outage, so nothing could
        # be retransmitted.
        flight, state, last_tx = out.flight, out.state, out.last_tx
        timed_out = False
        while flight:
            tx, idx = flight.popleft()
            if state[idx] == _INFLIGHT and last_tx[idx] == tx:
                self._mark_lost(out, peer, idx)
                timed_out = True
        if timed_out:
            self.counters["rto_expired"] += 1
            out.backoff = min(out.backoff * 2, 64.0)
            srtt = peer.rtt.srtt if peer.rtt.srtt is not None else 0.0
            peer.cwnd.on_loss(now, srtt)

    def _restart(self, out: _Outgoing, peer: _Peer, now: float) -> None:
        """Start the send over from its handshake (see stall_restart_s).

        Same message id, so a receiver that did complete the message
        re-ACKs it from its completed set and never delivers it twice; a
        receiver that forgot it accepts the REQ as new. Packets acked before
        are sent again: the receiver may have thrown them away."""
        n = out.num_packets
        peer.inflight -= sum(1 for s in out.state if s == _INFLIGHT)
        self._sending.pop(out.handle, None)
        cfg = self.config
        out.window = TTSlidingWindow(cfg.window_size, int(cfg.initial_rto_s * 1000),
                                     initializer=n)
        out.state = bytearray(n)
        out.last_tx = [0] * n
        out.first_tx = [0] * n
        out.fast_lost = bytearray(n)
        out.retransmitted = bytearray(n)
        out.flight.clear()
        out.lost.clear()
        out.next_new = 0
        out.backoff = 1.0
        out.started = False
        out.req_count = 0
        out.req_rto = peer.rtt.rto
        out.req_first_at = now
        out.restarts += 1
        self.counters["send_restarted"] += 1
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.SEND_RESTARTED, now, out.address,
                                   out.message_id, None, n, len(out.payload)))
        self._send_req(out, now)

    def _mark_lost(self, out: _Outgoing, peer: _Peer, idx: int) -> None:
        out.state[idx] = _LOST
        peer.inflight -= 1
        out.lost.append(idx)

    def _next_data(self, out: _Outgoing, peer: _Peer, now: float) -> bytes | None:
        state = out.state
        idx = -1
        resent = False
        while out.lost:
            i = out.lost.popleft()
            if state[i] == _LOST:
                idx = i
                if out.retransmitted[i] < 255:   # resend count
                    out.retransmitted[i] += 1
                self.counters["data_retransmitted"] += 1
                resent = True
                break
        if idx < 0:
            if out.next_new >= out.window.end:
                return None
            idx = out.next_new
            out.next_new += 1
            out.first_tx[idx] = self._tx + 1
        self._tx += 1
        state[idx] = _INFLIGHT
        out.last_tx[idx] = self._tx
        out.sent_at[idx] = now
        out.flight.append((self._tx, idx))
        peer.inflight += 1
        self.counters["data_sent"] += 1
        if len(out.flight) == 1 or out.scheduled_at == _INF:
            self._rearm(out)
        if out.fast:
            dg = encode_fast(out.message_id, out.payload)
            self.counters["fast_sent"] += 1
            if self._tracer is not None:
                self._trace(TraceEvent(_RESENT if resent else _SENT, now, out.address,
                                       out.message_id, FAST_KIND, 0, len(dg)))
            return dg
        start = idx * MAX_DATA
        seq = idx % out.window.modulus
        dg = encode_data(out.message_id, seq, out.payload[start:start + MAX_DATA])
        if self._tracer is not None:
            self._trace(TraceEvent(_RESENT if resent else _SENT, now, out.address,
                                   out.message_id, DATA_KIND, seq, len(dg)))
        return dg

    def _on_ack(self, address: Address, mid: int, seq: int, now: float) -> None:
        self.counters["acks_received"] += 1
        peer = self._peers.get(address)
        out = peer.outgoing.get(mid) if peer is not None else None
        if peer is None or out is None:
            self._drop("ack_unknown_message", address, mid, now)
            return
        out.heard_at = now
        if not out.started:
            if seq != 0:
                self._drop("ack_before_start", address, mid, now)
                return
            self._mark_started(out, now)
            out.echo_budget = out.req_count - 1
            if out.req_count == 1:        # Karn: only an unambiguous sample
                peer.rtt.sample(now - out.req_first_at)
            self.counters["handshakes"] += 1
            if out.num_packets == 0:
                self._complete(out, now)
                return
            self._sending[out.handle] = out
            self._rearm(out)
            return
        idx = out.window.get_packet_index(seq)
        if idx is None:
            self._drop("ack_out_of_window", address, mid, now)
            return
        if idx == 0 and out.state[0] != _ACKED and not out.fast:
            # ACK_START and ACK(0) are the same datagram (a fast-start send
            # has no ACK_START: its ACK(0) can only acknowledge FAST). Extra ACK_STARTs
            # come from retransmitted REQs (at most req_count-1 of them) and
            # from the network duplicating one; the copies trail the first
            # by about the path's delay variation, while a real ACK(0) needs
            # a round trip after DATA 0. Taking an echo for an ack would end
            # a send whose packet 0 was lost, so anything ambiguous is an
            # echo: the worst case is one retransmission of packet 0.
            echo = out.echo_budget > 0
            if echo:
                out.echo_budget -= 1
            elif out.state[0] == _UNSENT:
                peer.duplicates_seen = True     # a copy: DATA 0 is not even out
            if echo or now - out.started_at < self._echo_window(peer):
                self._drop("ack_start_echo_ignored", address, mid, now)
                if out.state[0] == _INFLIGHT:
                    # Ambiguous, not necessarily lost: probe with DATA 0
                    # now rather than after an RTO (which would resend the
                    # whole flight). At most one probe per ACK(0).
                    self._mark_lost(out, peer, 0)
                return
        if out.state[idx] == _UNSENT:
            self._drop("ack_for_unsent", address, mid, now)
            return
        if out.window.mark_acked(seq) is None:
            if not out.retransmitted[idx]:
                peer.duplicates_seen = True     # sent once, acknowledged twice
            self._drop("ack_duplicate", address, mid, now)
            return
        prev = out.state[idx]
        out.state[idx] = _ACKED
        if prev == _INFLIGHT:
            peer.inflight -= 1
        if not out.retransmitted[idx]:
            # Only a never-resent packet says which transmission was acked.
            peer.rtt.sample(now - out.sent_at[idx])
            if prev == _INFLIGHT:
                self._observe_reordering(peer, out.last_tx[idx])
            if out.last_tx[idx] > peer.max_acked_tx:
                peer.max_acked_tx = out.last_tx[idx]
        elif (out.retransmitted[idx] == 1 and out.fast_lost[idx]
              and now - out.sent_at[idx] < 0.5 * (peer.rtt.min_rtt or 0.0)):
            # Fast-retransmitted once, then acknowledged sooner than any
            # round trip after the resend: the original arrived, only
            # overtaken (with several resends the ack could be any of them).
            # Learn how far this path reorders.
            self.counters["spurious_retransmit"] += 1
            self._observe_reordering(peer, out.first_tx[idx])
        out.backoff = 1.0
        peer.cwnd.on_ack()
        if out.window.complete:
            self._complete(out, now)
            return
        # Fast retransmit: anything sent dup_thresh transmissions before the
        # packet just acknowledged and still unacknowledged is presumed lost.
        flight, state, last_tx = out.flight, out.state, out.last_tx
        limit = last_tx[idx] - peer.reorder
        lost_any = False
        while flight and flight[0][0] < limit:
            tx, i = flight.popleft()
            if state[i] == _INFLIGHT and last_tx[i] == tx:
                self._mark_lost(out, peer, i)
                out.fast_lost[i] = 1
                lost_any = True
        if lost_any:
            self.counters["fast_retransmit"] += 1
            srtt = peer.rtt.srtt if peer.rtt.srtt is not None else 0.0
            peer.cwnd.on_loss(now, srtt)

    def _echo_window(self, peer: _Peer) -> float:
        """How long after ACK_START an ACK(0) is taken for an echo of it.

        A network copy trails the original by about the path's delay
        variation (4 x mdev); a real ACK(0) needs a round trip after DATA 0
        (at least ~min_rtt). Where the variation is mostly the endpoints'
        scheduling (loopback, a busy host: mdev close to the round trip)
        the two overlap and every real ACK(0) of a one-packet message was
        taken for an echo and cost a retransmission. So, until the path has
        been seen duplicating anything, the window stops at half the
        smallest round trip measured: an ACK(0) that early cannot be real."""
        rtt = peer.rtt
        window = 4 * rtt.mdev
        if not peer.duplicates_seen and rtt.min_rtt is not None:
            window = min(window, 0.5 * rtt.min_rtt)
        return window

    def _observe_reordering(self, peer: _Peer, tx: int) -> None:
        """A packet sent as transmission ``tx`` was acknowledged after ones
        sent later: raise the peer's fast-retransmit threshold to match, so
        a reordering path stops triggering spurious retransmissions."""
        degree = peer.max_acked_tx - tx
        if degree >= peer.reorder:
            peer.reorder = min(degree + 1, self.config.max_reorder)

    def _complete(self, out: _Outgoing, now: float) -> None:
        size = len(out.payload)
        self._finish(out)
        self.counters["messages_sent"] += 1
        self._events.append(SendCompleted(out.handle, out.address, out.message_id, size))
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.SEND_COMPLETED, now, out.address,
                                   out.message_id, None, out.num_packets, size))

    def _fail(self, out: _Outgoing, reason: str, now: float) -> None:
        if out.done:
            return
        size = len(out.payload)
        self._finish(out)
        self.counters["messages_failed"] += 1
        log.info("send to %s failed: %s", out.address, reason)
        self._events.append(SendFailed(out.handle, out.address, out.message_id, size, reason))
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.SEND_FAILED, now, out.address, out.message_id,
                                   None, out.num_packets, size, reason))

    def _finish(self, out: _Outgoing) -> None:
        out.done = True
        peer = self._peers[out.address]
        peer.outgoing.pop(out.message_id, None)
        self._sending.pop(out.handle, None)
        inflight = sum(1 for s in out.state if s == _INFLIGHT) if out.started else 0
        peer.inflight -= inflight
        out.payload = b""
        out.flight.clear()
        out.lost.clear()

    # ---------------------------------------------------------- receiver side
    def _ack(self, address: Address, mid: int, seq: int, now: float) -> None:
        dg = encode_ack(mid, seq)
        self._control.append((dg, address))
        self.counters["acks_sent"] += 1
        if self._tracer is not None:
            self._trace(TraceEvent(_SENT, now, address, mid, ACK_KIND, seq, len(dg)))

    def _on_req(self, address: Address, mid: int, num: int, now: float) -> None:
        self.counters["req_received"] += 1
        cfg = self.config
        peer = self._peer(address)
        inc = peer.incoming.get(mid)
        if inc is not None:
            # Repeat REQ: the ACK_START may have been lost. Once DATA flows
            # the sender has started and another ACK(0) would only be
            # mistaken for an ack of packet 0.
            if inc.window.done_count == 0 and now - inc.last_ack_start >= cfg.ack_start_guard_s:
                inc.last_ack_start = now
                self._ack(address, mid, 0, now)
            else:
                self._drop("req_duplicate_ignored", address, mid, now)
            return
        done = self._completed.get((address, mid))
        if done is not None and done[0] == num:
            self._drop("req_duplicate_completed", address, mid, now)
            self._ack(address, mid, 0, now)
            return
        size = num * MAX_DATA
        if size > cfg.max_message_size:
            self._drop("req_refused_too_large", address, mid, now)
            return
        if len(peer.incoming) >= cfg.max_incoming_per_peer:
            self._drop("req_refused_peer_limit", address, mid, now)
            return
        if (peer.reserved + size > cfg.peer_receive_budget
                or self._reserved_total + size > cfg.total_receive_budget):
            self._drop("req_refused_budget", address, mid, now)
            return
        window = TTSlidingWindow(cfg.window_size, int(cfg.initial_rto_s * 1000),
                                 initializer=num)
        window.start(now=now)
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.RECEIVE_STARTED, now, address, mid, None, num))
        self._ack(address, mid, 0, now)
        if num == 0:
            self._deliver(address, mid, [], 0, now)
            return
        inc = _Incoming(address, mid, window, size, now, now)
        peer.incoming[mid] = inc
        peer.reserved += size
        self._reserved_total += size
        self._schedule(inc, now + cfg.incoming_idle_timeout_s)

    def _on_data(self, address: Address, mid: int, seq: int, data: bytes,
                 now: float) -> None:
        self.counters["data_received"] += 1
        peer = self._peers.get(address)
        inc = peer.incoming.get(mid) if peer is not None else None
        if peer is None or inc is None:
            if (address, mid) in self._completed:
                self._drop("data_duplicate_completed", address, mid, now)
                self._ack(address, mid, seq, now)
            else:
                self._drop("dropped_unknown_message", address, mid, now)
            return
        window = inc.window
        idx, new = window.store(seq, data)
        if idx is None:
            self._drop("dropped_out_of_window", address, mid, now)
            return
        self._ack(address, mid, seq, now)
        if not new:
            self._drop("data_duplicate", address, mid, now)
            return
        if idx < window.total - 1 and len(data) != MAX_DATA:
            # Only the last packet may be short: a peer that breaks this
            # would make us reassemble a corrupt payload. Drop the message.
            self._drop("dropped_bad_fragment", address, mid, now)
            self._abandon(peer, inc, "dropped_bad_fragment", now)
            return
        inc.last_progress = now
        if window.complete:
            parts = window.items
            self._drop_incoming(peer, inc)
            self._deliver(address, mid, parts, window.total, now)

    def _on_fast(self, address: Address, mid: int, seq: int, data: bytes,
                 now: float) -> None:
        """A FAST packet: a whole one-packet message, REQ and DATA in one.
        Delivered at once (nothing to reserve or reassemble) and ACKed with
        ACK(0); a copy of one already delivered is re-ACKed, never
        delivered again (the completed set, as for REQ and DATA)."""
        self.counters["fast_received"] += 1
        if seq != 0:
            self._drop("dropped_bad_fast", address, mid, now)
            return
        peer = self._peers.get(address)
        if peer is not None and mid in peer.incoming:
            # The id of a message this peer started with a REQ: not a
            # ttnet sender's doing (it picks fresh random ids). Keep the
            # message under way; ignore this.
            self._drop("fast_conflicts_incoming", address, mid, now)
            return
        if (address, mid) in self._completed:
            self._drop("fast_duplicate_completed", address, mid, now)
            self._ack(address, mid, 0, now)
            return
        if len(data) > self.config.max_message_size:
            self._drop("fast_refused_too_large", address, mid, now)
            return
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.RECEIVE_STARTED, now, address, mid, None, 1))
        self._ack(address, mid, 0, now)
        self._deliver(address, mid, [data], 1, now)

    def _drop_incoming(self, peer: _Peer, inc: _Incoming) -> None:
        inc.done = True
        peer.incoming.pop(inc.message_id, None)
        peer.reserved -= inc.reserved
        self._reserved_total -= inc.reserved
        inc.window.items = []

    def _abandon(self, peer: _Peer, inc: _Incoming, reason: str, now: float) -> None:
        """Give up an incomplete incoming message."""
        self._drop_incoming(peer, inc)
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.RECEIVE_ABANDONED, now, inc.address,
                                   inc.message_id, None, inc.window.total, reason=reason))

    def _service_incoming(self, inc: _Incoming, now: float) -> None:
        expires = inc.last_progress + self.config.incoming_idle_timeout_s
        if now >= expires:
            self.counters["incoming_expired"] += 1
            log.info("dropping incomplete message %x from %s after %.1fs idle",
                     inc.message_id, inc.address, now - inc.last_progress)
            self._abandon(self._peers[inc.address], inc, "incoming_expired", now)
        else:
            self._schedule(inc, expires)

    def _deliver(self, address: Address, mid: int, parts: list[bytes], num: int,
                 now: float) -> None:
        self._completed[(address, mid)] = (num, now + self.config.completed_ttl_s)
        self._purge_completed(now)
        size = sum(map(len, parts))
        self.counters["messages_delivered"] += 1
        self.counters["bytes_delivered"] += size
        self._events.append(Delivered(address, mid, parts))
        if self._tracer is not None:
            self._trace(TraceEvent(TraceKind.RECEIVE_DELIVERED, now, address, mid, None, num,
                                   size))

    def _purge_completed(self, now: float) -> None:
        completed = self._completed
        cap = self.config.completed_max
        while completed:
            key, (_, expires) = next(iter(completed.items()))
            if expires > now and len(completed) <= cap:
                break
            completed.popitem(last=False)
