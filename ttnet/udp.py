"""TTNetworkInterfaceUDP: the protocol engine driven over one real UDP socket.

Owns one socket (bound to ``ip_addr:port``; it both sends and receives, so
peers' replies come back to it), a selector over the socket and a wake-up
pipe, the engine's timers, and two threads (leader/followers): the leader
runs the I/O loop; the other one waits. When a pass of the loop leaves
user callbacks to run, the leader either hands the loop over to the other
thread and runs them itself, or -- while callbacks come often and the other
thread is watching -- runs them at once and lets the other thread take the
loop over if they run longer than ``_WATCH_S`` (2 ms). Either way a message
reaches the receiver function on the thread that read it, and a slow
receiver function never holds up the network for more than ``_WATCH_S``.
``send()`` does its work in the caller's thread when the engine is free at
that instant (the I/O thread waits in select), else queues it for the loop;
it never waits for the engine.

Must never: run protocol logic (that is :mod:`ttnet.engine`), touch the
engine without holding ``_lock`` (the loop holds it except while it waits
in select; a caller of :meth:`send` only takes it if it is free), start a
thread per message, let an exception from the network or a callback escape
a thread, run two callbacks at once or out of order, or block a caller of
:meth:`send` (it returns at once).

Callbacks: the contract of :mod:`ttnet.driver` (``receiver_function(msg)``
with a :class:`TTReceivedMessage`, ``after(message)``,
``on_failure(message, reason)`` / ``failure_function``), run one at a
time, in order, by the thread not leading the I/O loop -- except
``receiver_function`` with ``inline_callbacks=True``, which runs inside the
I/O loop itself. ``send`` returns a :class:`SendHandle` whose ``wait()``
gives the outcome.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
from collections import deque
import socket
import threading
import time
from typing import Any, Callable

from . import codec
from .auth import Authenticator
from .driver import (AfterFn, DriverShell, FailureFn, PendingSend, ReceiverFn, SendHandle,
                     TTReceivedMessage, completion_callback, pending_send)
from .engine import Engine, EngineConfig
from .events import Delivered
from .window import TTSlidingWindow
from .wire import (MAX_DATAGRAM, WINDOW_SIZE, TTAckPacket, TTDataPacket, TTNetworkMessageUDP,
                   TTPacket, TTPacketType, TTRequestPacket, WindowException, check_endpoint,
                   convert_to_packet, convert_to_payload)

log = logging.getLogger(__name__)

# Every name of TTPython's NetworkInterfaceUDP module is importable from
# here (the packet classes and TTNetworkMessageUDP live in ttnet.wire, the
# window in ttnet.window). SendHandle and TTReceivedMessage live in
# ttnet.driver (both interfaces return them); importing them from here
# keeps working.
__all__ = ["SOCKET_BUFFER_BYTES", "SendHandle", "TTAckPacket", "TTDataPacket",
           "TTNetworkInterfaceUDP", "TTNetworkMessageUDP", "TTPacket", "TTPacketType",
           "TTReceivedMessage", "TTRequestPacket", "TTSlidingWindow", "WindowException",
           "convert_to_packet", "convert_to_payload", "message"]

#: Socket buffers asked for. A full window is 1000 x 1217 B = 1.2 MB; the
#: kernel caps the request at net.core.{r,w}mem_max, which is why the engine
#: also paces with a congestion window instead of trusting the buffer.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: Datagrams handled per I/O loop pass before looking at the other direction.
_BATCH = 64
#: Datagrams a send() done in the caller's thread puts on the wire at most
#: (the REQ, and ACKs queued before it); the I/O thread sends the rest.
_INLINE_LIMIT = 8
#: While sends are being made (one in the last _SENDING_S), the I/O loop
#: waits at most _TICK_S even with no timer due: a send done inline then
#: never has to wake it for the retransmission timer it starts (the
#: smallest RTO, min_rto_s, is 5 ms by default). Idle, it waits for
#: datagrams only.
_TICK_S = 0.005
_SENDING_S = 1.0
#: Callbacks run by the leader itself hold up the I/O loop at most this
#: long: then the other thread takes the loop over (see _await_leadership).
#: Well below min_rto_s, so a slow receiver function does not make the peer
#: retransmit.
_WATCH_S = 0.002
#: The other thread watches (wakes every _WATCH_S) only while callbacks
#: come this often; otherwise the leader hands callbacks over at once. The
#: watch costs the leader the GIL now and then: a bulk transfer, with one
#: callback per message, must not pay for it.
_ACTIVE_S = 0.05
# _lead's outcomes, and what the follower thread is doing.
_HANDED_OVER, _TAKEN_OVER, _CLOSED = 1, 2, 3
_IDLE, _TIMED = 1, 2


def message(obj: Any, recipient_ip: str = "127.0.0.1",
            recipient_port: int = 8080) -> TTNetworkMessageUDP:
    """Pickle ``obj`` into a message (TTPython's helper)."""
    return TTNetworkMessageUDP(recipient_ip, recipient_port, codec.dumps(obj))


#: A function and its arguments: the I/O thread's commands and the
#: dispatcher thread's callbacks are both queued as these.
_Call = tuple[Callable[..., None], tuple[Any, ...]]
_INF = float("inf")


class TTNetworkInterfaceUDP(DriverShell):
    """TTPython's UDP interface, rebuilt on :class:`ttnet.engine.Engine`.

    ``TTNetworkInterfaceUDP(ensembles=None, ip_addr='127.0.0.1', port=8225,
    timeout_ms=100, receiver_function=None)``, then ttnet's extras.
    ``receiver_function(msg)`` gets a :class:`TTReceivedMessage`;
    ``send(message, after=f)`` calls ``f(message)`` (see
    :mod:`ttnet.driver` for the rule for zero-argument callables).
    """

    def __init__(self, ensembles: Any = None, ip_addr: str = "127.0.0.1",
                 port: int = 8225, timeout_ms: int = 100,
                 receiver_function: ReceiverFn | None = None,
                 failure_function: FailureFn | None = None,
                 config: EngineConfig | None = None,
                 authenticator: Authenticator | None = None,
                 inline_callbacks: bool = False) -> None:
        check_endpoint(ip_addr, port)
        if config is None:
            config = EngineConfig(initial_rto_s=timeout_ms / 1000.0)
        super().__init__(Engine(config), receiver_function, failure_function)
        self.ensembles = ensembles
        self.ip_addr, self.port = ip_addr, port
        self.timeout_ms = timeout_ms
        self.authenticator = authenticator
        #: Run receiver_function inside the I/O loop: a slow receiver
        #: function then stalls this interface's network I/O. Opt-in; the
        #: default already runs it without a thread hand-off (module doc).
        self.inline_callbacks = inline_callbacks
        self.callback_errors = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                self._sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
            self._sock.bind((ip_addr, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        #: Requests from callers' threads, run by the I/O thread in order.
        self._commands: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        #: User callbacks, run in order by one thread at a time (the one
        #: that set _cb_busy); both under _cb_lock.
        self._callbacks: deque[_Call] = deque()
        self._cb_lock = threading.Lock()
        self._cb_busy = False
        #: Held by the thread that runs the I/O loop (the leader).
        self._leader = threading.Lock()
        self._leader_ident: int | None = None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, "sock")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._writing = False
        self._finished = False
        self._stop = threading.Event()
        self._closed = False
        #: Held by whoever touches the engine or sends on the socket: the
        #: I/O thread for each pass of its loop (not while it waits in
        #: select), or a caller of send() that found it free (_send_inline).
        self._lock = threading.Lock()
        #: When the I/O thread's select returns on its own (inf: never);
        #: written under _lock. A send done inline wakes the thread only if
        #: it made a timer due sooner than that.
        self._sleep_until = 0.0
        #: Datagrams the socket would not take yet (EAGAIN), oldest first;
        #: under _lock.
        self._backlog: list[tuple[bytes, Any]] = []
        self._last_send = -_INF
        #: When a callback was last queued (the follower watches the
        #: leader's callbacks only while they come often).
        self._last_activity = -_INF
        #: Guards the three below: how the follower waits (None: it is not
        #: waiting), since when the leader runs callbacks itself, and
        #: whether the follower took the loop over from it.
        self._role = threading.Lock()
        self._follower: int | None = None
        self._inline_since: float | None = None
        self._taken_over = False
        # Two threads, one role each at a time (leader/followers, see the
        # module doc): a message reaches the receiver function on the
        # thread that read it, and a slow receiver function never holds up
        # the network for long: the other thread leads the loop meanwhile.
        self._io = threading.Thread(target=self._worker, name=f"ttnet-io-{port}", daemon=True)
        self._dispatch = threading.Thread(target=self._worker,
                                          name=f"ttnet-cb-{port}", daemon=True)
        self._io.start()
        self._dispatch.start()

    # ------------------------------------------------------------- public API
    def send(self, message: TTNetworkMessageUDP, after: AfterFn | None = None,
             ensure: bool = False, *, on_failure: FailureFn | None = None,
             deadline_s: float | None = None) -> SendHandle:
        """Queue ``message``; returns at once with a :class:`SendHandle`.

        ``after(message)`` once every packet was acknowledged (or
        ``after()``, if it cannot take an argument);
        ``on_failure(message, reason)``, else ``failure_function``, if the
        send is given up. ``deadline_s`` overrides the config's deadline.
        """
        if self._closed:
            raise RuntimeError("interface is closed; create a new TTNetworkInterfaceUDP")
        payload = message.payload
        if self.authenticator is not None:
            payload = self.authenticator.seal(payload)
        cfg = self.engine.config
        if len(payload) > cfg.max_message_size:
            raise ValueError(f"message of {len(payload)} bytes exceeds max_message_size="
                             f"{cfg.max_message_size}")
        p = pending_send(message, after, on_failure)
        self._last_send = time.monotonic()
        args: tuple[Any, ...] = (message.get_address(), payload, ensure, deadline_s, p)
        cmd: _Call = (self._io_send, args)
        if threading.get_ident() == self._leader_ident:
            # From a callback run by the leader (inline_callbacks): it
            # holds the engine; the pass under way transmits the REQ.
            self._drain_commands()
            self._io_send(*args)
        elif not self._send_inline(cmd):
            self._commands.put(cmd)
            self._wake()
        return p.handle

    def _send_inline(self, cmd: _Call) -> bool:
        """Run ``cmd`` (a send) in the caller's thread if the engine is free
        at this instant (never waits for it: False if the I/O thread holds
        it), and put its first datagrams on the wire at once; this saves
        the wake-up of the I/O thread and its pass on the way of every
        message. Earlier queued commands run first, so sends keep their
        order. The I/O thread is woken only if this made a timer due before
        it would wake anyway, or left datagrams for it to send."""
        lock = self._lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self._stop.is_set():
                return False
            self._drain_commands()
            fn, args = cmd
            fn(*args)
            wake = True
            if not self._backlog:
                out = self.engine.datagrams_to_send(time.monotonic(), _INLINE_LIMIT)
                rest = self._send_datagrams(out)
                self._backlog = rest
                wake = len(out) >= _INLINE_LIMIT or bool(rest)
            if not wake and not self._callbacks:
                nt = self.engine.next_timer()
                wake = nt is not None and nt < self._sleep_until
        finally:
            lock.release()
        if wake:
            self._wake()
        return True

    def listen(self) -> None:
        """Kept for TTPython compatibility: the I/O thread listens from
        construction until :meth:`cleanup`."""
        return None

    def cleanup(self) -> None:
        """Stop the threads, fail pending sends, close the socket (<200 ms)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        me = threading.current_thread()
        for t in (self._io, self._dispatch):
            if t is not me:              # cleanup() may come from a callback
                t.join(timeout=1.0)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._sock.close()

    close = cleanup

    def __enter__(self) -> "TTNetworkInterfaceUDP":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    @property
    def counters(self) -> dict[str, int]:
        c = dict(self.engine.counters)
        c["callback_errors"] = self.callback_errors
        if self.authenticator is not None:
            c.update(self.authenticator.counters)
        return c

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip_addr, self.port)

    # ---------------------------------------- TTPython helper compatibility
    # TTPython's interface runs its protocol through these; ttnet's engine
    # owns its windows and handshakes, so here they are what a caller can
    # still use: standalone windows, read-only looks at the engine's, and
    # no-ops where the engine already does the work.
    def create_sending_window(self, message: TTNetworkMessageUDP,
                              after: AfterFn | None = None) -> TTSlidingWindow:
        """A sending :class:`TTSlidingWindow` for ``message`` whose
        completion calls ``after(message)`` (same rule as :meth:`send`).
        The window is the caller's to drive (``start``, ``ack``): the
        engine neither registers nor sends it."""
        return TTSlidingWindow(WINDOW_SIZE, self.timeout_ms, completion_callback(after), message)

    def get_sending_window(self, dest_address: tuple[str, int],
                           message_id: int) -> TTSlidingWindow | None:
        """The engine's window of a message being sent to ``dest_address``
        (its wire ``message_id``), or None. Read-only: the I/O thread owns it."""
        return self.engine.sending_window(dest_address, message_id)

    def create_receiving_window(self, address: tuple[str, int],
                                request_packet: TTRequestPacket) -> TTSlidingWindow:
        """A receiving :class:`TTSlidingWindow` for the message that
        ``request_packet`` announces from ``address``; once complete it
        calls ``receiver_function`` with a :class:`TTReceivedMessage`, in
        the caller's thread. The caller drives it (``receive``)."""
        def deliver(msg: TTNetworkMessageUDP) -> None:
            fn = self.receiver_function
            if fn is not None:
                fn(TTReceivedMessage(bytes(msg.payload), address, msg.message_id))
        return TTSlidingWindow(WINDOW_SIZE, self.timeout_ms, deliver, request_packet)

    def get_receiving_window(self, address: tuple[str, int],
                             message_id: int) -> TTSlidingWindow | None:
        """The engine's window of a message being received from
        ``address``, or None. Read-only: the I/O thread owns it."""
        return self.engine.receiving_window(address, message_id)

    def ensure_handshake(self, req_message: TTRequestPacket, address: tuple[str, int]) -> None:
        """Does nothing: the engine re-sends the REQ of every
        ``send(..., ensure=True)`` until ACK_START arrives (exponential
        backoff from the RTO); there is no separate registry of REQs."""
        return None

    def handshake(self) -> None:
        """Does nothing: REQ re-sends run in the I/O thread, on the
        engine's timers, from construction until :meth:`cleanup`."""
        return None

    def terminate_handshake(self, message_id: int, address: tuple[str, int]) -> None:
        """Answer a REQ with ACK_START (what the engine does on every REQ).
        Returns at once; the I/O thread sends it."""
        if self._closed:
            return
        self._commands.put((self._io_ack_start, (address, message_id)))
        self._wake()

    def wrap_completion(self, msg: Any, message_dict: dict[Any, Any], message_id: Any,
                        callback: AfterFn | None) -> None:
        """Remove ``message_id`` from ``message_dict`` (if there), then call
        ``callback(msg)`` (same rule as ``after``). An exception from the
        callback propagates, as in TTPython."""
        message_dict.pop(message_id, None)
        fn = completion_callback(callback)
        if fn is not None:
            fn(msg)

    # --------------------------------------------------------------- threads
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full: the loop is awake anyway; closed: shutting down

    def _worker(self) -> None:
        """Body of both threads: lead the I/O loop when it is free, run the
        callbacks when the loop hands them over, until the interface closes."""
        leader = self._leader
        while True:
            self._await_leadership()
            release = True
            try:
                if self._finished:
                    break
                self._leader_ident = threading.get_ident()
                outcome = self._lead()
                release = outcome != _TAKEN_OVER
            finally:
                self._leader_ident = None
                if release:
                    leader.release()
            if outcome == _CLOSED:
                break
            if outcome == _HANDED_OVER:
                self._run_callbacks()
        # Closing: what the last pass queued (failures of pending sends)
        # still runs, unless the other thread is running callbacks already.
        if self._claim_callbacks():
            self._run_callbacks()

    def _await_leadership(self) -> None:
        """Block until this thread leads the I/O loop: the leader handed it
        over, or it has been running callbacks for _WATCH_S (then this
        thread takes the loop over from it). While the interface is busy
        the wait wakes every _WATCH_S to check that; idle, it just blocks."""
        leader, role = self._leader, self._role
        while True:
            with role:
                timed = time.monotonic() - self._last_activity < _ACTIVE_S
                self._follower = _TIMED if timed else _IDLE
            got = leader.acquire(timeout=_WATCH_S if timed else -1)
            with role:
                self._follower = None
                if got:
                    return
                since = self._inline_since
                if (since is not None and not self._taken_over
                        and time.monotonic() - since >= _WATCH_S):
                    # The leader's callbacks run long: the role (and the
                    # lock, still held) is ours now.
                    self._taken_over = True
                    return

    def _lead(self) -> int:
        """The I/O loop. Returns _HANDED_OVER when it has claimed callbacks
        for the caller to run (the other thread takes the loop),
        _TAKEN_OVER when the other thread took the loop while this one ran
        callbacks, _CLOSED once the interface is closed."""
        sel, engine, lock = self._sel, self.engine, self._lock
        lock.acquire()
        holding = True
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                nt = engine.next_timer()
                timeout = None if nt is None else max(0.0, nt - now)
                if now - self._last_send < _SENDING_S and (timeout is None or timeout > _TICK_S):
                    timeout = _TICK_S
                if self._backlog:
                    timeout = 0.0 if not self._writing else timeout
                want_write = bool(self._backlog)
                if want_write != self._writing:
                    sel.modify(self._sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0), "sock")
                    self._writing = want_write
                self._sleep_until = _INF if timeout is None else now + timeout
                # The engine is free while we wait: send() may use it
                # (_send_inline) and wakes us if we must look again.
                lock.release()
                try:
                    events = sel.select(timeout)
                finally:
                    lock.acquire()
                self._sleep_until = 0.0
                readable = False
                for key, mask in events:
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except (BlockingIOError, OSError):
                            pass
                    elif mask & selectors.EVENT_READ:
                        readable = True
                self._drain_commands()
                if readable:
                    self._receive()
                engine.handle_timers(time.monotonic())
                self._dispatch_events()
                self._backlog = self._transmit(self._backlog)
                if self._callbacks and self._claim_callbacks():
                    with self._role:
                        lazy = self._follower == _TIMED
                        if lazy:
                            self._inline_since = time.monotonic()
                    if not lazy:
                        return _HANDED_OVER
                    # The other thread checks every _WATCH_S: run the
                    # callbacks here, without waking it, and keep leading
                    # unless they ran so long that it took the loop over.
                    me, self._leader_ident = self._leader_ident, None
                    lock.release()
                    holding = False
                    try:
                        self._run_callbacks()
                    finally:
                        with self._role:
                            self._inline_since = None
                            taken, self._taken_over = self._taken_over, False
                        if not taken:
                            lock.acquire()
                            holding = True
                            self._leader_ident = me
                    if taken:
                        return _TAKEN_OVER
        except Exception:
            log.exception("ttnet I/O loop crashed; interface stops")
            self._stop.set()
        finally:
            if holding:
                if self._stop.is_set() and not self._finished:
                    self._finished = True
                    sel.close()
                    try:
                        engine.cancel_all("interface closed", time.monotonic())
                        self._dispatch_events()
                    except Exception:
                        log.exception("failing pending sends on close")
                lock.release()
        return _CLOSED

    def _claim_callbacks(self) -> bool:
        """Become the thread that runs callbacks, if there are some and no
        other thread is running them."""
        with self._cb_lock:
            if self._cb_busy or not self._callbacks:
                return False
            self._cb_busy = True
            return True

    def _post(self, item: _Call) -> None:
        """Queue a user callback; the leader hands it to a thread."""
        self._last_activity = time.monotonic()
        with self._cb_lock:
            self._callbacks.append(item)

    def _run_callbacks(self) -> None:
        """Run queued callbacks in order until none is left (claimed by
        :meth:`_claim_callbacks` first)."""
        callbacks, cb_lock = self._callbacks, self._cb_lock
        while True:
            with cb_lock:
                if not callbacks:
                    self._cb_busy = False
                    return
                item = callbacks.popleft()
            self._run_callback(item)

    def _drain_commands(self) -> None:
        commands = self._commands
        while True:
            try:
                fn, args = commands.get_nowait()
            except queue.Empty:
                return
            fn(*args)

    # commands: run in the I/O thread only
    def _io_send(self, address: tuple[str, int], payload: bytes, ensure: bool,
                 deadline_s: float | None, pending: PendingSend) -> None:
        try:
            self._start_send(address, payload, time.monotonic(), ensure, deadline_s, pending)
        except ValueError as exc:
            self._post((self._run_failed, (pending, str(exc))))

    def _io_ack_start(self, address: tuple[str, int], message_id: int) -> None:
        self.engine.send_ack_start(address, message_id, time.monotonic())

    def _receive(self) -> None:
        # At most one batch before the caller sends: the ACKs for these
        # datagrams go out before more is read, so the peer's RTT samples
        # don't include our read loop (that caused spurious timeouts).
        sock, engine = self._sock, self.engine
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP port unreachable from a dead peer surfaces here on
                # Linux as ECONNREFUSED: it is information, not a failure.
                if exc.errno != errno.ECONNREFUSED:
                    engine.counters["socket_errors"] += 1
                continue
            engine.datagram_received(data, addr, time.monotonic())

    def _send_datagrams(self, backlog: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        """sendto each datagram; returns those the socket would not take."""
        sock, engine = self._sock, self.engine
        for i, (data, addr) in enumerate(backlog):
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                engine.counters["packets_sent"] += i
                return backlog[i:]
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH,
                                     errno.EHOSTUNREACH):
                    log.debug("sendto %s failed: %s", addr, exc)
                engine.counters["send_errors"] += 1
        engine.counters["packets_sent"] += len(backlog)
        return []

    def _transmit(self, backlog: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        engine = self.engine
        for _ in range(64):
            if not backlog:
                backlog = engine.datagrams_to_send(time.monotonic(), _BATCH)
                if not backlog:
                    return backlog
            full = len(backlog) >= _BATCH
            backlog = self._send_datagrams(backlog)
            if backlog or not full:
                return backlog       # the engine had no more to send yet
            # Let incoming ACKs in between bursts: they open the window.
            self._receive()
            self._dispatch_events()
        return backlog

    # ---------------------------------------------- DriverShell's hooks
    # Called in the I/O thread: user code goes to the dispatcher thread.
    def _on_delivered(self, ev: Delivered) -> None:
        if self.inline_callbacks:
            self._run_callback((self._run_delivered, (ev,)))
        else:
            self._post((self._run_delivered, (ev,)))

    def _on_completed(self, p: PendingSend) -> None:
        if p.after is None:
            p.handle._set(True)        # no user code: no thread hop
        else:
            self._post((self._run_completed, (p,)))

    def _on_failed(self, p: PendingSend, reason: str) -> None:
        self._post((self._run_failed, (p, reason)))

    def _payload_of(self, ev: Delivered) -> bytes | None:
        # Joining a large payload and checking its MAC happen here, in the
        # dispatcher thread (unless inline_callbacks), so ACKs keep flowing.
        if self.authenticator is not None:
            return self.authenticator.open_parts(ev.parts(), ev.address)
        return ev.payload

    def _run_callback(self, item: _Call) -> None:
        """Run one callback item; user code may raise, the thread survives."""
        fn, args = item
        try:
            fn(*args)
        except Exception:
            self.callback_errors += 1
            log.exception("ttnet callback raised; continuing")
