import os
import pickle

import pytest

from ttnet.codec import SafeDecoder, UnsafePayloadError, dumps, loads


class Token:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return isinstance(other, Token) and other.v == self.v


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ttnet-pwned",))


def test_builtin_values_round_trip():
    import collections, datetime, decimal
    obj = [1, 2.0, "s", b"b", None, True, {1: (2, 3)}, {4, 5}, frozenset({6}), bytearray(b"x"),
           collections.OrderedDict(a=1), datetime.datetime(2026, 1, 1), decimal.Decimal("1.5"), 3j]
    assert loads(dumps(obj)) == obj


def test_hostile_pickle_is_refused_and_nothing_runs():
    if os.path.exists("/tmp/ttnet-pwned"):
        os.remove("/tmp/ttnet-pwned")
    with pytest.raises(UnsafePayloadError, match="posix.system|os.system"):
        loads(pickle.dumps(Evil()))
    assert not os.path.exists("/tmp/ttnet-pwned")


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",
    b"cos\nsystem\n(S'true'\ntR.",
    b"csubprocess\ncheck_output\n(S'ls'\ntR.",
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.",
])
def test_classic_exploits_are_refused(payload):
    with pytest.raises(UnsafePayloadError):
        loads(payload)


def test_user_classes_need_registration():
    with pytest.raises(UnsafePayloadError, match="allow_class"):
        loads(dumps(Token(3)))
    dec = SafeDecoder(classes=[Token])
    assert dec.loads(dumps(Token(3))) == Token(3)
    dec2 = SafeDecoder(modules=[Token.__module__.split(".")[0]])
    assert dec2.loads(dumps(Token(4))) == Token(4)


def test_dangerous_module_prefix_cannot_be_allowed():
    with pytest.raises(ValueError):
        SafeDecoder(modules=["os"])


@pytest.mark.parametrize("junk", [b"", b"\x80\x04", b"garbage", os.urandom(64)])
def test_corrupt_payload_is_an_unpickling_error(junk):
    with pytest.raises(pickle.UnpicklingError):
        loads(junk)
