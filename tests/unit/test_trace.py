"""The engine's tracer hook and the public queries drivers use instead of its
internals."""
import math
import os
import random

import ttnet.engine as engine_mod
from ttnet import TraceEvent, TraceKind
from ttnet.engine import Engine, EngineConfig, SendCompleted
from ttnet.wire import ACK_KIND, DATA_KIND, REQ_KIND, encode_ack, encode_data, encode_req

from test_engine import A, B, delivered, pump


def traced_pair(**cfg):
    log_a, log_b = [], []
    a = Engine(EngineConfig(tracer=log_a.append, **cfg))
    b = Engine(EngineConfig(tracer=log_b.append, **cfg))
    return a, b, log_a, log_b


def kinds(log):
    return [e.kind for e in log]


def test_tracer_sees_datagrams_and_message_steps_in_order():
    a, b, log_a, log_b = traced_pair()
    payload = os.urandom(3000)
    a.send_message(B, payload, 0.0, ensure=True)
    pump(a, b, 0.0)
    assert [g.payload for g in delivered(b)] == [payload]
    assert all(isinstance(e, TraceEvent) for e in log_a + log_b)
    ka = kinds(log_a)
    assert ka[0] == TraceKind.SEND_QUEUED and log_a[0].number == 3 and log_a[0].size == 3000
    assert ka[1] == TraceKind.DATAGRAM_SENT and log_a[1].packet_type == REQ_KIND
    assert TraceKind.SEND_STARTED in ka and ka[-1] == TraceKind.SEND_COMPLETED
    assert log_a[-1].size == 3000
    sent_data = [e for e in log_a if e.kind == TraceKind.DATAGRAM_SENT
                 and e.packet_type == DATA_KIND]
    assert [e.number for e in sent_data] == [0, 1, 2]
    assert [e.size for e in sent_data] == [1217, 1217, 17 + 600]
    kb = kinds(log_b)
    assert kb[:3] == [TraceKind.DATAGRAM_RECEIVED, TraceKind.RECEIVE_STARTED,
                      TraceKind.DATAGRAM_SENT]
    assert log_b[2].packet_type == ACK_KIND and log_b[2].number == 0
    assert kb.count(TraceKind.RECEIVE_DELIVERED) == 1
    # every datagram out is one SENT or RETRANSMITTED event, and the
    # counters agree with the trace
    for eng, log in ((a, log_a), (b, log_b)):
        out = [e for e in log if e.kind in (TraceKind.DATAGRAM_SENT,
                                            TraceKind.DATAGRAM_RETRANSMITTED)]
        c = eng.counters
        assert len(out) == c["req_sent"] + c["data_sent"] + c["acks_sent"]
        assert kinds(log).count(TraceKind.DATAGRAM_RECEIVED) == c["packets_received"]


def test_tracer_reports_retransmissions_and_drops_with_reasons():
    a, b, log_a, log_b = traced_pair()
    dropped = {"n": 0}

    def drop_first_data(dg):
        if dg[0] == DATA_KIND and dropped["n"] == 0:
            dropped["n"] += 1
            return True
        return False
    a.send_message(B, os.urandom(5000), 0.0, ensure=True)
    pump(a, b, 0.0, drop=drop_first_data)
    resent = [e for e in log_a if e.kind == TraceKind.DATAGRAM_RETRANSMITTED]
    assert resent and all(e.packet_type == DATA_KIND for e in resent)
    assert len(resent) == a.counters["data_retransmitted"]

    b.datagram_received(b"\x07" * 20, A, 9.0)                    # malformed
    bad = bytearray(encode_req(99, 1))
    bad[3] ^= 1
    b.datagram_received(bytes(bad), A, 9.0)                      # CRC
    b.datagram_received(encode_data(12345, 0, b"x"), A, 9.0)     # unknown message
    reasons = [e.reason for e in log_b if e.kind == TraceKind.DATAGRAM_DROPPED]
    assert reasons[-3:] == ["dropped_malformed", "dropped_crc", "dropped_unknown_message"]
    received = [e for e in log_b if e.kind == TraceKind.DATAGRAM_RECEIVED][-3:]
    assert [e.packet_type for e in received] == [None, None, DATA_KIND]


