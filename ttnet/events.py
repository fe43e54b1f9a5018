"""What an :class:`ttnet.engine.Engine` tells the world.

Owns two vocabularies:

- **Engine events** (:class:`EngineEvent` and its subclasses), the outcomes
  a driver must act on: a message arrived, a send completed, a send
  failed. ``Engine.pop_events()`` returns them; :mod:`ttnet.driver` turns
  them into the user's callbacks.
- **Trace events** (:class:`TraceEvent`), what an observer may log: every
  datagram received, sent, retransmitted or dropped (with the reason) and
  every step of a message's life. ``EngineConfig.tracer`` receives them;
  nothing in ttnet depends on them.

Must never: hold protocol state or logic, do I/O, or import anything of
ttnet's but the standard library. The classes are small values; the
engine builds trace events only when a tracer is set.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Hashable, NamedTuple

#: Who a message goes to or comes from: ``("ip", port)`` for UDP, an
#: ensemble name in the simulator. The engine only hashes and compares it.
Address = Hashable


# --- engine events -------------------------------------------------------------
class EngineEvent:
    """Base of the events ``Engine.pop_events()`` returns."""

    __slots__ = ()
    address: Address
    message_id: int


class Delivered(EngineEvent):
    """A complete incoming message. The payload is joined from its packets
    on first access, so a driver can do that copy outside its I/O loop."""

    __slots__ = ("address", "message_id", "_parts", "_payload")

    def __init__(self, address: Address, message_id: int, parts: list[bytes]) -> None:
        self.address = address
        self.message_id = message_id
        self._parts = parts
        self._payload: bytes | None = None

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            self._payload = b"".join(self._parts)
            self._parts = []
        return self._payload

    def parts(self) -> list[bytes]:
        """The packets' data in order (the joined payload once joined)."""
        return [self._payload] if self._payload is not None else self._parts

    def __repr__(self) -> str:
        return f"Delivered({self.address!r}, {self.message_id:#x})"


@dataclass(frozen=True, slots=True)
class SendCompleted(EngineEvent):
    """Every packet of the send ``handle`` was acknowledged."""

    handle: int
    address: Address
    message_id: int
    size: int


@dataclass(frozen=True, slots=True)
class SendFailed(EngineEvent):
    """The send ``handle`` was given up (deadline, or the engine closed)."""

    handle: int
    address: Address
    message_id: int
    size: int
    reason: str


# --- trace events --------------------------------------------------------------
class TraceKind(enum.StrEnum):
    """What a :class:`TraceEvent` reports."""

    #: A datagram reached the engine (``packet_type`` None if unparseable).
    DATAGRAM_RECEIVED = "datagram_received"
    #: The engine put a datagram out for the first time: REQs and ACKs when
    #: it makes them (they leave ahead of DATA at the next
    #: ``datagrams_to_send``), DATA when ``datagrams_to_send`` hands it out.
    DATAGRAM_SENT = "datagram_sent"
    #: Like DATAGRAM_SENT, for a REQ or DATA packet sent before. Each
    #: datagram out is exactly one SENT or one RETRANSMITTED event.
    DATAGRAM_RETRANSMITTED = "datagram_retransmitted"
    #: A received datagram changed nothing (beyond, perhaps, an ACK in
    #: reply); ``reason`` is the counter it was counted under, e.g.
    #: ``dropped_crc``, ``ack_duplicate``, ``req_refused_budget``.
    DATAGRAM_DROPPED = "datagram_dropped"
    #: ``send_message`` took a message (``number``: packets, ``size``: bytes).
    SEND_QUEUED = "send_queued"
    #: ACK_START arrived; DATA may flow.
    SEND_STARTED = "send_started"
    #: A started ensure=True send heard no ACK for ``stall_restart_s`` and
    #: went back to its handshake (REQ again, then every packet).
    SEND_RESTARTED = "send_restarted"
    #: Every packet was acknowledged.
    SEND_COMPLETED = "send_completed"
    #: The send was given up (``reason``).
    SEND_FAILED = "send_failed"
    #: A REQ was accepted: an incoming message was set up (``number``: packets).
    RECEIVE_STARTED = "receive_started"
    #: An incoming message is complete (``size``: bytes).
    RECEIVE_DELIVERED = "receive_delivered"
    #: An incomplete incoming message was dropped (``reason``).
    RECEIVE_ABANDONED = "receive_abandoned"


class TraceEvent(NamedTuple):
    """One step the engine took, at ``time`` (the engine's clock)."""

    kind: TraceKind
    time: float
    address: Address
    message_id: int | None = None
    #: The datagram's type byte (datagram events of a parseable datagram).
    packet_type: int | None = None
    #: Sequence number (DATA, ACK), packet count (REQ, message events).
    number: int | None = None
    #: Datagram bytes (datagram events) or payload bytes (message events).
    size: int = 0
    reason: str | None = None


#: What ``EngineConfig.tracer`` takes: called synchronously, in the thread
#: that drives the engine, once per :class:`TraceEvent`. It should be quick
#: and must not call back into the engine. An exception from it is counted
#: (``tracer_errors``) and logged, never passed on: a broken observer must
#: not stop the protocol.
Tracer = Callable[[TraceEvent], None]
