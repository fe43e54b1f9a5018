"""TTNetworkInterfaceUDP: the protocol engine driven over one real UDP socket.

Owns one socket (bound to ``ip_addr:port``; it both sends and receives, so
peers' replies come back to it), one I/O thread (a selector over the socket
and a wake-up pipe, plus the engine's timer), and one dispatcher thread that
runs user callbacks so a slow receiver function never stalls the network.

The engine is guarded by one lock, which the I/O thread holds except while
it waits in select. :meth:`send` takes it only if it is free at that
instant (a non-blocking try) and the I/O thread has nothing waiting to be
written: it then runs the commands queued before it, hands its message to
the engine and writes what the engine has to send in the caller's own
thread, so the first datagram leaves without a thread hand-off; it wakes
the I/O thread only if that must now act sooner than it planned (a timer,
an event, a full socket). Otherwise, as before, the message is queued for
the I/O thread and the thread woken through the pipe. No thread ever polls.

Must never: run protocol logic (that is :mod:`ttnet.engine`), touch the
engine without holding its lock, start a thread per message, let an
exception from the network or a callback escape a thread, or block a
caller of :meth:`send` (it returns at once: it never waits for the lock).

Callbacks: the contract of :mod:`ttnet.driver` (``receiver_function(msg)``
with a :class:`TTReceivedMessage`, ``after(message)``,
``on_failure(message, reason)`` / ``failure_function``), all run in the
dispatcher thread -- except ``receiver_function`` with
``inline_callbacks=True``, which runs in the I/O thread. ``send`` returns a
:class:`SendHandle` whose ``wait()`` gives the outcome.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
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


def message(obj: Any, recipient_ip: str = "127.0.0.1",
            recipient_port: int = 8080) -> TTNetworkMessageUDP:
    """Pickle ``obj`` into a message (TTPython's helper)."""
    return TTNetworkMessageUDP(recipient_ip, recipient_port, codec.dumps(obj))


#: A function and its arguments: the I/O thread's commands and the
#: dispatcher thread's callbacks are both queued as these.
_Call = tuple[Callable[..., None], tuple[Any, ...]]


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
        #: Run receiver_function on the I/O thread: saves a thread hand-off
        #: per message (measured -17..-30% latency) but a slow receiver
        #: function then stalls this interface's network I/O. Opt-in.
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
        #: User callbacks for the dispatcher thread; None stops it.
        self._callbacks: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        #: Held by whoever drives the engine: the I/O thread except while
        #: it waits in select, or a caller of send() that found it free.
        self._engine_lock = threading.Lock()
        #: Written under the lock by the I/O thread before it waits: when it
        #: will wake by itself (monotonic; inf: only for the socket or the
        #: pipe) and whether it has no unwritten datagrams (then a caller
        #: may send in its own thread).
        self._idle_until = 0.0
        self._can_inline = False
        #: Datagrams a caller's inline send could not write (socket full):
        #: the I/O thread writes them first.
        self._spill: list[tuple[bytes, Any]] = []
        self._io = threading.Thread(target=self._io_loop, name=f"ttnet-io-{port}", daemon=True)
        self._dispatch = threading.Thread(target=self._dispatch_loop,
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
        args = (message.get_address(), payload, ensure, deadline_s, p)
        if not self._send_inline(args):
            self._commands.put((self._io_send, args))
            self._wake()
        return p.handle

    def _send_inline(self, args: tuple[Any, ...]) -> bool:
        """Send in the caller's thread if the engine is free right now (see
        the module's docstring); False: the caller queues it instead."""
        lock = self._engine_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self._stop.is_set() or not self._can_inline:
                return False
            self._drain_commands()          # sends queued earlier go first
            self._io_send(*args)
            engine = self.engine
            out: list[tuple[bytes, Any]] = engine.datagrams_to_send(time.monotonic(), _BATCH)
            unsent = self._write(out)
            if unsent:
                self._spill = unsent
                self._can_inline = False
                self._wake()
                return True
            nt = engine.next_timer()
            if (len(out) == _BATCH or engine.has_events()
                    or (nt is not None and nt < self._idle_until)):
                self._wake()
            return True
        finally:
            lock.release()

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
        self._io.join(timeout=1.0)
        self._callbacks.put(None)
        self._dispatch.join(timeout=1.0)
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

    def _io_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "sock")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        engine = self.engine
        backlog: list[tuple[bytes, Any]] = []
        writing = False
        lock = self._engine_lock
        lock.acquire()
        try:
            while not self._stop.is_set():
                if self._spill:
                    backlog, self._spill = backlog + self._spill, []
                now = time.monotonic()
                nt = engine.next_timer()
                timeout = None if nt is None else max(0.0, nt - now)
                if backlog:
                    timeout = 0.0 if not writing else timeout
                self._idle_until = float("inf") if timeout is None else now + timeout
                self._can_inline = not backlog
                lock.release()
                try:
                    ready = sel.select(timeout)
                finally:
                    lock.acquire()
                    self._can_inline = False
                for key, _ in ready:
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except (BlockingIOError, OSError):
                            pass
                self._drain_commands()
                self._receive()
                engine.handle_timers(time.monotonic())
                self._dispatch_events()
                backlog = self._transmit(backlog)
                want_write = bool(backlog)
                if want_write != writing:
                    sel.modify(self._sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0), "sock")
                    writing = want_write
        except Exception:
            log.exception("ttnet I/O loop crashed; interface stops")
        finally:
            sel.close()
            try:
                engine.cancel_all("interface closed", time.monotonic())
                self._dispatch_events()
            except Exception:
                log.exception("failing pending sends on close")
            finally:
                lock.release()

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
            self._callbacks.put((self._run_failed, (pending, str(exc))))

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

    def _write(self, datagrams: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        """Write datagrams until the socket would block; returns the ones
        not written (empty when all went). A refused or unreachable
        destination is counted, never raised. Engine lock held."""
        sock, counters = self._sock, self.engine.counters
        for i, (data, addr) in enumerate(datagrams):
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                counters["packets_sent"] += i
                return datagrams[i:]
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH,
                                     errno.EHOSTUNREACH):
                    log.debug("sendto %s failed: %s", addr, exc)
                counters["send_errors"] += 1
        counters["packets_sent"] += len(datagrams)
        return []

    def _transmit(self, backlog: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        engine = self.engine
        for _ in range(64):
            if not backlog:
                backlog = engine.datagrams_to_send(time.monotonic(), _BATCH)
                if not backlog:
                    return backlog
            backlog = self._write(backlog)
            if backlog:
                return backlog
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
            self._callbacks.put((self._run_delivered, (ev,)))

    def _on_completed(self, p: PendingSend) -> None:
        if p.after is None:
            p.handle._set(True)        # no user code: no thread hop
        else:
            self._callbacks.put((self._run_completed, (p,)))

    def _on_failed(self, p: PendingSend, reason: str) -> None:
        self._callbacks.put((self._run_failed, (p, reason)))

    def _payload_of(self, ev: Delivered) -> bytes | None:
        # Joining a large payload and checking its MAC happen here, in the
        # dispatcher thread (unless inline_callbacks), so ACKs keep flowing.
        if self.authenticator is not None:
            return self.authenticator.open_parts(ev.parts(), ev.address)
        return ev.payload

    def _dispatch_loop(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            self._run_callback(item)

    def _run_callback(self, item: _Call) -> None:
        """Run one callback item; user code may raise, the thread survives."""
        fn, args = item
        try:
            fn(*args)
        except Exception:
            self.callback_errors += 1
            log.exception("ttnet callback raised; continuing")
