"""Prototypes of ttnet driver changes, measured by ``diagnose.py variants``.

These subclass :class:`ttnet.TTNetworkInterfaceUDP` (nothing in ttnet/ is
edited) to try the latency fixes proposed in docs/benchmarks.md against the
stock interface in the same run:

- ``ack_first``: in each I/O pass, transmit (the ACKs just generated) before
  handing Delivered events to the dispatcher thread, so the woken dispatcher
  does not fight the I/O thread for the GIL while the ACK is still unsent.
- ``direct_send``: ``send()`` takes an engine lock and puts the REQ on the
  wire from the caller's thread, instead of queueing a command and waking
  the I/O thread through the pipe (one thread wake-up less per message).
- ``inline``: receiver functions run in the I/O thread (no dispatcher
  hand-off), and a ``send()`` made from inside one goes straight into the
  engine, transmitted in the same I/O pass. Opt-in in a real design: a slow
  receiver function then stalls the network.

``fast_crc`` (goodput): verify the CRC of received datagrams with the
reflected-CRC identity (one C call) instead of computing the non-reflected
CRC and comparing to 0 -- same result, ~0.5 us less per datagram.
"""
from __future__ import annotations

import binascii
import errno
import hashlib
import hmac
import logging
import os
import selectors
import threading
import time
from typing import Any, Callable

import ttnet.auth as auth_mod
import ttnet.engine as engine_mod
from ttnet.auth import Authenticator
from ttnet.engine import Delivered, SendCompleted, SendFailed
from ttnet.udp import SendHandle, TTNetworkInterfaceUDP, TTReceivedMessage
from ttnet.wire import _REV8

log = logging.getLogger(__name__)


