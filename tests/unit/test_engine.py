"""The sans-I/O engine, driven by hand: exact control over every datagram."""
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from ttnet.engine import (Delivered, Engine, EngineConfig, MessageTooLarge,
                          SendCompleted, SendFailed)
from ttnet.wire import convert_to_packet, encode_ack, encode_data, encode_req, TTAckPacket

A, B = ("10.0.0.1", 9000), ("10.0.0.2", 9000)


def pump(a: Engine, b: Engine, now: float, drop=lambda dg: False, rounds=10000):
    """Exchange datagrams until both engines are quiet. Returns time."""
    for _ in range(rounds):
        moved = False
        for src, dst, src_addr in ((a, b, A), (b, a, B)):
            for dg, _addr in src.datagrams_to_send(now):
                moved = True
                if not drop(dg):
                    dst.datagram_received(dg, src_addr, now)
        if not moved:
            nt = [t for t in (a.next_timer(), b.next_timer()) if t is not None]
            if not nt:
                return now
            now = max(now, min(nt))
            a.handle_timers(now)
            b.handle_timers(now)
            if a.pending_sends() == 0 and b.pending_receives() == 0 and not moved:
                return now
        now += 0.0001
    raise AssertionError("did not settle")


def delivered(engine):
    return [e for e in engine.pop_events() if isinstance(e, Delivered)]


def test_message_delivered_exactly_once_and_sender_completes():
    a, b = Engine(), Engine()
    payload = os.urandom(5000)
    h = a.send_message(B, payload, 0.0, ensure=True)
    pump(a, b, 0.0)
    got = delivered(b)
    assert [g.payload for g in got] == [payload] and got[0].address == A
    assert [type(e) for e in a.pop_events()] == [SendCompleted]
    assert a.pending_sends() == 0 and b.pending_receives() == 0 and b.reserved_bytes == 0
    assert h == 1


@pytest.mark.parametrize("size", [0, 1, 1199, 1200, 1201, 2400, 3 * 10**6])
def test_sizes_including_zero_and_wraparound(size):
    a, b = Engine(), Engine()
    payload = os.urandom(size)
    a.send_message(B, payload, 0.0, ensure=True)
    pump(a, b, 0.0)
    assert [g.payload for g in delivered(b)] == [payload]


def test_lossy_link_still_delivers_exactly_once_with_retransmissions():
    rng = random.Random(7)
    a, b = Engine(rng=random.Random(1)), Engine()
    payloads = [os.urandom(rng.randrange(0, 40000)) for _ in range(30)]
    for p in payloads:
        a.send_message(B, p, 0.0, ensure=True)
    pump(a, b, 0.0, drop=lambda dg: rng.random() < 0.3, rounds=200000)
    got = sorted(g.payload for g in delivered(b))
    assert got == sorted(payloads)
    assert all(isinstance(e, SendCompleted) for e in a.pop_events())
    assert a.counters["data_retransmitted"] > 0 and a.counters["req_retransmitted"] > 0


def test_lost_req_is_resent_only_with_ensure():
    a, b = Engine(), Engine()
    first = {"dropped": False}

    def drop_first_req(dg):
        if dg[0] == 0 and not first["dropped"]:
            first["dropped"] = True
            return True
        return False

    a.send_message(B, b"x" * 10, 0.0, ensure=True)
    pump(a, b, 0.0, drop=drop_first_req)
    assert len(delivered(b)) == 1 and a.counters["req_retransmitted"] == 1

    a2, b2 = Engine(), Engine()
    first["dropped"] = False
    a2.send_message(B, b"x" * 10, 0.0, ensure=False)
    pump(a2, b2, 0.0, drop=drop_first_req)
    assert delivered(b2) == []
    (ev,) = a2.pop_events()
    assert isinstance(ev, SendFailed) and "no ACK_START" in ev.reason
    assert a2.counters["req_retransmitted"] == 0


def test_lost_ack_start_gets_ack_start_again_without_double_delivery():
    a, b = Engine(), Engine()
    dropped = []

    def drop_first_ack_start(dg):
        if dg[0] == 2 and not dropped:
            dropped.append(dg)
            return True
        return False

    a.send_message(B, b"y" * 3000, 0.0, ensure=True)
    pump(a, b, 0.0, drop=drop_first_ack_start)
    assert len(delivered(b)) == 1
    assert b.counters["req_received"] == 2


def test_duplicate_req_after_completion_is_reacked_not_redelivered():
    b = Engine()
    b.datagram_received(encode_req(42, 0), A, 0.0)           # empty message
    b.datagram_received(encode_req(42, 0), A, 0.5)           # late duplicate
    assert len(delivered(b)) == 1
    acks = [convert_to_packet(d) for d, _ in b.datagrams_to_send(1.0)]
    assert acks == [TTAckPacket(42, 0), TTAckPacket(42, 0)]
    assert b.counters["req_duplicate_completed"] == 1


