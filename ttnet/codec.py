"""Payload codec: pickle out (TTPython interop), restricted unpickle in.

Owns turning objects into payload bytes and back. Encoding is plain pickle
(protocol 4, readable by every Python TTPython runs on). Decoding never
executes code chosen by the network: :class:`SafeDecoder` only resolves
globals on an allowlist -- builtin scalars and containers plus a few
stdlib value types by default, and whatever classes or module prefixes the
application registers for its own token types.

Must never: call ``pickle.loads`` on network data, or admit a callable
that can run arbitrary code (eval, exec, os.system, getattr, __import__...).
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Iterable

PICKLE_PROTOCOL = 4

#: Globals a payload may reference by default: value types only. Every entry
#: is a type whose construction cannot reach the file system, a process or
#: the interpreter's import machinery.
DEFAULT_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("builtins", name) for name in (
        "set", "frozenset", "bytearray", "complex", "slice", "range",
        "list", "dict", "tuple", "str", "bytes", "int", "float", "bool",
        "object",
    )
} | {
    ("collections", "OrderedDict"), ("collections", "deque"),
    ("collections", "defaultdict"), ("collections", "Counter"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"),
    # protocol <= 1 object reconstruction: only builds classes that are
    # themselves resolved through this allowlist.
    ("copyreg", "_reconstructor"),
})


class UnsafePayloadError(pickle.UnpicklingError):
    """The payload references a global that is not on the allowlist."""


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, decoder: "SafeDecoder") -> None:
        super().__init__(io.BytesIO(data))
        self._decoder = decoder

    def find_class(self, module: str, name: str) -> Any:
        if self._decoder.is_allowed(module, name):
            return super().find_class(module, name)
        raise UnsafePayloadError(
            f"payload references {module}.{name}, which is not allowed; if it is "
            f"your own token class, register it: decoder.allow_class({name}) or "
            f"decoder.allow_module('{module.split('.')[0]}')")


class SafeDecoder:
    """Restricted unpickler with an extensible allowlist."""

    def __init__(self, classes: Iterable[type] = (), modules: Iterable[str] = ()) -> None:
        self._allowed: set[tuple[str, str]] = set(DEFAULT_ALLOWED)
        self._prefixes: set[str] = set()
        for cls in classes:
            self.allow_class(cls)
        for mod in modules:
            self.allow_module(mod)

    def allow_class(self, cls: type) -> type:
        """Admit one class (usable as a decorator on a token class)."""
        self._allowed.add((cls.__module__, cls.__qualname__))
        return cls

    def allow_module(self, prefix: str) -> None:
        """Admit every global of a module and its submodules, e.g. 'myapp'."""
        if not prefix or prefix.split(".")[0] in {"builtins", "os", "sys", "subprocess",
                                                  "posix", "nt", "shutil", "importlib",
                                                  "pickle", "io", "socket", "ctypes"}:
            raise ValueError(f"refusing to allow module prefix {prefix!r}: it exposes "
                             "code execution; allow specific classes instead")
        self._prefixes.add(prefix)

    def is_allowed(self, module: str, name: str) -> bool:
        if (module, name) in self._allowed:
            return True
        if "__" in name:
            return False
        return any(module == p or module.startswith(p + ".") for p in self._prefixes)

    def loads(self, data: bytes) -> Any:
        """Decode a payload. Raises UnsafePayloadError for a disallowed
        global and pickle.UnpicklingError (or ValueError/EOFError wrapped as
        UnpicklingError) for a corrupt payload."""
        try:
            return _RestrictedUnpickler(data, self).load()
        except pickle.UnpicklingError:
            raise
        except Exception as exc:  # corrupt bytes raise many types; unify them
            raise pickle.UnpicklingError(f"corrupt payload: {exc!r}") from exc


#: Process-wide decoder used by TTReceivedMessage.decode() when none is given.
default_decoder = SafeDecoder()


def loads(data: bytes) -> Any:
    return default_decoder.loads(data)
