"""The app API: one ensemble's program, the very same code emulated and simulated.

An app is a function (``main`` unless the topology says otherwise) in a
``.py`` file, named per ensemble with ``app: path/to/file.py[:function]``.
It is called once, at the experiment's start, with an :class:`Ensemble`::

    def main(ens):
        ens.name, ens.peers, ens.duration
        ens.on_message(lambda src, obj: ...)          # every message to this ensemble
        ens.send("cloud", {"v": 1}, ensure=True)      # -> message number
        ens.call_later(0.5, fn, *args)                # -> handle with .cancel()
        ens.now()                                     # seconds since the start
        ens.record("e2e_latency", 0.042)              # an app-level measurement
        ens.random                                    # random.Random seeded per run and ensemble
        ens.log("text"), ens.stop()

In emulation (``testbed run``) the app runs inside the ensemble's agent over
``TTNetwork``/UDP on real time; in ``testbed simulate`` it runs as simpy
callbacks over the simulated interface on simulated time. Either way every
callback of one ensemble runs on one thread, one at a time, so an app needs
no locks. After ``duration`` the app gets no more callbacks (timers are
dropped, messages are still logged but not handed to it); sends already made
run to completion or to their deadline. A callback that raises is logged and
counted (``errors``); the app carries on.

What the app sends is logged in the experiment's event schema
(:mod:`testbed.spec.events`): flow ``<flow>:<src>-<dst>`` (``flow`` is the
``send`` argument, default ``app``), messages numbered per flow from 0, so
``compare`` and the fidelity verdict judge app traffic like synthetic flows.
``record`` writes ``{"event": "record", "ensemble", "name", "value", "t", "at"}``
(``at``: ``ens.now()`` when recorded) plus the keyword fields given.

On the wire an app message is ordinary ttnet payload bytes: :data:`MAGIC`,
the flow name (u8 length + UTF-8), the message number (u32), then the object
pickled by :func:`ttnet.codec.dumps`. Receivers decode it with ttnet's
restricted unpickler: plain values (numbers, strings, bytes, lists, dicts,
tuples, sets, datetimes...) only; never arbitrary classes.

This module owns the API, the envelope and the records. It never touches a
socket, a thread or a clock of its own: :class:`AppRuntime` is given a
transport, a scheduler and clocks by the agent or the simulator. Stdlib +
ttnet only (it runs inside bare containers).
"""
from __future__ import annotations

import importlib.util
import logging
import random
import shutil
import struct
import sys
import zlib
from dataclasses import replace
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from ttnet import codec

from testbed.spec.events import Complete, Deliver, Fail, MessageRef, Send

log = logging.getLogger(__name__)

MAGIC = b"\x00TTAPP"
_NUM = struct.Struct("<I")
#: The flow an app message belongs to when ``send`` is not given one.
DEFAULT_FLOW = "app"

Emit = Callable[[dict], None]


class AppError(Exception):
    """An app could not be loaded or was used wrongly; the message says why."""


def encode(flow: str, msg: int, obj: Any) -> bytes:
    name = flow.encode()
    if len(name) > 255:
        raise AppError(f"flow name {flow!r} is longer than 255 bytes")
    return MAGIC + bytes([len(name)]) + name + _NUM.pack(msg) + codec.dumps(obj)


def decode_header(payload: bytes) -> tuple[str, int, int] | None:
    """(flow, msg, offset of the body) of an app message, else None."""
    if not payload.startswith(MAGIC) or len(payload) < len(MAGIC) + 1:
        return None
    n = payload[len(MAGIC)]
    at = len(MAGIC) + 1
    if len(payload) < at + n + _NUM.size:
        return None
    try:
        flow = payload[at:at + n].decode()
    except UnicodeDecodeError:
        return None
    (msg,) = _NUM.unpack_from(payload, at + n)
    return flow, msg, at + n + _NUM.size


def load_app(base_dir: str | Path, spec_path: str, function: str = "main"
             ) -> Callable[["Ensemble"], Any]:
    """Import ``spec_path`` (relative to ``base_dir``) as a fresh module and
    return its ``function``. Raises AppError with the reason."""
    path = Path(base_dir) / spec_path
    if not path.is_file():
        raise AppError(f"app file {path} not found")
    name = f"ttnet_app_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise AppError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise AppError(f"{path} has no function {function}(ens)")
    return fn