def test_late_data_of_completed_message_is_reacked_not_redelivered():
    b = Engine()
    b.datagram_received(encode_req(5, 1), A, 0.0)
    b.datagram_received(encode_data(5, 0, b"abc"), A, 0.0)
    b.datagram_received(encode_data(5, 0, b"abc"), A, 0.1)
    assert len(delivered(b)) == 1
    assert b.counters["data_duplicate_completed"] == 1
    assert len(b.datagrams_to_send(0.2)) == 3


def test_send_fails_at_deadline_when_peer_is_silent():
    a = Engine(EngineConfig(send_deadline_s=2.0))
    a.send_message(B, b"z" * 100, 0.0, ensure=True)
    now = 0.0
    while a.next_timer() is not None and now < 10:
        now = a.next_timer()
        a.handle_timers(now)
        a.datagrams_to_send(now)
    (ev,) = a.pop_events()
    assert isinstance(ev, SendFailed) and ev.reason.startswith("deadline")
    assert 2.0 <= now < 2.1
    assert a.pending_sends() == 0
    # REQ backoff: 0.1, 0.2, 0.4, 0.8 ... never more than a handful in 2 s
    assert 3 <= a.counters["req_sent"] <= 6


def test_incomplete_incoming_is_dropped_after_idle_timeout():
    b = Engine(EngineConfig(incoming_idle_timeout_s=3.0))
    b.datagram_received(encode_req(9, 10), A, 0.0)
    b.datagram_received(encode_data(9, 0, b"q" * 1200), A, 1.0)
    assert b.reserved_bytes == 12000
    b.handle_timers(3.5)
    assert b.pending_receives() == 1
    b.handle_timers(4.0)
    assert b.pending_receives() == 0 and b.reserved_bytes == 0
    assert b.counters["incoming_expired"] == 1


def test_oversized_and_excess_reqs_are_refused_and_counted():
    cfg = EngineConfig(max_message_size=10_000, max_incoming_per_peer=2,
                       peer_receive_budget=10**9, total_receive_budget=10**9)
    b = Engine(cfg)
    b.datagram_received(encode_req(1, 100), A, 0.0)                 # 120 kB > 10 kB
    for mid in (2, 3, 4):
        b.datagram_received(encode_req(mid, 2), A, 0.0)
    assert b.counters["req_refused_too_large"] == 1
    assert b.counters["req_refused_peer_limit"] == 1
    assert b.pending_receives() == 2
    b.datagram_received(encode_req(5, 2), B, 0.0)                   # other peer still OK
    assert b.pending_receives() == 3


def test_receive_budget_bounds_reserved_memory():
    b = Engine(EngineConfig(peer_receive_budget=100_000, total_receive_budget=150_000))
    for mid in range(100):
        b.datagram_received(encode_req(mid, 40), A, 0.0)            # 48 kB each
    assert b.reserved_bytes <= 100_000
    assert b.counters["req_refused_budget"] == 98


def test_sender_refuses_message_over_limit():
    a = Engine(EngineConfig(max_message_size=100))
    with pytest.raises(MessageTooLarge, match="max_message_size"):
        a.send_message(B, b"x" * 101, 0.0)


def test_echoed_ack_start_is_not_taken_for_packet_zero():
    """A retransmitted REQ makes the receiver answer ACK(0) twice; the second
    must not acknowledge DATA packet 0 if that packet was lost."""
    a, b = Engine(), Engine()
    a.send_message(B, os.urandom(3000), 0.0, ensure=True)
    req1 = a.datagrams_to_send(0.0)
    a.handle_timers(0.11)                                   # REQ retransmitted
    req2 = a.datagrams_to_send(0.11)
    b.datagram_received(req1[0][0], A, 0.0)
    ack_start = b.datagrams_to_send(0.0)
    b.datagram_received(req2[0][0], A, 0.12)                # no DATA yet: re-ACK
    echo = b.datagrams_to_send(0.12)
    a.datagram_received(ack_start[0][0], B, 0.13)
    data = a.datagrams_to_send(0.13)                        # packets 0..2
    assert len(data) == 3
    a.datagram_received(echo[0][0], B, 0.14)                # echo arrives
    assert a.counters["ack_start_echo_ignored"] == 1
    for dg, _ in data[1:]:                                  # packet 0 lost
        b.datagram_received(dg, A, 0.15)
    for dg, _ in b.datagrams_to_send(0.15):
        a.datagram_received(dg, B, 0.16)
    pump(a, b, 0.16)
    assert len(delivered(b)) == 1


def _one_packet_exchange(a, b, t0, rtt):
    """One one-packet ensure=True message from a to b, every one-way trip
    taking rtt/2; returns a's events."""
    a.send_message(B, b"one packet", t0, ensure=True)
    (req,) = a.datagrams_to_send(t0)
    b.datagram_received(req[0], A, t0 + rtt / 2)
    (ack_start,) = b.datagrams_to_send(t0 + rtt / 2)
    a.datagram_received(ack_start[0], B, t0 + rtt)
    (data0,) = a.datagrams_to_send(t0 + rtt)
    b.datagram_received(data0[0], A, t0 + 1.5 * rtt)
    (ack0,) = b.datagrams_to_send(t0 + 1.5 * rtt)
    a.datagram_received(ack0[0], B, t0 + 2 * rtt)
    a.handle_timers(t0 + 2 * rtt)
    return a.pop_events()


