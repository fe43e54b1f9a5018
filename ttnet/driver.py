"""The driver shell every interface shares: engine events -> user callbacks.

Owns what is the same whether datagrams travel over a UDP socket
(:mod:`ttnet.udp`) or over simulated links (:mod:`ttnet.sim`): the values a
user gets back (a :class:`SendHandle` from every ``send()``, a
:class:`TTReceivedMessage` for every delivered message), the bookkeeping of
sends in flight, and the one dispatch from engine events to the callbacks.
The callbacks get what TTPython gives them, plus failure reporting:

- ``receiver_function(msg)``: one :class:`TTReceivedMessage` per delivered
  message, exactly once (TTPython's received message: ``payload``, the
  sender in ``get_address()`` / ``recipient_ip`` / ``recipient_port``,
  ``message_id``).
- ``send(message, after=f)``: ``f(message)``, with the message given to
  ``send``, once every packet of it was acknowledged. The one rule for
  code written against ttnet's earlier ``after()`` (:func:`completion_callback`,
  decided once per send): ``f`` is called with no arguments only if it
  cannot take one positional argument. A callable that can -- including a
  lambda whose only parameter has a default, ``lambda ref=ref: ...`` --
  gets the message.
- ``send(message, on_failure=g)``, else the interface-wide
  ``failure_function`` (ttnet's extension): ``g(message, reason)`` when
  the send is given up (its deadline passed or the interface closed).

Where each callback runs (the I/O thread, a dispatcher thread, the
simulation's event loop) is the concrete driver's choice, through three
hooks: :meth:`DriverShell._on_delivered`, :meth:`DriverShell._on_completed`
and :meth:`DriverShell._on_failed`.

Must never: open a socket, start a thread, read a clock, make a protocol
decision (that is :mod:`ttnet.engine`), or import a concrete driver.
"""
from __future__ import annotations

import inspect
import threading
import types
from typing import Any, Callable, NamedTuple

from . import codec
from .engine import Engine
from .events import Address, Delivered, SendCompleted, SendFailed

#: ``after``: called with the sent message when a send completed -- or with
#: no arguments if it cannot take one (:func:`completion_callback`).
AfterFn = Callable[..., Any]
#: A completion callback once the rule is applied: always given the message.
MessageFn = Callable[[Any], Any]
#: ``on_failure`` / ``failure_function``: called with (message, reason).
FailureFn = Callable[[Any, str], Any]
#: ``receiver_function``: called with a :class:`TTReceivedMessage`.
ReceiverFn = Callable[["TTReceivedMessage"], Any]


class TTReceivedMessage(NamedTuple):
    """What the receiver function gets: the payload, who sent it (an
    ``(ip, port)`` pair over UDP, an ensemble name in the simulator) and
    the message's id on the wire.

    It answers to TTPython's received message too: ``get_address()`` and
    ``recipient_ip`` / ``recipient_port`` name the *sender*, as TTPython's
    do (both None in a simulation, where the sender is a name).
    """

    payload: bytes
    address: Address
    message_id: int = 0

    @property
    def recipient_ip(self) -> str | None:
        a = self.address
        return a[0] if isinstance(a, tuple) and len(a) == 2 else None

    @property
    def recipient_port(self) -> int | None:
        a = self.address
        return a[1] if isinstance(a, tuple) and len(a) == 2 else None

    def get_address(self) -> Address:
        return self.address

    def decode(self, decoder: codec.SafeDecoder | None = None) -> Any:
        """Unpickle the payload through the restricted decoder."""
        return (decoder or codec.default_decoder).loads(self.payload)


