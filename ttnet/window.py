"""Selective-repeat window arithmetic shared by the sender and receiver.

Owns the mapping between packet indices (0..total-1) and the wire's sequence
numbers (index mod 2W+1), which indices are currently inside the window, and
sliding the window's base over a prefix of finished packets. It keeps no
timers, reads no clock (callers pass the time to :meth:`TTSlidingWindow.start`)
and touches no socket: the protocol engine (:mod:`ttnet.engine`) decides
when to send and retransmit.

Why 2W+1: an index is resolved relative to the base over the range
``[base - W, base + W)``, i.e. 2W distinct values, which stays unambiguous
modulo 2W+1. That range covers every packet a peer can legitimately still
send or acknowledge: up to W in the window and up to W behind it whose
acknowledgement may have been lost.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from .wire import WindowException

log = logging.getLogger(__name__)


class TTSlidingWindow:
    """Window over one message's packets.

    ``initializer`` is either the number of packets (a receiver's window) or
    the sequence of packets/items to send (a sender's window). ``ack`` marks
    a packet done on the sending side, ``receive`` stores a packet on the
    receiving side; both slide the base. ``completion_fn(window)`` is called
    once, when every packet is done. ``timeout_ms`` is kept for TTPython
    compatibility as the window's initial retransmission timeout.
    """

    def __init__(self, window_size: int = 1000, timeout_ms: int = 100,
                 completion_fn: Callable[["TTSlidingWindow"], Any] | None = None,
                 initializer: int | Sequence[Any] | None = None) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.window_size = window_size
        self.modulus = 2 * window_size + 1
        self.timeout_ms = timeout_ms
        self.completion_fn = completion_fn
        if initializer is None:
            initializer = 0
        if isinstance(initializer, int):
            self.total = initializer
            self.items: list[Any] = [None] * initializer
        else:
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

    def get_packet_index(self, sequence_num: int) -> int | None:
        """Index of the packet with this sequence number near the window.

        Resolves over ``[base - W, base + W)``; None when the number maps
        outside the message (or is not a valid sequence number at all).
        """
        if not 0 <= sequence_num < self.modulus:
            return None
        lo = self.base - self.window_size
        index = lo + (sequence_num - lo) % self.modulus
        if index >= self.base + self.window_size or index < 0 or index >= self.total:
            return None
        return index

    def is_in_window(self, sequence_num: int) -> bool:
        index = self.get_packet_index(sequence_num)
        return index is not None and self.base <= index < self.base + self.window_size

    @property
    def end(self) -> int:
        """One past the last index currently inside the window."""
        return min(self.base + self.window_size, self.total)

    @property
    def complete(self) -> bool:
        return self._completed

    # --- state changes --------------------------------------------------------
    def start(self, now: float) -> None:
        """Record when the window started, on the caller's clock (real or
        simulated seconds)."""
        self.started_at = now

    def _mark(self, index: int) -> bool:
        if self.done[index]:
            return False
        self.done[index] = 1
        self.done_count += 1
        if index == self.base:
            self.slide()
        return True

    def ack(self, sequence_num: int) -> int | None:
        """Sender: mark the packet acknowledged. Returns its index if that
        was new, None for a duplicate or an acknowledgement outside the
        window (both are normal on a lossy network)."""
        index = self.get_packet_index(sequence_num)
        if index is None or index >= self.base + self.window_size:
            return None
        return index if self._mark(index) else None

    def receive(self, sequence_num: int, data: Any) -> tuple[int | None, bool]:
        """Receiver: store a packet. Returns (index, is_new); index is None
        when the sequence number is outside the window (not acceptable)."""
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

    def slide(self) -> int:
        """Advance the base over finished packets; returns how far it moved."""
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
        if self.completion_fn is not None:
            self.completion_fn(self)

    def assemble(self) -> bytes:
        """Receiver: the reassembled payload once complete."""
        if not self._completed:
            raise WindowException(f"window incomplete: {self.done_count}/{self.total} packets")
        return b"".join(self.items)

    def print_window(self) -> str:
        line = (f"window base={self.base} end={self.end} total={self.total} "
                f"done={self.done_count} size={self.window_size}")
        log.info(line)
        return line
