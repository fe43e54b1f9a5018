"""The engine on hostile links, driven over a hand-made link model
(serialisation at a fixed packet rate, fixed one-way delay, and a window in
which every datagram vanishes). Deterministic, no sockets, no sleeping."""
from __future__ import annotations

import heapq
import os
import random

from ttnet.engine import Delivered, Engine, EngineConfig, SendCompleted, SendFailed

A, B = ("10.0.0.1", 9000), ("10.0.0.2", 9000)


def run_link(a: Engine, b: Engine, cut: tuple[float, float], horizon: float,
             one_way: float = 0.01, rate_pps: float = 1000.0,
             on_send=lambda t, src, dg: None, feed=lambda now: None,
             until=lambda ev: True, loss: float = 0.0, seed: int = 1,
             cut_from: tuple = (A, B)):
    """Drive a -> b until ``until(event)`` for one of a's send outcomes.
    ``feed(now)`` may queue more sends on each step. Returns (time, event)."""
    heap: list = []
    rng = random.Random(seed)
    seq = 0
    now = 0.0
    link_free = {A: 0.0, B: 0.0}
    while now < horizon:
        feed(now)
        for src, dst, saddr in ((a, b, A), (b, a, B)):
            for dg, _ in src.datagrams_to_send(now):
                t = max(now, link_free[saddr]) + 1.0 / rate_pps
                link_free[saddr] = t
                on_send(now, saddr, dg)
                if ((cut[0] <= t < cut[1] and saddr in cut_from)
                        or (loss and rng.random() < loss)):
                    continue
                seq += 1
                heapq.heappush(heap, (t + one_way, seq, dst, dg, saddr))
        nts = [x for x in (a.next_timer(), b.next_timer()) if x is not None]
        if heap:
            nts.append(heap[0][0])
        if not nts:
            break
        now = max(now, min(nts + [now + 0.001]))
        while heap and heap[0][0] <= now:
            _, _, dst, dg, saddr = heapq.heappop(heap)
            dst.datagram_received(dg, saddr, now)
        a.handle_timers(now)
        b.handle_timers(now)
        for ev in a.pop_events():
            if isinstance(ev, (SendCompleted, SendFailed)) and until(ev):
                return now, ev
    raise AssertionError(f"no outcome by t={horizon}")


def test_large_transfer_resumes_soon_after_a_5s_outage():
    """A 2 MB message with ~500 packets in flight when the link is cut for
    5 s. Before the fix the RTO expired two packets at a time, each time
    doubling the timer, so the other ~490 stayed 'in flight' against the
    congestion window; nothing was retransmitted for 16 s and by then the
    receiver had dropped the message at its 15 s idle timeout: the send
    failed at its 30 s deadline."""
    a, b = Engine(), Engine()
    a.send_message(B, os.urandom(2_000_000), 0.0, ensure=True, deadline_s=30)
    restore = 5.5
    t, ev = run_link(a, b, cut=(0.5, restore), horizon=40)
    assert isinstance(ev, SendCompleted), ev
    # probing every <= max_rto_s, then ~1200 packets at 1000 packets/s
    assert t - restore < a.config.max_rto_s + 2.0
    assert b.counters["incoming_expired"] == 0
    assert a.pending_sends() == 0 and b.pending_receives() == 0


def test_retransmission_timer_backoff_is_capped_by_max_rto_during_outage():
    """During a 10 s outage the sender keeps probing at least every
    max_rto_s (before: gaps of 64 x RTO, far beyond the receiver's idle
    timeout), so it finds the link again within max_rto_s of its return."""
    cfg = EngineConfig(max_rto_s=1.0)
    a, b = Engine(cfg), Engine(cfg)
    a.send_message(B, os.urandom(300_000), 0.0, ensure=True, deadline_s=60)
    cut = (0.1, 10.1)
    sends: list[float] = []

    def on_send(t, src, dg):
        if src == A and dg[0] == 1 and cut[0] <= t < cut[1]:
            sends.append(t)

    t, ev = run_link(a, b, cut=cut, horizon=60, on_send=on_send)
    assert isinstance(ev, SendCompleted), ev
    gaps = [y - x for x, y in zip(sends, sends[1:])]
    assert sends and max(gaps) <= cfg.max_rto_s + 0.01, max(gaps)
    assert t - cut[1] < cfg.max_rto_s + 1.0



def _payloads(engine: Engine) -> list[bytes]:
    return [ev.payload for ev in engine.pop_events() if isinstance(ev, Delivered)]


def test_send_restarts_its_handshake_after_the_receiver_forgot_the_message():
    """A 20 s outage mid-transfer: the receiver drops the half message at
    its 15 s idle timeout, so every later DATA packet would be dropped as
    unknown. The sender, having heard no ACK for stall_restart_s, sends its
    REQ again and then every packet: delivered exactly once, well inside
    the deadline (before the fix: SendFailed at the deadline)."""
    a, b = Engine(), Engine()
    payload = os.urandom(300_000)
    a.send_message(B, payload, 0.0, ensure=True, deadline_s=60)
    restore = 20.1
    t, ev = run_link(a, b, cut=(0.1, restore), horizon=70, rate_pps=500)
    assert isinstance(ev, SendCompleted), ev
    assert b.counters["incoming_expired"] == 1
    assert a.counters["send_restarted"] == 1
    assert _payloads(b) == [payload]
    assert t - restore < a.config.max_rto_s + 2.0
    assert a.pending_sends() == 0 and b.pending_receives() == 0 and b.reserved_bytes == 0


def test_without_restart_the_forgotten_transfer_fails_at_its_deadline():
    a, b = Engine(EngineConfig(stall_restart_s=None)), Engine()
    a.send_message(B, os.urandom(300_000), 0.0, ensure=True, deadline_s=60)
    t, ev = run_link(a, b, cut=(0.1, 20.1), horizon=70, rate_pps=500)
    assert isinstance(ev, SendFailed) and ev.reason.startswith("deadline"), ev
    assert t >= 60 and b.counters["incoming_expired"] == 1
    assert b.counters["dropped_unknown_message"] > 0 and _payloads(b) == []


def test_restart_after_lost_acks_of_a_completed_message_never_delivers_twice():
    """Only the ACK direction fails, for 20 s, right after the receiver got
    the whole message: it delivered it and remembers it as completed. The
    sender restarts; the receiver answers the repeated REQ and the resent
    DATA from its completed set, and the message is delivered once."""
    a, b = Engine(), Engine()
    payload = os.urandom(30_000)
    a.send_message(B, payload, 0.0, ensure=True, deadline_s=60)
    t, ev = run_link(a, b, cut=(0.03, 20.03), horizon=70, cut_from=(B,))
    assert isinstance(ev, SendCompleted), ev
    assert _payloads(b) == [payload]
    assert a.counters["send_restarted"] == 1
    assert b.counters["req_duplicate_completed"] >= 1
    assert b.counters["data_duplicate_completed"] > 0 and b.counters["messages_delivered"] == 1
    assert 20.03 < t < 25


def test_restart_is_only_for_a_silent_receiver():
    """A long transfer with ACKs flowing never restarts, however long it takes."""
    a, b = Engine(), Engine()
    payload = os.urandom(3_000_000)             # ~2500 packets at 100/s: 25 s
    a.send_message(B, payload, 0.0, ensure=True, deadline_s=60)
    t, ev = run_link(a, b, cut=(0, 0), horizon=70, rate_pps=100)
    assert isinstance(ev, SendCompleted) and t > 20
    assert a.counters["send_restarted"] == 0 and _payloads(b) == [payload]
