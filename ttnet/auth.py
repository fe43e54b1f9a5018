"""Optional message authentication (off by default for TTPython interop).

Owns sealing a message payload with an HMAC-SHA256 tag under a shared
deployment key, and checking it on delivery before anything decodes the
payload. Replays are detected: every sealed payload carries a send
timestamp and a random nonce; a receiver rejects a timestamp outside
``replay_window_s`` of its own clock and any (nonce) it has already seen
inside that window. Both ends therefore need clocks within the window.

Sealed layout (prefix to the TTPython payload, inside the message)::

    b"TTA1" | timestamp_ns u64 LE | nonce 8 B | HMAC-SHA256(key, all of the above + payload) 32 B | payload

Must never: hand an unauthenticated payload to a receiver once a key is
configured, or keep unbounded replay state.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections import Counter, OrderedDict
from typing import Any, Callable

MAGIC = b"TTA1"
_HDR = struct.Struct("<4sQ8s")
TAG_LEN = 32
OVERHEAD = _HDR.size + TAG_LEN
#: Default replay window: a captured message can't be replayed after this,
#: and inside it the nonce cache catches it.
REPLAY_WINDOW_S = 60.0
#: Nonces remembered at most (a bound on memory under a flood of valid
#: messages); at 100k messages/minute this still covers the window.
MAX_NONCES = 200_000


class Authenticator:
    def __init__(self, key: bytes | str, replay_window_s: float = REPLAY_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(key, str):
            key = key.encode()
        if len(key) < 16:
            raise ValueError("auth key must be at least 16 bytes; generate one with "
                             "python3 -c 'import secrets; print(secrets.token_hex(32))'")
        self._key = key
        self.replay_window_s = replay_window_s
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def seal(self, payload: bytes) -> bytes:
        head = _HDR.pack(MAGIC, int(self._clock() * 1e9), os.urandom(8))
        mac = hmac.new(self._key, head, hashlib.sha256)
        mac.update(payload)            # no head + payload copy of a big message
        return b"".join((head, mac.digest(), payload))

    def open(self, sealed: bytes, sender: Any = None) -> bytes | None:
        """The payload if authentic and fresh, else None (counted)."""
        return self.open_parts([sealed], sender)

    def open_parts(self, parts: list[bytes], sender: Any = None) -> bytes | None:
        """Like :meth:`open` for a message still in its packets: the MAC is
        computed over the parts in place and only the payload is joined,
        one copy instead of joining everything and slicing again."""
        first = parts[0] if parts else b""
        if len(first) < OVERHEAD and len(parts) > 1:
            first = b"".join(parts)           # a peer with odd fragment sizes
            parts = [first]
        if len(first) < OVERHEAD or first[:4] != MAGIC:
            self.counters["auth_missing"] += 1
            return None
        head, tag = first[:_HDR.size], first[_HDR.size:OVERHEAD]
        mac = hmac.new(self._key, head, hashlib.sha256)
        mac.update(memoryview(first)[OVERHEAD:])
        for part in parts[1:]:
            mac.update(part)
        if not hmac.compare_digest(tag, mac.digest()):
            self.counters["auth_bad_mac"] += 1
            return None
        _, ts_ns, nonce = _HDR.unpack(head)
        now = self._clock()
        if abs(now - ts_ns / 1e9) > self.replay_window_s:
            self.counters["auth_stale"] += 1
            return None
        self._expire(now)
        if nonce in self._seen:
            self.counters["auth_replay"] += 1
            return None
        self._seen[nonce] = now + self.replay_window_s * 2
        self.counters["auth_ok"] += 1
        if len(parts) == 1:
            return first[OVERHEAD:]
        return b"".join([memoryview(first)[OVERHEAD:], *parts[1:]])

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            nonce, expires = next(iter(seen.items()))
            if expires > now and len(seen) < MAX_NONCES:
                break
            seen.popitem(last=False)