def test_real_ack_of_packet_zero_on_a_loopback_like_path_is_not_taken_for_an_echo():
    """Loopback between busy threads: the round trips vary about as much as
    they last (mdev ~ srtt), but no datagram is ever duplicated. An ACK(0)
    arriving one round trip after DATA 0 is the real one: the send
    completes at once, nothing is retransmitted (each time this was taken
    for an echo it cost a DATA + ACK more per message)."""
    a, b = Engine(), Engine()
    rtt = a._peer(B).rtt
    for sample in (0.00005, 0.0003, 0.00006, 0.00028, 0.00007, 0.00025):
        rtt.sample(sample)
    assert 4 * rtt.mdev > 0.00015                      # the old window covered a round trip
    for i in range(20):
        events = _one_packet_exchange(a, b, i * 0.01, 0.00015)
        assert [type(e) for e in events] == [SendCompleted]
    assert a.counters["data_retransmitted"] == 0
    assert a.counters["ack_start_echo_ignored"] == 0
    assert b.counters["data_duplicate_completed"] == 0
    assert len(delivered(b)) == 20


def test_once_the_path_duplicated_a_datagram_the_full_echo_window_applies():
    """Same path, but an ACK_START copy arrived before DATA 0 was sent: the
    path duplicates, so an ACK(0) within 4 x mdev of ACK_START is again
    taken for an echo (and packet 0 probed) -- the guard of the jittery
    path test is back in force."""
    a, b = Engine(), Engine()
    rtt = a._peer(B).rtt
    for sample in (0.00005, 0.0003, 0.00006, 0.00028, 0.00007, 0.00025):
        rtt.sample(sample)
    a.send_message(B, b"one packet", 0.0, ensure=True)
    (req,) = a.datagrams_to_send(0.0)
    b.datagram_received(req[0], A, 0.0001)
    (ack_start,) = b.datagrams_to_send(0.0001)
    a.datagram_received(ack_start[0], B, 0.0002)
    a.datagram_received(ack_start[0], B, 0.0002)             # copy, DATA 0 not out yet
    assert a._peer(B).duplicates_seen
    (data0,) = a.datagrams_to_send(0.0002)                   # DATA 0 ... lost
    a.datagram_received(ack_start[0], B, 0.00035)            # a later copy
    assert not [e for e in a.pop_events() if isinstance(e, SendCompleted)]
    pump(a, b, 0.00035)
    assert len(delivered(b)) == 1
    assert [type(e) for e in a.pop_events()] == [SendCompleted]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=1300), max_size=30))
def test_random_datagrams_never_raise(datagrams):
    e = Engine()
    e.send_message(B, b"x" * 5000, 0.0, ensure=True)
    for i, dg in enumerate(datagrams):
        e.datagram_received(dg, B, i * 0.01)
        e.handle_timers(i * 0.01)
        e.datagrams_to_send(i * 0.01)
    assert e.counters["packets_received"] == len(datagrams)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=1200),
       st.sampled_from([0, 1, 2]))
def test_valid_crc_garbage_never_raises(mid, seq, data, kind):
    e = Engine()
    e.datagram_received(encode_req(1, 5), A, 0.0)
    dg = {0: lambda: encode_req(mid, seq), 1: lambda: encode_data(mid, seq, data),
          2: lambda: encode_ack(mid, seq)}[kind]()
    e.datagram_received(dg, A, 0.0)
    e.handle_timers(1.0)


def test_network_duplicate_of_ack_start_is_not_taken_for_packet_zero_on_a_jittery_path():
    """Once the path's delay variation is known, an ACK(0) arriving within it
    of ACK_START is treated as an echo: a lost DATA 0 is retransmitted and
    the send completes only when the receiver really has the message."""
    a, b = Engine(), Engine()
    rtt = a._peer(B).rtt
    for sample in (0.010, 0.014, 0.008, 0.013, 0.009, 0.012):   # +/- 3 ms jitter
        rtt.sample(sample)
    assert rtt.mdev > 0.001
    a.send_message(B, b"one packet", 0.0, ensure=True)
    (req,) = a.datagrams_to_send(0.0)
    b.datagram_received(req[0], A, 0.005)
    (ack_start,) = b.datagrams_to_send(0.005)
    a.datagram_received(ack_start[0], B, 0.010)
    (data0,) = a.datagrams_to_send(0.010)                    # lost on the way
    a.datagram_received(ack_start[0], B, 0.013)              # the network's copy
    assert a.counters["ack_start_echo_ignored"] == 1
    assert not [e for e in a.pop_events() if isinstance(e, SendCompleted)]
    pump(a, b, 0.013)                                        # RTO resends DATA 0
    assert len(delivered(b)) == 1
    assert [type(e) for e in a.pop_events()] == [SendCompleted]
    assert a.counters["data_retransmitted"] >= 1
