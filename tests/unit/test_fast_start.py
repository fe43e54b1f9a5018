"""Fast start (EngineConfig.fast_start): ttnet's one wire extension.

What is pinned: a one-packet ensure=True message travels as one FAST
datagram and is delivered on its arrival (one one-way trip, not three);
it is off by default, limited to the configured peers, and never used for
larger or best-effort messages (so TTPython peers see the exact wire
format); exactly-once delivery and completion hold under loss, duplication
and reordering; hostile FAST packets are dropped and counted."""
import heapq
import os
import random

import pytest

from ttnet.engine import Delivered, Engine, EngineConfig, SendCompleted, SendFailed
from ttnet.wire import (FAST_KIND, MalformedPacket, convert_to_packet, encode_ack, encode_fast,
                        encode_req, parse_datagram)

A, B = ("10.0.0.1", 9000), ("10.0.0.2", 9000)
FAST = EngineConfig(fast_start=True)


def kinds(datagrams):
    return [dg[0] for dg, _ in datagrams]


# --- wire ---------------------------------------------------------------------

def test_fast_packet_layout_is_data_with_type_3():
    dg = encode_fast(0x0102030405060708, b"hello")
    assert dg[0] == FAST_KIND == 3 and len(dg) == 17 + 5
    assert dg[1:9] == (0x0102030405060708).to_bytes(8, "little")
    assert dg[9:13] == b"\0\0\0\0" and dg[13:18] == b"hello"
    assert parse_datagram(dg) == (3, 0x0102030405060708, 0, b"hello", 0)
    assert parse_datagram(dg[:-1] + bytes([dg[-1] ^ 1])) is None      # CRC still checked
    with pytest.raises(ValueError, match="at most 1200"):
        encode_fast(1, b"x" * 1201)


def test_ttpython_packet_reader_refuses_fast_clearly():
    with pytest.raises(MalformedPacket, match="fast-start extension"):
        convert_to_packet(encode_fast(1, b"x"))


# --- the exchange -------------------------------------------------------------

def test_one_packet_message_is_one_datagram_delivered_on_arrival():
    a, b = Engine(FAST), Engine()          # receiving FAST needs no setting
    a.send_message(B, b"x" * 64, 0.0, ensure=True)
    first = a.datagrams_to_send(0.0)
    assert kinds(first) == [FAST_KIND]
    b.datagram_received(first[0][0], A, 0.001)
    got = [e for e in b.pop_events() if isinstance(e, Delivered)]
    assert [e.payload for e in got] == [b"x" * 64]          # after one one-way trip
    ack = b.datagrams_to_send(0.001)
    assert [dg for dg, _ in ack] == [encode_ack(parse_datagram(first[0][0])[1], 0)]
    a.datagram_received(ack[0][0], B, 0.002)
    assert [type(e) for e in a.pop_events()] == [SendCompleted]
    assert a.pending_sends() == 0 and a.counters["req_sent"] == 0
    assert a.counters["fast_starts"] == 1 and b.counters["fast_received"] == 1
    assert a.rtt_of(B).srtt == pytest.approx(0.002)


@pytest.mark.parametrize("config,size,ensure", [
    (EngineConfig(), 64, True),                          # off by default
    (FAST, 1201, True),                                  # two packets: handshake
    (FAST, 0, True),                                     # empty: REQ with 0 packets
    (FAST, 64, False),                                   # best effort: REQ once, as before
    (EngineConfig(fast_start=[("10.0.0.9", 9000)]), 64, True),   # another peer only
])
def test_everything_else_keeps_the_ttpython_handshake(config, size, ensure):
    a = Engine(config)
    a.send_message(B, os.urandom(size), 0.0, ensure=ensure)
    sent = a.datagrams_to_send(0.0)
    assert kinds(sent) == [0] and a.counters["fast_starts"] == 0


def test_fast_start_to_the_listed_peers_only():
    a = Engine(EngineConfig(fast_start=[list(B)]))           # as read from JSON
    a.send_message(B, b"1", 0.0, ensure=True)
    a.send_message(A, b"2", 0.0, ensure=True)
    assert sorted(kinds(a.datagrams_to_send(0.0))) == [0, FAST_KIND]


@pytest.mark.parametrize("bad", ["yes", 5, [{"ip": "10.0.0.1"}], [["10.0.0.1", [9000]]]])
def test_bad_fast_start_setting_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="fast_start must be"):
        EngineConfig(fast_start=bad)


def test_lost_fast_is_resent_and_lost_ack_is_reacked_never_redelivered():
    a, b = Engine(FAST), Engine()
    a.send_message(B, b"m", 0.0, ensure=True)
    a.datagrams_to_send(0.0)                              # lost
    t = a.next_timer()
    a.handle_timers(t)
    again = a.datagrams_to_send(t)
    assert kinds(again) == [FAST_KIND] and a.counters["data_retransmitted"] == 1
    b.datagram_received(again[0][0], A, t)
    b.datagrams_to_send(t)                                # its ACK is lost
    t2 = a.next_timer()
    a.handle_timers(t2)
    third = a.datagrams_to_send(t2)
    b.datagram_received(third[0][0], A, t2)
    assert b.counters["fast_duplicate_completed"] == 1
    ack = b.datagrams_to_send(t2)
    a.datagram_received(ack[0][0], B, t2 + 0.001)
    assert [type(e) for e in a.pop_events()] == [SendCompleted]
    assert [e.payload for e in b.pop_events() if isinstance(e, Delivered)] == [b"m"]


