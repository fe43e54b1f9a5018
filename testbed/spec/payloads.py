"""Deterministic message contents for testbed flows, and recognising them.

Owns the bytes an agent (or the simulator) sends for message ``k`` of flow
``f`` and how a receiver maps a received payload back to (flow, k) and
checks it arrived intact. Stdlib-only: it runs inside bare containers.

Layout: payloads of at least :data:`HEADER_LEN` bytes start with
``b"TB" | flow index u16 | message number u32`` followed by pseudo-random
bytes seeded by (flow, message). Shorter payloads (0..7 bytes, used by the
fragmentation suite) cannot carry a header; they are matched by content
among the messages the receiver still expects from that sender, in send
order.
"""
from __future__ import annotations

import hashlib
import random
import struct
from collections import defaultdict, deque
from typing import Iterable

_HDR = struct.Struct("<2sHI")
HEADER_LEN = _HDR.size  # 8
_MAGIC = b"TB"


def message_bytes(flow_index: int, msg: int, size: int) -> bytes:
    # An integer seed: seeding from a string hashes it with SHA-512, which
    # was a visible share of the simulator's time.
    rnd = random.Random((flow_index << 44) ^ (msg << 24) ^ size)
    if size < HEADER_LEN:
        return rnd.randbytes(size)
    return _HDR.pack(_MAGIC, flow_index, msg) + rnd.randbytes(size - HEADER_LEN)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class PayloadMatcher:
    """Receiver side: payload -> (flow index, msg, intact)."""

    def __init__(self, expected: Iterable[tuple[int, str, int, int]]) -> None:
        """expected: (flow index, source ensemble, msg, size) this receiver
        may get. Only short messages need to be listed up front."""
        self._short: dict[tuple[str, bytes], deque[tuple[int, int]]] = defaultdict(deque)
        self._sizes: dict[tuple[int, int], int] = {}
        for fi, src, msg, size in expected:
            self._sizes[(fi, msg)] = size
            if size < HEADER_LEN:
                key = (src, digest(message_bytes(fi, msg, size)))
                self._short[key].append((fi, msg))

    def _reference(self, fi: int, msg: int, size: int) -> bytes:
        """The bytes message ``msg`` of flow ``fi`` was sent with."""
        return message_bytes(fi, msg, size)

    def match(self, src: str, payload: bytes) -> tuple[int, int, bool] | None:
        """(flow index, msg, intact) or None when it is no known message."""
        if len(payload) >= HEADER_LEN and payload[:2] == _MAGIC:
            _, fi, msg = _HDR.unpack_from(payload)
            size = self._sizes.get((fi, msg))
            if size is None:
                return None
            intact = size == len(payload) and payload == self._reference(fi, msg, size)
            return fi, msg, intact
        queue = self._short.get((src, digest(payload)))
        if queue:
            fi, msg = queue.popleft()
            return fi, msg, True
        return None