def takes_one_argument(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called with one positional argument.

    Plain functions, lambdas and bound methods are read from their code
    object (well under a microsecond); anything else through
    :func:`inspect.signature`, remembered per builtin and per callable
    class (that costs 10-100 us). When the signature cannot be read, or
    ``fn`` can be called neither with one argument nor with none, the
    answer is True: the call then fails with Python's own message.
    """
    func, bound = fn, 0
    if isinstance(fn, types.MethodType):
        func, bound = fn.__func__, 1
    if isinstance(func, types.FunctionType):
        code = func.__code__
        return bool(code.co_flags & inspect.CO_VARARGS) or code.co_argcount - bound >= 1
    key = _signature_key(fn)
    known = _ONE_ARGUMENT.get(key) if key is not None else None
    if known is not None:
        return known
    answer = _binds_one_argument(fn)
    if key is not None and len(_ONE_ARGUMENT) < 4096:
        _ONE_ARGUMENT[key] = answer
    return answer


#: takes_one_argument's answers for callables whose signature is fixed by
#: something shared: a builtin's owner type and name, a callable's class.
_ONE_ARGUMENT: dict[Any, bool] = {}


def _signature_key(fn: Any) -> Any:
    if isinstance(fn, types.BuiltinMethodType):          # [].append, print, ev.set (C)
        owner = fn.__self__
        where = owner if isinstance(owner, types.ModuleType) else type(owner)
        return ("builtin", where, fn.__name__)
    call = inspect.getattr_static(type(fn), "__call__", None)
    if isinstance(call, types.FunctionType):              # an object with __call__
        return ("call", type(fn))
    return None


def _binds_one_argument(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    for args in ((None,), ()):
        try:
            sig.bind(*args)
        except TypeError:
            continue
        return bool(args)
    return True


def completion_callback(fn: AfterFn | None) -> MessageFn | None:
    """The one rule for ``after`` (and every TTPython completion callback
    ttnet calls): the returned callable is called with the message and
    calls ``fn(message)`` -- or ``fn()`` if ``fn`` cannot take one
    positional argument (code written for ttnet's earlier zero-argument
    ``after``). Decided here, once per send, not per call."""
    if fn is None or takes_one_argument(fn):
        return fn

    def call_without_message(_message: Any, fn: Callable[[], Any] = fn) -> Any:
        return fn()
    return call_without_message


class SendHandle:
    """Outcome of one send: what every interface's ``send()`` returns.

    ``done`` tells whether the send is over, ``ok`` whether it was
    delivered (None while pending), ``reason`` why it failed. Over UDP,
    ``wait()`` blocks until the outcome is known. In a simulation the
    outcome is set by the simulation's own event loop: run the environment,
    then read ``done``/``ok`` (``wait()`` there returns at once for a
    finished send and would only sleep on a pending one).
    """

    def __init__(self, message: Any) -> None:
        self.message = message
        self.ok: bool | None = None
        self.reason: str | None = None
        self._done = False
        # Held while the send is pending, released once when it ends (a
        # Lock costs a tenth of an Event to make, and a simulation makes
        # one handle per message).
        self._pending = threading.Lock()
        self._pending.acquire()

    def _set(self, ok: bool, reason: str | None = None) -> None:
        """Resolve the handle (once; the driver calls it exactly once)."""
        if self._done:
            return
        self.ok, self.reason = ok, reason
        self._done = True
        self._pending.release()

    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """True if delivered (all packets acknowledged); False if failed or
        still pending when ``timeout`` passed (check ``done``)."""
        if not self._done and self._pending.acquire(
                timeout=-1 if timeout is None else max(0.0, timeout)):
            self._pending.release()      # let every other waiter through too
        return bool(self.ok)

    def __repr__(self) -> str:
        state = "pending" if not self.done else "ok" if self.ok else f"failed: {self.reason}"
        return f"<SendHandle {state}>"


class PendingSend(NamedTuple):
    """A send the engine still works on, and what to call when it ends
    (``after`` with :func:`completion_callback`'s rule applied: build one
    with :func:`pending_send`)."""

    handle: SendHandle
    after: MessageFn | None
    on_failure: FailureFn | None


def pending_send(message: Any, after: AfterFn | None,
                 on_failure: FailureFn | None) -> PendingSend:
    """The bookkeeping of one ``send(message, after=..., on_failure=...)``:
    a new :class:`SendHandle` and the callbacks, ``after`` under the rule
    of :func:`completion_callback`. Every interface builds its sends here."""
    return PendingSend(SendHandle(message), completion_callback(after), on_failure)


class DriverShell:
    """Engine events to user callbacks, for one interface and its engine.

    A concrete driver feeds the engine datagrams and time, calls
    :meth:`_start_send` for each ``send()``, and calls
    :meth:`_dispatch_events` after feeding it. The three ``_on_*`` hooks
    decide where callbacks run; by default they run at once, in the
    caller's thread. The ``_run_*`` methods are the callbacks' contracts
    and may raise whatever user code raises: the driver decides what to do
    with that.
    """

    def __init__(self, engine: Engine, receiver_function: ReceiverFn | None = None,
                 failure_function: FailureFn | None = None) -> None:
        self.engine = engine
        self.receiver_function = receiver_function
        self.failure_function = failure_function
        self._pending: dict[int, PendingSend] = {}

    # --------------------------------------------------------------- sending
    def _start_send(self, address: Address, payload: bytes, now: float, ensure: bool,
                    deadline_s: float | None, pending: PendingSend) -> None:
        """Hand one message to the engine and remember its callbacks.
        Raises what ``Engine.send_message`` raises (MessageTooLarge)."""
        h = self.engine.send_message(address, payload, now, ensure, deadline_s)
        self._pending[h] = pending

    # -------------------------------------------------------------- dispatch
    def _dispatch_events(self) -> None:
        """Route every event the engine has to the hooks (the one place
        that reads engine events)."""
        pending = self._pending
        for ev in self.engine.pop_events():
            if isinstance(ev, Delivered):
                self._on_delivered(ev)
            elif isinstance(ev, SendCompleted):
                self._on_completed(pending.pop(ev.handle))
            elif isinstance(ev, SendFailed):
                self._on_failed(pending.pop(ev.handle), ev.reason)

    def _on_delivered(self, ev: Delivered) -> None:
        self._run_delivered(ev)

    def _on_completed(self, p: PendingSend) -> None:
        self._run_completed(p)

    def _on_failed(self, p: PendingSend, reason: str) -> None:
        self._run_failed(p, reason)

    # ------------------------------------------------------ the callbacks
    def _payload_of(self, ev: Delivered) -> bytes | None:
        """The payload to hand over, or None to hand over nothing (a driver
        that authenticates messages overrides this)."""
        return ev.payload

    def _run_delivered(self, ev: Delivered) -> None:
        payload = self._payload_of(ev)
        if payload is None:
            return
        fn = self.receiver_function
        if fn is not None:
            fn(TTReceivedMessage(payload, ev.address, ev.message_id))

    def _run_completed(self, p: PendingSend) -> None:
        p.handle._set(True)
        if p.after is not None:
            p.after(p.handle.message)

    def _run_failed(self, p: PendingSend, reason: str) -> None:
        p.handle._set(False, reason)
        fn = p.on_failure or self.failure_function
        if fn is not None:
            fn(p.handle.message, reason)
