"""The driver shell every interface shares: engine events -> user callbacks.

Owns what is the same whether datagrams travel over a UDP socket
(:mod:`ttnet.udp`) or over simulated links (:mod:`ttnet.sim`): the values a
user gets back (a :class:`SendHandle` from every ``send()``, a
:class:`TTReceivedMessage` for every delivered message), the bookkeeping of
sends in flight, and the one dispatch from engine events to the documented
callbacks (TTPython's contract, plus failure reporting):

- ``receiver_function(msg)``: one :class:`TTReceivedMessage` per delivered
  message, exactly once.
- ``send(message, after=f)``: ``f()`` with no arguments once every packet
  of the message was acknowledged.
- ``send(message, on_failure=g)``, else the interface-wide
  ``failure_function``: ``g(message, reason)`` when the send is given up
  (its deadline passed or the interface closed).

Where each callback runs (the I/O thread, a dispatcher thread, the
simulation's event loop) is the concrete driver's choice, through three
hooks: :meth:`DriverShell._on_delivered`, :meth:`DriverShell._on_completed`
and :meth:`DriverShell._on_failed`.

Must never: open a socket, start a thread, read a clock, make a protocol
decision (that is :mod:`ttnet.engine`), or import a concrete driver.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

from . import codec
from .engine import Engine
from .events import Address, Delivered, SendCompleted, SendFailed

#: ``after``: called with no arguments when a send completed.
AfterFn = Callable[[], Any]
#: ``on_failure`` / ``failure_function``: called with (message, reason).
FailureFn = Callable[[Any, str], Any]
#: ``receiver_function``: called with a :class:`TTReceivedMessage`.
ReceiverFn = Callable[["TTReceivedMessage"], Any]


class TTReceivedMessage(NamedTuple):
    """What the receiver function gets: the payload and who sent it (an
    ``(ip, port)`` pair over UDP, an ensemble name in the simulator)."""

    payload: bytes
    address: Address

    def decode(self, decoder: codec.SafeDecoder | None = None) -> Any:
        """Unpickle the payload through the restricted decoder."""
        return (decoder or codec.default_decoder).loads(self.payload)


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
    """A send the engine still works on, and what to call when it ends."""

    handle: SendHandle
    after: AfterFn | None
    on_failure: FailureFn | None


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
            fn(TTReceivedMessage(payload, ev.address))

    def _run_completed(self, p: PendingSend) -> None:
        p.handle._set(True)
        if p.after is not None:
            p.after()

    def _run_failed(self, p: PendingSend, reason: str) -> None:
        p.handle._set(False, reason)
        fn = p.on_failure or self.failure_function
        if fn is not None:
            fn(p.handle.message, reason)
