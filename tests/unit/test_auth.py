"""ttnet.auth.Authenticator on its own: sealing, forgery, tampering,
staleness, replay, and the bound on its replay memory."""
from __future__ import annotations

import pytest

from ttnet import auth
from ttnet.auth import OVERHEAD, Authenticator

KEY = b"k" * 32


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_sealed_payload_opens_once_and_is_counted_ok():
    a = Authenticator(KEY)
    sealed = a.seal(b"token")
    assert len(sealed) == OVERHEAD + 5
    assert a.open(sealed) == b"token"
    assert a.counters["auth_ok"] == 1


def test_unsealed_payload_is_refused_as_missing():
    a = Authenticator(KEY)
    assert a.open(b"plain TTPython pickle") is None
    assert a.open(b"") is None
    assert a.counters["auth_missing"] == 2 and a.counters["auth_ok"] == 0


def test_garbage_or_wrong_key_mac_is_refused_as_bad_mac():
    a = Authenticator(KEY)
    forged = bytearray(a.seal(b"x"))
    forged[20:52] = b"\0" * 32                      # the tag
    assert a.open(bytes(forged)) is None
    other = Authenticator(b"o" * 32).seal(b"x")     # right format, wrong key
    assert a.open(other) is None
    assert a.counters["auth_bad_mac"] == 2


@pytest.mark.parametrize("where", [0 + 4, 12, OVERHEAD, -1])
def test_any_flipped_byte_is_refused(where):
    """Header (timestamp, nonce) and payload are all under the MAC."""
    a = Authenticator(KEY)
    sealed = bytearray(a.seal(b"payload bytes"))
    sealed[where] ^= 0x01
    assert a.open(bytes(sealed)) is None
    assert a.counters["auth_bad_mac"] == 1


def test_replay_inside_the_window_is_refused():
    clock = Clock()
    a = Authenticator(KEY, replay_window_s=60, clock=clock)
    sealed = a.seal(b"once")
    assert a.open(sealed) == b"once"
    clock.t += 30
    assert a.open(sealed) is None
    assert a.counters["auth_replay"] == 1


@pytest.mark.parametrize("skew", [-61.0, 61.0])
def test_stale_or_future_timestamp_is_refused(skew):
    clock = Clock()
    sender = Authenticator(KEY, replay_window_s=60, clock=clock)
    sealed = sender.seal(b"late")
    receiver = Authenticator(KEY, replay_window_s=60, clock=Clock(clock.t + skew))
    assert receiver.open(sealed) is None
    assert receiver.counters["auth_stale"] == 1


def test_replay_after_the_window_is_refused_as_stale():
    clock = Clock()
    a = Authenticator(KEY, replay_window_s=60, clock=clock)
    sealed = a.seal(b"m")
    assert a.open(sealed) == b"m"
    clock.t += 61                       # nonce may be forgotten; timestamp is not
    assert a.open(sealed) is None
    assert a.counters["auth_stale"] == 1


def test_nonce_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth, "MAX_NONCES", 100)
    clock = Clock()
    a = Authenticator(KEY, clock=clock)
    for i in range(1000):
        assert a.open(a.seal(i.to_bytes(2, "big"))) is not None
        assert len(a._seen) <= 100
    assert a.counters["auth_ok"] == 1000


def test_nonces_expire_after_twice_the_window():
    clock = Clock()
    a = Authenticator(KEY, replay_window_s=10, clock=clock)
    for _ in range(50):
        a.open(a.seal(b"x"))
    clock.t += 21
    a.open(a.seal(b"y"))
    assert len(a._seen) == 1


def test_short_key_is_refused_with_how_to_make_one():
    with pytest.raises(ValueError, match="16 bytes.*secrets"):
        Authenticator(b"short")
    assert Authenticator("s" * 16).open(Authenticator("s" * 16).seal(b"z")) == b"z"


def test_open_parts_matches_open_and_catches_tampering_in_any_part():
    import os as _os
    from ttnet.auth import Authenticator
    a = Authenticator(b"k" * 32)
    payload = _os.urandom(5000)
    sealed = a.seal(payload)
    parts = [sealed[i:i + 1200] for i in range(0, len(sealed), 1200)]
    assert Authenticator(b"k" * 32).open_parts(parts) == payload
    bad = list(parts)
    bad[3] = bytes([bad[3][0] ^ 1]) + bad[3][1:]
    b = Authenticator(b"k" * 32)
    assert b.open_parts(bad) is None and b.counters["auth_bad_mac"] == 1
    tiny = [sealed[:10], sealed[10:]]                     # odd fragmentation still works
    assert Authenticator(b"k" * 32).open_parts(tiny) == payload