def test_silent_peer_fails_at_the_deadline_without_a_restart():
    a = Engine(EngineConfig(fast_start=True, stall_restart_s=0.5))
    a.send_message(B, b"m", 0.0, ensure=True, deadline_s=3.0)
    t = 0.0
    while a.pending_sends() and t < 10:
        a.datagrams_to_send(t)
        t = a.next_timer()
        a.handle_timers(t)
    events = a.pop_events()
    assert [type(e) for e in events] == [SendFailed] and t == pytest.approx(3.0)
    assert a.counters["req_sent"] == 0 and a.counters["send_restarted"] == 0


def test_hostile_fast_packets_are_dropped_and_counted():
    b = Engine()
    bad_seq = bytearray(encode_fast(7, b"x"))
    bad_seq[9] = 1
    from ttnet.wire import _seal                          # re-seal with a valid CRC
    b.datagram_received(_seal(bytes(bad_seq[:-4])), A, 0.0)
    assert b.counters["dropped_bad_fast"] == 1
    b.datagram_received(encode_req(9, 3), A, 0.0)         # a REQ-started message...
    b.datagram_received(encode_fast(9, b"y"), A, 0.0)     # ...and a FAST with its id
    assert b.counters["fast_conflicts_incoming"] == 1
    tiny = Engine(EngineConfig(max_message_size=10))
    tiny.datagram_received(encode_fast(1, b"z" * 11), A, 0.0)
    assert tiny.counters["fast_refused_too_large"] == 1
    assert not [e for e in b.pop_events() + tiny.pop_events() if isinstance(e, Delivered)]


# --- a hostile network: loss, duplication, reordering --------------------------

def run_network(a, b, sends, *, loss, dup, max_delay, seed, horizon=60.0):
    """Deliver datagrams between a and b through a network that drops,
    duplicates and delays each one by 0.5 ms..max_delay (so it reorders).
    Returns when every send ended or at ``horizon`` simulated seconds."""
    rng = random.Random(seed)
    queue: list = []
    n = 0
    now = 0.0
    for i, payload in enumerate(sends):
        a.send_message(B, payload, i * 0.001, ensure=True)
    peers = {id(a): (b, A), id(b): (a, B)}

    def flush(src, t):
        nonlocal n
        dst, src_addr = peers[id(src)]
        for dg, _ in src.datagrams_to_send(t):
            if rng.random() < loss:
                continue
            for _ in range(2 if rng.random() < dup else 1):
                n += 1
                heapq.heappush(queue, (t + rng.uniform(0.0005, max_delay), n, dst, dg, src_addr))

    while now < horizon and (a.pending_sends() or queue):
        flush(a, now)
        flush(b, now)
        due = [t for t in (a.next_timer(), b.next_timer()) if t is not None]
        if queue:
            due.append(queue[0][0])
        if not due:
            break
        now = max(now, min(due))
        while queue and queue[0][0] <= now:
            _, _, dst, dg, src_addr = heapq.heappop(queue)
            dst.datagram_received(dg, src_addr, now)
        a.handle_timers(now)
        b.handle_timers(now)
    return now


@pytest.mark.parametrize("seed", range(6))
def test_exactly_once_under_loss_duplication_and_reordering(seed):
    a, b = Engine(FAST, random.Random(seed)), Engine(rng=random.Random(100 + seed))
    payloads = [b"%d:" % i + os.urandom(random.Random(seed * 1000 + i).randrange(0, 1150))
                for i in range(200)]
    run_network(a, b, payloads, loss=0.2, dup=0.2, max_delay=0.02, seed=seed)
    events = a.pop_events()
    assert len(events) == 200 and all(isinstance(e, SendCompleted) for e in events)
    got = [e.payload for e in b.pop_events() if isinstance(e, Delivered)]
    assert sorted(got) == sorted(payloads)                # every one, exactly once
    assert a.counters["fast_sent"] > 200                  # losses were repaired by resends
    assert b.counters["fast_duplicate_completed"] > 0     # and copies were not redelivered
    assert a.counters["req_sent"] == 0


def test_mixed_sizes_under_loss_use_fast_start_only_where_they_fit():
    a, b = Engine(FAST, random.Random(3)), Engine(rng=random.Random(4))
    payloads = [os.urandom(s) for s in (10, 1200, 1201, 5000, 0, 700) * 10]
    run_network(a, b, payloads, loss=0.1, dup=0.1, max_delay=0.01, seed=9)
    assert all(isinstance(e, SendCompleted) for e in a.pop_events())
    got = [e.payload for e in b.pop_events() if isinstance(e, Delivered)]
    assert sorted(got) == sorted(payloads)
    assert a.counters["fast_starts"] == 30                # the 10-, 1200- and 700-byte ones


# --- the simulator runs the same engine -----------------------------------------

@pytest.mark.parametrize("fast,one_way_trips", [(False, 3), (True, 1)])
def test_simulated_latency_is_one_one_way_trip_with_fast_start(fast, one_way_trips):
    import simpy
    from ttnet.sim import LinkParams, SimNetwork, TTNetworkInterfaceSim, TTNetworkMessageSim
    env = simpy.Environment()
    net = SimNetwork(env, LinkParams(delay_s=0.010))
    arrived = []
    TTNetworkInterfaceSim(env, net, "b", receiver_function=lambda m: arrived.append(env.now))
    a = TTNetworkInterfaceSim(env, net, "a", config=EngineConfig(fast_start=fast))
    h = a.send(TTNetworkMessageSim("b", b"x" * 64), ensure=True)
    env.run(until=1)
    assert h.ok and arrived == [pytest.approx(one_way_trips * 0.010, abs=1e-3)]