class VariantUDP(TTNetworkInterfaceUDP):
    """TTNetworkInterfaceUDP with the prototype changes switchable."""

    def __init__(self, *args: Any, ack_first: bool = False, direct_send: bool = False,
                 inline: bool = False, lazy_wake: bool = False, quiet_done: bool = False,
                 open_in_dispatcher: bool = False, rx_batch: int = 256, **kw: Any) -> None:
        self.rx_batch = rx_batch
        self.ack_first, self.direct_send, self.inline = ack_first, direct_send, inline
        self.lazy_wake, self.quiet_done = lazy_wake, quiet_done
        self.open_in_dispatcher = open_in_dispatcher
        self._lock = threading.Lock()
        self._io_ident: int | None = None
        self._backlog: list = []
        super().__init__(*args, **kw)

    # ------------------------------------------------------------- send
    def send(self, message: Any, after: Callable[[], Any] | None = None,
             ensure: bool = False, on_failure: Callable[[Any, str], Any] | None = None,
             deadline_s: float | None = None) -> SendHandle:
        in_io = threading.get_ident() == self._io_ident
        if not (self.direct_send or (self.inline and in_io)):
            return super().send(message, after, ensure, on_failure, deadline_s)
        if self._closed:
            raise RuntimeError("interface is closed")
        payload = message.payload
        if self.authenticator is not None:
            payload = self.authenticator.seal(payload)
        if len(payload) > self.engine.config.max_message_size:
            raise ValueError("message too large")
        handle = SendHandle(message)
        cmd = (message.get_address(), payload, ensure, deadline_s, handle, after, on_failure)
        if in_io:
            # Called by an inline receiver function: the I/O pass that runs
            # it transmits right after.
            self._start(cmd)
            return handle
        with self._lock:
            self._start(cmd)
            self._flush()
        if not self.lazy_wake:
            self._wake()      # let the I/O thread re-arm its timer (off the critical path)
        return handle

    def _start(self, cmd: tuple) -> None:
        addr, payload, ensure, deadline_s, handle, after, on_failure = cmd
        try:
            h = self.engine.send_message(addr, payload, time.monotonic(), ensure, deadline_s)
        except ValueError as exc:
            self._callbacks.put(("fail", handle, on_failure, str(exc)))
            return
        self._pending[h] = (handle, after, on_failure)

    def _flush(self) -> None:
        """Send what the engine has now (the REQ first), caller holds the lock."""
        if self._backlog:
            return                 # the I/O thread is draining a backlog
        out = self.engine.datagrams_to_send(time.monotonic(), 64)
        sock = self._sock
        for i, (data, addr) in enumerate(out):
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self.engine.counters["packets_sent"] += i
                self._backlog = out[i:]
                return
            except OSError:
                self.engine.counters["send_errors"] += 1
        self.engine.counters["packets_sent"] += len(out)

    # ------------------------------------------------------------ I/O loop
    def _io_loop(self) -> None:
        self._io_ident = threading.get_ident()
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "sock")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        engine = self.engine
        writing = False
        try:
            while not self._stop.is_set():
                with self._lock:
                    now = time.monotonic()
                    nt = engine.next_timer()
                    timeout = None if nt is None else max(0.0, nt - now)
                    if self.lazy_wake:
                        # send() did not wake us: never sleep past LAZY_CAP_S
                        # so a REQ timer it armed is served at most that late.
                        timeout = LAZY_CAP_S if timeout is None else min(timeout, LAZY_CAP_S)
                    if self._backlog and not writing:
                        timeout = 0.0
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except (BlockingIOError, OSError):
                            pass
                with self._lock:
                    self._drain_commands()
                    self._receive()
                    engine.handle_timers(time.monotonic())
                    if self.ack_first or self.inline:
                        self._backlog = self._transmit(self._backlog)
                        self._emit_events()
                        self._backlog = self._transmit(self._backlog)
                    else:
                        self._emit_events()
                        self._backlog = self._transmit(self._backlog)
                    want_write = bool(self._backlog)
                if want_write != writing:
                    sel.modify(self._sock, selectors.EVENT_READ
                               | (selectors.EVENT_WRITE if want_write else 0), "sock")
                    writing = want_write
        except Exception:
            log.exception("prototype I/O loop crashed")
        finally:
            sel.close()
            try:
                with self._lock:
                    engine.cancel_all("interface closed")
                    self._emit_events()
            except Exception:
                log.exception("failing pending sends on close")

    def _emit_events(self) -> None:
        if (self.quiet_done or self.open_in_dispatcher) and not self.inline:
            return self._emit_quiet()
        if not self.inline:
            return super()._emit_events()
        for ev in self.engine.pop_events():
            if isinstance(ev, Delivered):
                payload = ev.payload
                if self.authenticator is not None:
                    payload = self.authenticator.open(payload, ev.address)
                    if payload is None:
                        continue
                self._run(("recv", TTReceivedMessage(payload, ev.address)))
            elif isinstance(ev, SendCompleted):
                handle, after, _ = self._pending.pop(ev.handle)
                self._run(("done", handle, after))
            elif isinstance(ev, SendFailed):
                handle, _, on_failure = self._pending.pop(ev.handle)
                self._run(("fail", handle, on_failure, ev.reason))

    def _receive(self) -> None:
        """Stock _receive with a configurable batch (stock: 256 datagrams
        before the ACKs they generated can go out)."""
        sock, engine = self._sock, self.engine
        for _ in range(self.rx_batch):
            try:
                data, addr = sock.recvfrom(1218)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    engine.counters["socket_errors"] += 1
                continue
            engine.datagram_received(data, addr, time.monotonic())

    def _dispatch_loop(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            if item[0] == "sealed":
                # Authenticate here, off the I/O thread (hashlib releases
                # the GIL on big buffers, so the I/O thread keeps ACKing).
                _, payload, address = item
                try:
                    payload = self.authenticator.open(payload, address)
                except Exception:
                    log.exception("authenticator failed")
                    payload = None
                if payload is None:
                    continue
                item = ("recv", TTReceivedMessage(payload, address))
            self._run(item)

    def _emit_quiet(self) -> None:
        """Stock hand-off, except a completed send with no ``after`` callback
        is resolved right here (Event.set wakes only real waiters) instead
        of waking the dispatcher thread for nothing."""
        put = self._callbacks.put
        for ev in self.engine.pop_events():
            if isinstance(ev, Delivered):
                payload = ev.payload
                if self.authenticator is not None and self.open_in_dispatcher:
                    put(("sealed", payload, ev.address))
                    continue
                if self.authenticator is not None:
                    payload = self.authenticator.open(payload, ev.address)
                    if payload is None:
                        continue
                put(("recv", TTReceivedMessage(payload, ev.address)))
            elif isinstance(ev, SendCompleted):
                handle, after, _ = self._pending.pop(ev.handle)
                if after is None:
                    handle._set(True)
                else:
                    put(("done", handle, after))
            elif isinstance(ev, SendFailed):
                handle, _, on_failure = self._pending.pop(ev.handle)
                put(("fail", handle, on_failure, ev.reason))

    def _run(self, item: tuple) -> None:
        try:
            kind = item[0]
            if kind == "recv":
                if self.receiver_function is not None:
                    self.receiver_function(item[1])
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


#: Longest the I/O thread sleeps with lazy_wake (bounds how late a REQ
#: retransmission armed by a direct send() can be served).
LAZY_CAP_S = 0.02

VARIANTS: dict[str, dict[str, bool]] = {
    "stock": {},
    "ack_first": {"ack_first": True},
    "quiet_done": {"quiet_done": True},
    "direct_send": {"direct_send": True},
    "direct_lazy": {"direct_send": True, "lazy_wake": True},
    "quiet+direct_lazy": {"quiet_done": True, "direct_send": True, "lazy_wake": True},
    "inline": {"inline": True},
    "inline+direct_lazy": {"inline": True, "direct_send": True, "lazy_wake": True},
}


class FastAuthenticator(Authenticator):
    """Same sealed layout and checks as :class:`ttnet.Authenticator`, without
    the whole-payload copies: the MAC is fed the header and a memoryview of
    the payload instead of ``head + payload``; seal makes the one copy the
    result needs, open the one copy of the returned payload."""

    def seal(self, payload: bytes) -> bytes:
        head = auth_mod._HDR.pack(auth_mod.MAGIC, int(self._clock() * 1e9), os.urandom(8))
        mac = hmac.new(self._key, head, hashlib.sha256)
        mac.update(payload)
        return b"".join((head, mac.digest(), payload))

    def open(self, sealed: bytes, sender: Any = None) -> bytes | None:
        hdr, overhead = auth_mod._HDR.size, auth_mod.OVERHEAD
        if len(sealed) < overhead or sealed[:4] != auth_mod.MAGIC:
            self.counters["auth_missing"] += 1
            return None
        mv = memoryview(sealed)
        head = bytes(mv[:hdr])
        mac = hmac.new(self._key, head, hashlib.sha256)
        mac.update(mv[overhead:])
        if not hmac.compare_digest(mv[hdr:overhead], mac.digest()):
            self.counters["auth_bad_mac"] += 1
            return None
        _, ts_ns, nonce = auth_mod._HDR.unpack(head)
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
        return sealed[overhead:]


def install_fast_crc() -> None:
    """Patch the engine's CRC check to the one-C-call form (process-wide)."""
    rev8 = _REV8
    crc = binascii.crc32

    def check(data: Any) -> int:
        # engine only tests crc32(data) != 0; return 0 exactly when it checks.
        return 0 if crc(data.translate(rev8), 0xFFFFFFFF) == 0xFFFFFFFF else 1
    engine_mod.crc32 = check