def test_tracer_reports_failures_and_abandoned_receives():
    a, b, log_a, log_b = traced_pair(incoming_idle_timeout_s=1.0)
    a.send_message(B, b"x" * 10, 0.0, ensure=True, deadline_s=0.5)
    a.handle_timers(1.0)
    fail = [e for e in log_a if e.kind == TraceKind.SEND_FAILED]
    assert len(fail) == 1 and fail[0].reason.startswith("deadline") and fail[0].time == 1.0
    b.datagram_received(encode_req(5, 3), A, 0.0)
    b.handle_timers(2.0)
    gone = [e for e in log_b if e.kind == TraceKind.RECEIVE_ABANDONED]
    assert [(e.message_id, e.reason) for e in gone] == [(5, "incoming_expired")]


def test_broken_tracer_is_counted_not_raised():
    def tracer(ev):
        raise RuntimeError("observer bug")
    a, b = Engine(EngineConfig(tracer=tracer)), Engine()
    a.send_message(B, b"hello", 0.0, ensure=True)
    pump(a, b, 0.0)
    assert [g.payload for g in delivered(b)] == [b"hello"]
    assert a.counters["tracer_errors"] > 0


def test_no_tracer_builds_no_trace_events(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a trace event was built without a tracer")
    monkeypatch.setattr(engine_mod, "TraceEvent", boom)
    a, b = Engine(), Engine()
    rng = random.Random(3)
    a.send_message(B, os.urandom(4000), 0.0, ensure=True)
    pump(a, b, 0.0, drop=lambda dg: dg[0] == DATA_KIND and rng.random() < 0.3)
    b.datagram_received(b"garbage" * 3, A, 50.0)
    assert len(delivered(b)) == 1
    a.send_message(B, b"x", 60.0, ensure=True, deadline_s=0.1)
    a.handle_timers(61.0)
    a.cancel_all("closed")


def test_send_events_carry_the_payload_size():
    a, b = Engine(), Engine()
    a.send_message(B, b"x" * 2500, 0.0, ensure=True)
    pump(a, b, 0.0)
    (ev,) = a.pop_events()
    assert isinstance(ev, SendCompleted) and ev.size == 2500


# ------------------------------------------------------------ public queries
def test_windows_are_found_through_public_queries():
    a, b = Engine(), Engine()
    a.send_message(B, b"y" * 3000, 0.0, ensure=True)
    (req, _), = a.datagrams_to_send(0.0)
    mid = int.from_bytes(req[1:9], "little")
    assert a.sending_window(B, mid).total == 3 and a.sending_window(A, mid) is None
    b.datagram_received(req, A, 0.0)
    assert b.receiving_window(A, mid).total == 3 and b.receiving_window(B, mid) is None
    assert a.receiving_window(B, mid) is None and b.sending_window(A, mid) is None


def test_send_ack_start_queues_an_ack_of_zero():
    e = Engine()
    e.send_ack_start(B, 77, 0.0)
    assert e.datagrams_to_send(0.0) == [(encode_ack(77, 0), B)]
    assert e.counters["acks_sent"] == 1


def test_cancel_all_reports_each_send_at_the_given_time():
    log = []
    e = Engine(EngineConfig(tracer=log.append))
    e.send_message(B, b"x", 0.0)
    e.send_message(B, b"y", 0.0)
    e.cancel_all("closed", 4.0)
    e.send_message(B, b"z", 5.0)
    e.cancel_all("closed")                       # time unknown: NaN
    fails = [ev for ev in log if ev.kind == TraceKind.SEND_FAILED]
    assert [ev.time for ev in fails[:2]] == [4.0, 4.0] and math.isnan(fails[2].time)
    assert {ev.reason for ev in fails} == {"closed"}


def test_reserved_bytes_by_peer():
    b = Engine()
    b.datagram_received(encode_req(1, 3), A, 0.0)
    b.datagram_received(encode_req(2, 1), B, 0.0)
    assert b.reserved_bytes_by_peer() == {A: 3 * 1200, B: 1200}
    assert b.reserved_bytes == 4 * 1200
