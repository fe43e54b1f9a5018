"""TTNetworkInterfaceUDP: the protocol engine driven over one real UDP socket.

Owns one socket (bound to ``ip_addr:port``; it both sends and receives, so
peers' replies come back to it), one I/O thread (a selector over the socket
and a wake-up pipe, plus the engine's timer), and one dispatcher thread that
runs user callbacks so a slow receiver function never stalls the network.

Must never: run protocol logic (that is :mod:`ttnet.engine`), start a thread
per message, let an exception from the network or a callback escape a
thread, or block a caller of :meth:`send` (it returns at once).

Callbacks (documented contract):
- ``receiver_function(msg)``: one :class:`TTReceivedMessage` per delivered
  message, exactly once, in the dispatcher thread.
- ``send(message, after=f)``: ``f()`` is called with no arguments when every
  packet of the message was acknowledged (TTPython's contract).
- ``send(message, on_failure=g)`` (or the interface-wide
  ``failure_function``): ``g(message, reason)`` when the send is given up:
  its deadline passed or the interface closed. ``send`` also returns a
  :class:`SendHandle` whose ``wait()`` gives the outcome.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import selectors
import socket
import threading
import time
from typing import Any, Callable, NamedTuple

from . import codec
from .engine import Delivered, Engine, EngineConfig, SendCompleted, SendFailed
from .wire import (MAX_DATA, MAX_DATAGRAM, TTAckPacket, TTDataPacket,
                   TTRequestPacket, WINDOW_SIZE, packet_count)
from .window import TTSlidingWindow

log = logging.getLogger(__name__)

#: Socket buffers asked for. A full window is 1000 x 1217 B = 1.2 MB; the
#: kernel caps the request at net.core.{r,w}mem_max, which is why the engine
#: also paces with a congestion window instead of trusting the buffer.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
#: Datagrams handled per I/O loop pass before looking at the other direction.
_BATCH = 64


def _check_endpoint(ip_addr: str, port: int) -> None:
    try:
        ipaddress.IPv4Address(ip_addr)
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise ValueError(f"ip_addr {ip_addr!r} is not an IPv4 address (e.g. '127.0.0.1')") from exc
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"port {port!r} is outside 1024..65535; pick an unprivileged UDP port")


class TTReceivedMessage(NamedTuple):
    """What the receiver function gets: the payload and who sent it."""

    payload: bytes
    address: tuple[str, int]

    def decode(self, decoder: codec.SafeDecoder | None = None) -> Any:
        """Unpickle the payload through the restricted decoder."""
        return (decoder or codec.default_decoder).loads(self.payload)


class TTNetworkMessageUDP:
    """A message addressed to ``recipient_ip:recipient_port``."""

    def __init__(self, recipient_ip: str, recipient_port: int,
                 payload_byte_array: bytes) -> None:
        _check_endpoint(recipient_ip, recipient_port)
        self.recipient_ip = recipient_ip
        self.recipient_port = recipient_port
        self.payload = bytes(payload_byte_array)

    def get_address(self) -> tuple[str, int]:
        return (self.recipient_ip, self.recipient_port)

    def get_request(self, message_id: int = 0) -> TTRequestPacket:
        return TTRequestPacket(message_id, packet_count(len(self.payload)))

    def generate_packets(self, window_size: int = WINDOW_SIZE,
                         message_id: int = 0) -> list[TTDataPacket]:
        """All DATA packets, sequence numbers taken mod 2*window_size+1."""
        mod = 2 * window_size + 1
        p = self.payload
        return [TTDataPacket(message_id, i % mod, p[i * MAX_DATA:(i + 1) * MAX_DATA])
                for i in range(packet_count(len(p)))]

    def __repr__(self) -> str:
        return (f"TTNetworkMessageUDP({self.recipient_ip}:{self.recipient_port}, "
                f"{len(self.payload)} bytes)")


def message(obj: Any, recipient_ip: str, recipient_port: int) -> TTNetworkMessageUDP:
    """Pickle ``obj`` into a message (TTPython's helper)."""
    return TTNetworkMessageUDP(recipient_ip, recipient_port, codec.dumps(obj))


class SendHandle:
    """Outcome of one send: ``wait()`` blocks until it completes or fails."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.ok: bool | None = None
        self.reason: str | None = None
        self._event = threading.Event()

    def _set(self, ok: bool, reason: str | None = None) -> None:
        self.ok, self.reason = ok, reason
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True if delivered (all packets acknowledged); False if failed or
        still pending when ``timeout`` passed (check ``done``)."""
        self._event.wait(timeout)
        return bool(self.ok)


class TTNetworkInterfaceUDP:
    """TTPython's UDP interface, rebuilt on :class:`ttnet.engine.Engine`."""

    def __init__(self, ensembles: Any = None, ip_addr: str = "127.0.0.1",
                 port: int = 8225, timeout_ms: int = 100,
                 receiver_function: Callable[[TTReceivedMessage], Any] | None = None,
                 failure_function: Callable[[Any, str], Any] | None = None,
                 config: EngineConfig | None = None,
                 authenticator: Any = None, inline_callbacks: bool = False) -> None:
        _check_endpoint(ip_addr, port)
        if config is None:
            config = EngineConfig(initial_rto_s=timeout_ms / 1000.0)
        self.ensembles = ensembles
        self.ip_addr, self.port = ip_addr, port
        self.timeout_ms = timeout_ms
        self.receiver_function = receiver_function
        self.failure_function = failure_function
        self.authenticator = authenticator
        #: Run receiver_function on the I/O thread: saves a thread hand-off
        #: per message (measured -17..-30% latency) but a slow receiver
        #: function then stalls this interface's network I/O. Opt-in.
        self.inline_callbacks = inline_callbacks
        self.engine = Engine(config)
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
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, tuple[SendHandle, Any, Any]] = {}
        self._stop = threading.Event()
        self._closed = False
        self._io = threading.Thread(target=self._io_loop, name=f"ttnet-io-{port}", daemon=True)
        self._dispatch = threading.Thread(target=self._dispatch_loop,
                                          name=f"ttnet-cb-{port}", daemon=True)
        self._io.start()
        self._dispatch.start()

    # ------------------------------------------------------------- public API
    def send(self, message: TTNetworkMessageUDP, after: Callable[[], Any] | None = None,
             ensure: bool = False, on_failure: Callable[[Any, str], Any] | None = None,
             deadline_s: float | None = None) -> SendHandle:
        """Queue ``message``; returns at once with a :class:`SendHandle`."""
        if self._closed:
            raise RuntimeError("interface is closed; create a new TTNetworkInterfaceUDP")
        payload = message.payload
        if self.authenticator is not None:
            payload = self.authenticator.seal(payload)
        cfg = self.engine.config
        if len(payload) > cfg.max_message_size:
            raise ValueError(f"message of {len(payload)} bytes exceeds max_message_size="
                             f"{cfg.max_message_size}")
        handle = SendHandle(message)
        self._commands.put((message.get_address(), payload, ensure, deadline_s,
                            handle, after, on_failure))
        self._wake()
        return handle

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
    def create_sending_window(self, message: TTNetworkMessageUDP,
                              completion_fn: Callable | None = None) -> TTSlidingWindow:
        return TTSlidingWindow(WINDOW_SIZE, self.timeout_ms, completion_fn,
                               message.generate_packets(WINDOW_SIZE))

    def get_sending_window(self, message_id: int, address: tuple[str, int]) -> Any:
        peer = self.engine._peers.get(address)
        out = peer.outgoing.get(message_id) if peer else None
        return out.window if out else None

    def create_receiving_window(self, num_packets: int,
                                completion_fn: Callable | None = None) -> TTSlidingWindow:
        return TTSlidingWindow(WINDOW_SIZE, self.timeout_ms, completion_fn, num_packets)

    def get_receiving_window(self, message_id: int, address: tuple[str, int]) -> Any:
        peer = self.engine._peers.get(address)
        inc = peer.incoming.get(message_id) if peer else None
        return inc.window if inc else None

    def ensure_handshake(self, message: TTNetworkMessageUDP, after: Callable | None = None) -> SendHandle:
        """Send with the handshake guaranteed (REQ re-sent until ACK_START)."""
        return self.send(message, after=after, ensure=True)

    def handshake(self, message: TTNetworkMessageUDP, after: Callable | None = None) -> SendHandle:
        """Send with a single REQ (best effort handshake)."""
        return self.send(message, after=after, ensure=False)

    def terminate_handshake(self, message_id: int, address: tuple[str, int]) -> None:
        """Answer a REQ with ACK_START (what the engine does on every REQ)."""
        TTAckPacket(message_id, 0).send(self._sock, address)

    @staticmethod
    def wrap_completion(fn: Callable[[], Any] | None, *args: Any) -> Callable[..., None]:
        """A completion callback that never raises into the caller."""
        def wrapped(*_: Any) -> None:
            if fn is None:
                return
            try:
                fn(*args)
            except Exception:
                log.exception("completion callback failed")
        return wrapped

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
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                nt = engine.next_timer()
                timeout = None if nt is None else max(0.0, nt - now)
                if backlog:
                    timeout = 0.0 if not writing else timeout
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except (BlockingIOError, OSError):
                            pass
                self._drain_commands()
                self._receive()
                engine.handle_timers(time.monotonic())
                self._emit_events()
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
                engine.cancel_all("interface closed")
                self._emit_events()
            except Exception:
                log.exception("failing pending sends on close")

    def _drain_commands(self) -> None:
        engine = self.engine
        while True:
            try:
                addr, payload, ensure, deadline_s, handle, after, on_failure = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                h = engine.send_message(addr, payload, time.monotonic(), ensure, deadline_s)
            except ValueError as exc:
                self._callbacks.put(("fail", handle, on_failure, str(exc)))
                continue
            self._pending[h] = (handle, after, on_failure)

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

    def _transmit(self, backlog: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        sock, engine = self._sock, self.engine
        for _ in range(64):
            if not backlog:
                backlog = engine.datagrams_to_send(time.monotonic(), _BATCH)
                if not backlog:
                    return backlog
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
            backlog = []
            # Let incoming ACKs in between bursts: they open the window.
            self._receive()
            self._emit_events()
        return backlog

    def _emit_events(self) -> None:
        for ev in self.engine.pop_events():
            if isinstance(ev, Delivered):
                if self.inline_callbacks:
                    self._run_callback(("recv", ev))
                else:
                    self._callbacks.put(("recv", ev))
            elif isinstance(ev, SendCompleted):
                handle, after, _ = self._pending.pop(ev.handle)
                if after is None:
                    handle._set(True)        # no user code: no thread hop
                else:
                    self._callbacks.put(("done", handle, after))
            elif isinstance(ev, SendFailed):
                handle, _, on_failure = self._pending.pop(ev.handle)
                self._callbacks.put(("fail", handle, on_failure, ev.reason))

    def _dispatch_loop(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            self._run_callback(item)

    def _deliver(self, ev: Delivered) -> None:
        # Joining a large payload and checking its MAC happen here, off the
        # I/O thread (unless inline_callbacks), so ACKs keep flowing.
        if self.authenticator is not None:
            payload = self.authenticator.open_parts(ev.parts(), ev.address)
            if payload is None:
                return
        else:
            payload = ev.payload
        if self.receiver_function is not None:
            self.receiver_function(TTReceivedMessage(payload, ev.address))

    def _run_callback(self, item: tuple) -> None:
        """Run one callback item; user code may raise, the thread survives."""
        try:
            kind = item[0]
            if kind == "recv":
                self._deliver(item[1])
            elif kind == "done":
                item[1]._set(True)
                if item[2] is not None:
                    item[2]()
            else:
                _, handle, on_failure, reason = item
                handle._set(False, reason)
                fn = on_failure or self.failure_function
                if fn is not None:
                    fn(handle.message, reason)
        except Exception:
            self.callback_errors += 1
            log.exception("ttnet callback raised; continuing")