class Timer:
    """What ``call_later`` returns."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Ensemble:
    """What an app sees of its ensemble (see the module docstring)."""

    def __init__(self, runtime: "AppRuntime") -> None:
        self._rt = runtime

    @property
    def name(self) -> str:
        return self._rt.name

    @property
    def peers(self) -> tuple[str, ...]:
        """Every other ensemble of the topology, in topology order."""
        return self._rt.peers

    @property
    def duration(self) -> float:
        """The planned run length, seconds."""
        return self._rt.duration

    @property
    def random(self) -> random.Random:
        """A random generator seeded from the topology's seed and this
        ensemble's name: the same draws emulated and simulated (and per
        simulated replication, a different seed)."""
        return self._rt.random

    def now(self) -> float:
        """Seconds since the experiment started (simulated seconds in simulate)."""
        return self._rt.clock()

    def send(self, to: str, obj: Any, ensure: bool = False, deadline: float | None = None,
             flow: str = DEFAULT_FLOW) -> int:
        """Send ``obj`` (a plain value) to ensemble ``to``; returns its message
        number in its flow. ``deadline``: seconds before an ensure=True send
        fails (default ttnet's, 30 s; 5 s best effort)."""
        return self._rt.send(to, obj, ensure, deadline, flow)

    def on_message(self, fn: Callable[[str, Any], Any]) -> None:
        """``fn(src, obj)`` for every message to this ensemble (replaces any earlier)."""
        self._rt.handler = fn

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` ``delay`` seconds from now (unless cancelled or stopped)."""
        if not delay >= 0:
            raise AppError(f"call_later delay must be >= 0 seconds, got {delay!r}")
        timer = Timer()
        self._rt.schedule(float(delay), lambda: self._rt.callback(fn, *args, timer=timer))
        return timer

    def record(self, name: str, value: float, **fields: Any) -> None:
        """Log an app-level measurement (e.g. an end-to-end latency, or 1
        per deadline miss); ``compare`` reports it emulated vs simulated."""
        self._rt.record(name, value, fields)

    def log(self, text: str) -> None:
        log.info("[%s] %s", self.name, text)

    def stop(self) -> None:
        """No more callbacks for this app (sends already made carry on)."""
        self._rt.stopped = True


class AppRuntime(ABC):
    """The app's side of one ensemble: numbering, envelope, event records,
    callbacks guarded against the app's errors. The agent and the simulator
    subclass it with a transport, a scheduler and clocks."""

    def __init__(self, name: str, peers: tuple[str, ...], duration: float, emit: Emit,
                 seed: int = 1, on_sent: Callable[[MessageRef], None] | None = None,
                 on_resolved: Callable[[MessageRef, bool, str | None], None] | None = None
                 ) -> None:
        self.name = name
        self.peers = tuple(p for p in peers if p != name)
        self.duration = float(duration)
        self.emit = emit
        self.on_sent = on_sent
        self.on_resolved = on_resolved
        self.handler: Callable[[str, Any], Any] | None = None
        self.stopped = False
        self.errors = 0
        self.unknown = 0
        self._numbers: dict[str, int] = {}
        self.random = random.Random((seed << 32) ^ zlib.crc32(name.encode()))
        self.ensemble = Ensemble(self)

    # -- supplied by the agent / the simulator --------------------------------
    @abstractmethod
    def clock(self) -> float:
        """Seconds since the experiment start."""

    @abstractmethod
    def event_time(self) -> float:
        """``t`` of event records (epoch seconds emulated, simulated seconds)."""

    @abstractmethod
    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay`` seconds on the app's thread/loop."""

    @abstractmethod
    def transmit(self, to: str, payload: bytes, ensure: bool, deadline: float | None,
                 done: Callable[[bool, str | None], None]) -> None:
        """Send ``payload``; call ``done(ok, reason)`` once it resolves."""

    # -- the API's work ---------------------------------------------------------
    def start(self, main: Callable[[Ensemble], Any]) -> None:
        """Call ``main(ens)`` now (the experiment's start)."""
        self.callback(main, self.ensemble)

    def over(self) -> bool:
        return self.stopped or self.clock() >= self.duration

    def callback(self, fn: Callable[..., Any], *args: Any, timer: Timer | None = None) -> None:
        if self.over() or (timer is not None and timer.cancelled):
            return
        try:
            fn(*args)
        except Exception:
            self.errors += 1
            log.exception("app of %s raised in %s", self.name,
                          getattr(fn, "__name__", repr(fn)))

    def send(self, to: str, obj: Any, ensure: bool, deadline: float | None, flow: str) -> int:
        if to not in self.peers:
            raise AppError(f"{self.name}: no ensemble {to!r} to send to; peers: "
                           f"{', '.join(self.peers) or 'none'}")
        if not isinstance(flow, str) or not flow or ":" in flow:
            raise AppError(f"flow must be a non-empty name without ':', got {flow!r}")
        name = f"{flow}:{self.name}-{to}"
        k = self._numbers.get(name, 0)
        self._numbers[name] = k + 1
        payload = encode(name, k, obj)
        ref = MessageRef(name, k, self.name, to, len(payload), bool(ensure))
        self.emit(Send(ref, self.event_time()).record())
        if self.on_sent is not None:
            self.on_sent(ref)

        def done(ok: bool, reason: str | None) -> None:
            t = self.event_time()
            self.emit((Complete(ref, t) if ok else Fail(ref, t, reason)).record())
            if self.on_resolved is not None:
                self.on_resolved(ref, ok, reason)

        try:
            self.transmit(to, payload, bool(ensure), deadline, done)
        except Exception as exc:       # e.g. larger than max_message_size
            done(False, f"send refused: {type(exc).__name__}: {exc}")
        return k

    def deliver(self, src: str, payload: bytes) -> bool:
        """A payload arrived from ``src``: log it and hand the object to the
        app. False if it is not an app message (the caller matches it)."""
        head = decode_header(payload)
        if head is None:
            return False
        flow, msg, at = head
        t = self.event_time()
        try:
            obj = codec.loads(payload[at:])
            intact = True
        except Exception:
            obj, intact = None, False
        ref = MessageRef(flow, msg, src, self.name, len(payload), False)
        record = Deliver(ref, size=len(payload), t=t, intact=intact).record()
        record.pop("ensure")       # unknown here; the send record says
        self.emit(record)
        if intact and self.handler is not None:
            self.callback(self.handler, src, obj)
        return True

    def record(self, name: str, value: float, fields: dict[str, Any]) -> None:
        if not isinstance(name, str) or not name:
            raise AppError(f"record name must be a non-empty string, got {name!r}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise AppError(f"record value must be a number, got {value!r}") from None
        rec = {"event": "record", "ensemble": self.name, "name": name, "value": value,
               "t": self.event_time(), "at": self.clock()}
        for key, val in fields.items():
            rec.setdefault(key, val)
        self.emit(rec)


def pack_apps(topology: Any, dest: Path) -> Any:
    """Copy every app file of ``topology`` into ``dest/apps/`` and return the
    topology with its app paths pointing there and ``base_dir`` = ``dest``:
    a run directory then carries what it ran, and ``compare`` can simulate
    it later from there alone. Raises AppError when a file is missing."""
    apps = topology.apps
    if not apps:
        return topology
    if topology.base_dir is None:
        raise AppError(f"topology {topology.name!r} names apps but not the directory "
                       "they are relative to; load it from its file")
    (Path(dest) / "apps").mkdir(parents=True, exist_ok=True)
    copied: dict[Path, str] = {}
    settings = dict(topology.settings)
    for name, conf in apps.items():
        src = (Path(topology.base_dir) / conf.app_path).resolve()
        if not src.is_file():
            raise AppError(f"app file {src} of ensemble {name!r} not found")
        if src not in copied:
            rel = f"apps/{src.name}"
            k = 2
            while rel in copied.values():
                rel = f"apps/{src.stem}-{k}{src.suffix}"
                k += 1
            target = Path(dest) / rel
            if target.resolve() != src:
                shutil.copyfile(src, target)
            copied[src] = rel
        fn = conf.app_function
        settings[name] = replace(conf, app=copied[src] + ("" if fn == "main" else f":{fn}"))
    return replace(topology, settings=settings, base_dir=str(Path(dest).resolve()))
