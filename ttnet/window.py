"""Selective-repeat window arithmetic shared by the sender and receiver.

Owns the mapping between packet indices (0..total-1) and the wire's sequence
numbers (index mod 2W+1), which indices are currently inside the window, and
sliding the window's base over a prefix of finished packets. It keeps no
timers and reads no clock (callers pass the time to
:meth:`TTSlidingWindow.start`); it touches a socket only in TTPython's
packet-and-socket methods, which only TTPython-style code calls: the protocol engine
(:mod:`ttnet.engine`) decides when to send and retransmit.

Why 2W+1: an index is resolved relative to the base over the range
``[base - W, base + W)``, i.e. 2W distinct values, which stays unambiguous
modulo 2W+1. That range covers every packet a peer can legitimately still
send or acknowledge: up to W in the window and up to W behind it whose
acknowledgement may have been lost.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .wire import TTAckPacket, TTNetworkMessageUDP, WindowException

log = logging.getLogger(__name__)


class TTSlidingWindow:
    """Window over one message's packets (TTPython's class).

    ``TTSlidingWindow(window_size=1000, timeout_ms=100, completion_fn=None,
    initializer=None)``. The ``initializer`` decides the side, as in
    TTPython: a :class:`~ttnet.wire.TTRequestPacket` (or, ttnet's shortcut,
    a number of packets) makes a receiving window; a
    :class:`~ttnet.wire.TTNetworkMessageUDP` (or a sequence of packets or
    items) a sending window. ``initializer``, ``is_sending``,
    ``window_size``, ``timeout_ms`` and ``completion_fn`` are attributes.

    ``completion_fn(msg)`` is called once, when every packet is done, with
    what TTPython gives it: a sending window passes its ``initializer`` (the
    message sent); a receiving window passes the assembled message, a
    ``TTNetworkMessageUDP`` whose ``recipient_ip``/``recipient_port`` are the
    sender's (the ``address`` last given to :meth:`receive`) and whose
    ``message_id`` is the REQ's.

    TTPython's methods take packets and a socket: :meth:`ack`,
    :meth:`receive`, :meth:`slide`, :meth:`start`. Given a socket and an
    address they send what TTPython sends (the packets that enter a
    sending window, an ACK for every received packet); without them they
    only update the window. The window itself never retransmits and has no
    timer thread: ``timeout_ms`` is kept as the initial retransmission
    timeout of whoever drives it. The protocol engine drives its windows
    with sequence numbers instead (:meth:`mark_acked`, :meth:`store`) and
    passes no ``completion_fn``.
    """

    def __init__(self, window_size: int = 1000, timeout_ms: int = 100,
                 completion_fn: Callable[[Any], Any] | None = None,
                 initializer: Any = None) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.window_size = window_size
        self.modulus = 2 * window_size + 1
        self.timeout_ms = timeout_ms
        self.completion_fn = completion_fn
        self.initializer = initializer
        #: The message's id (from the initializer, or the first DATA packet
        #: received) and the peer's address (the last one given).
        self.message_id = 0
        self.address: Any = None
        if initializer is None or isinstance(initializer, int):
            self.is_sending = False                     # the engine's windows: fast path
            self.total: int = initializer or 0
            self.items: list[Any] = [None] * self.total
        elif hasattr(initializer, "generate_packets"):  # a message to send
            self.is_sending = True
            self.items = list(initializer.generate_packets(window_size))
            self.total = len(self.items)
            self.message_id = getattr(initializer, "message_id", 0)
        elif hasattr(initializer, "num_packets"):       # a REQ: a message to receive
            self.is_sending = False
            self.total = initializer.num_packets
            self.items = [None] * self.total
            self.message_id = initializer.message_id
        else:
            self.is_sending = True
            self.items = list(initializer)
            self.total = len(self.items)
        self.done = bytearray(self.total)
        self.done_count = 0
        self.base = 0
        self.started_at: float | None = None
        self._completed = False
        if self.total == 0:
            self._complete()

    # --- index <-> sequence -------------------------------------------------
    def sequence_of(self, index: int) -> int:
        return index % self.modulus

    def get_packet_index(self, sequence_number: int) -> int | None:
        """Index (in the whole message) of the packet with this sequence
        number near the window.

        Resolves over ``[base - W, base + W)``; None when the number maps
        outside the message (or is not a valid sequence number at all).
        """
        if not 0 <= sequence_number < self.modulus:
            return None
        lo = self.base - self.window_size
        index = lo + (sequence_number - lo) % self.modulus
        if index >= self.base + self.window_size or index < 0 or index >= self.total:
            return None
        return index

    def is_in_window(self, sequence_number: int) -> bool:
        index = self.get_packet_index(sequence_number)
        return index is not None and self.base <= index < self.base + self.window_size

    @property
    def end(self) -> int:
        """One past the last index currently inside the window."""
        return min(self.base + self.window_size, self.total)

    @property
    def complete(self) -> bool:
        return self._completed

    # --- TTPython's methods: packets and a socket ---------------------------
    def start(self, server_socket: Any = None, address: Any = None, timeout: int | None = None,
              *, now: float | None = None) -> None:
        """Activate the window: a sending window sends the packets inside
        it on ``server_socket`` to ``address`` (when given). ``timeout``
        (ms) replaces ``timeout_ms``; ``now`` (ttnet's) records
        ``started_at`` on the caller's clock (real or simulated seconds)."""
        if now is not None:
            self.started_at = now
        if timeout is not None:
            self.timeout_ms = timeout
        if address is not None:
            self.address = address
        if self.is_sending:
            self._send_items(self.base, self.end, server_socket, address)

    def ack(self, ack_packet: Any, server_socket: Any = None, address: Any = None) -> int | None:
        """Sender: take a :class:`~ttnet.wire.TTAckPacket`, mark its packet
        ``ACKed``, slide, and send the packets that entered the window.
        Returns the packet's index if that was new, None for a duplicate or
        an acknowledgement outside the window."""
        old_end = self.end
        index = self.mark_acked(ack_packet.sequence_num)
        if index is not None and hasattr(self.items[index], "ACKed"):
            self.items[index].ACKed = True
        self._send_items(old_end, self.end, server_socket, address)
        return index

    def receive(self, data_packet: Any, server_socket: Any = None,
                address: Any = None) -> tuple[int | None, bool]:
        """Receiver: take a :class:`~ttnet.wire.TTDataPacket`, ACK it on
        ``server_socket`` to ``address`` (every packet, in the window or
        not, as TTPython does) and store it; the last one calls
        ``completion_fn`` with the assembled message. Returns
        ``(index, is_new)`` as :meth:`store` does."""
        if address is not None:
            self.address = address
        if not self.message_id:
            self.message_id = data_packet.message_id
        if server_socket is not None and address is not None:
            TTAckPacket(data_packet.message_id, data_packet.sequence_num).send(
                server_socket, address)
        return self.store(data_packet.sequence_num, bytes(data_packet.payload))

    def slide(self, server_socket: Any = None, address: Any = None) -> int:
        """Advance the base over finished packets (a sending window sends
        the packets that entered it); returns how far it moved."""
        old_end = self.end
        moved = self._slide()
        self._send_items(old_end, self.end, server_socket, address)
        return moved

    def _send_items(self, lo: int, hi: int, server_socket: Any, address: Any) -> None:
        if server_socket is None or address is None or not self.is_sending:
            return
        for item in self.items[lo:hi]:
            if hasattr(item, "send"):
                item.send(server_socket, address)

    # --- the engine's methods: sequence numbers -----------------------------
    def _mark(self, index: int) -> bool:
        if self.done[index]:
            return False
        self.done[index] = 1
        self.done_count += 1
        if index == self.base:
            self._slide()
        return True

    def mark_acked(self, sequence_num: int) -> int | None:
        """Sender: mark the packet acknowledged. Returns its index if that
        was new, None for a duplicate or an acknowledgement outside the
        window (both are normal on a lossy network)."""
        index = self.get_packet_index(sequence_num)
        if index is None or index >= self.base + self.window_size:
            return None
        return index if self._mark(index) else None

    def store(self, sequence_num: int, data: Any) -> tuple[int | None, bool]:
        """Receiver: store a packet's data. Returns (index, is_new); index
        is None when the sequence number is outside the window (not
        acceptable)."""
        index = self.get_packet_index(sequence_num)
        if index is None:
            return None, False
        if index < self.base:
            return index, False          # already have it: re-ACK, no store
        if index >= self.base + self.window_size:
            return None, False
        if self.done[index]:
            return index, False
        self.items[index] = data
        self._mark(index)
        return index, True

    def _slide(self) -> int:
        old = self.base
        done, total = self.done, self.total
        b = old
        while b < total and done[b]:
            b += 1
        self.base = b
        if b == total and not self._completed:
            self._complete()
        return b - old

    def _complete(self) -> None:
        self._completed = True
        fn = self.completion_fn
        if fn is not None:
            fn(self.initializer if self.is_sending else self.assembled_message())

    def assemble(self) -> bytes:
        """Receiver: the reassembled payload once complete."""
        if not self._completed:
            raise WindowException(f"window incomplete: {self.done_count}/{self.total} packets")
        return b"".join(self.items)

    def assembled_message(self) -> TTNetworkMessageUDP:
        """Receiver: the message once complete, as TTPython hands it on
        (the sender's address, the payload, the message id)."""
        return TTNetworkMessageUDP.received(self.address, self.assemble(), self.message_id)

    def print_window(self) -> str:
        line = (f"window base={self.base} end={self.end} total={self.total} "
                f"done={self.done_count} size={self.window_size}")
        log.info(line)
        return line
