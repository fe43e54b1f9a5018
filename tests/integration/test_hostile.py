"""Hostile input on loopback: fuzzed datagrams, REQ floods, code-running
pickles, forged / tampered / replayed authenticated messages. Each test
also checks that the victim still serves an honest peer afterwards."""
from __future__ import annotations

import gc
import os
import pickle
import random
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ttnet import (Authenticator, EngineConfig, MalformedPacket, SafeDecoder, TTNetwork,
                   TTNetworkInterfaceType, TTNetworkInterfaceUDP, TTNetworkMessageUDP,
                   UnsafePayloadError, convert_to_packet, message)
from ttnet.engine import Engine, SendCompleted
from ttnet.wire import (MAX_DATA, MAX_DATAGRAM, SEQ_MODULUS, TTAckPacket, TTDataPacket,
                        TTRequestPacket, encode_ack, encode_data, encode_req, packet_count)

from inbox import Inbox  # tests/integration is on sys.path under pytest

A, B = ("10.0.0.1", 9000), ("10.0.0.2", 9000)
KEY = b"hostile-test-key-0123456789abcdef"


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def frames(mid: int, payload: bytes) -> list[bytes]:
    """The REQ and DATA datagrams of one message, valid CRCs."""
    n = packet_count(len(payload))
    return [encode_req(mid, n)] + [
        encode_data(mid, i % SEQ_MODULUS, payload[i * MAX_DATA:(i + 1) * MAX_DATA])
        for i in range(n)]


def inject(sock: socket.socket, dst, mid: int, payload: bytes) -> None:
    """Deliver a whole message by hand (REQ then every DATA, no waiting for
    ACK_START: the receiver set the message up on the REQ already)."""
    for dg in frames(mid, payload):
        sock.sendto(dg, dst)


# ------------------------------------------------------------------ mutations
def _valid_datagrams(rng: random.Random) -> list[bytes]:
    mid = rng.getrandbits(64)
    return [encode_req(mid, rng.randrange(0, 5000)),
            encode_data(mid, rng.randrange(SEQ_MODULUS), rng.randbytes(rng.randrange(0, 1201))),
            encode_ack(mid, rng.randrange(SEQ_MODULUS))]


def mutate(dg: bytes, rng: random.Random, reseal: bool) -> bytes:
    """Flip, truncate, extend or retype a datagram; optionally fix its CRC
    so the mutation gets past the checksum into the protocol logic."""
    b = bytearray(dg)
    op = rng.randrange(5)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:
        b += rng.randbytes(rng.randrange(1, 64))
    elif op == 3 and b:
        b[0] = rng.randrange(256)
    elif op == 4 and len(b) > 13:
        b[9:13] = rng.randbytes(4)              # sequence / num_packets field
    if reseal and len(b) >= 4:
        from ttnet.wire import crc32
        body = bytes(b[:-4])
        b = bytearray(body + crc32(body).to_bytes(4, "big"))
    return bytes(b)


fuzz_datagram = st.one_of(
    st.binary(max_size=1300),
    st.builds(lambda seed, reseal: mutate(
        random.Random(seed).choice(_valid_datagrams(random.Random(seed))),
        random.Random(seed + 1), reseal), st.integers(0, 2**32), st.booleans()))


@settings(max_examples=1500, deadline=None)
@given(fuzz_datagram)
def test_decoder_returns_a_packet_none_or_malformed_and_nothing_else(dg):
    try:
        pkt = convert_to_packet(dg)
    except MalformedPacket:
        return
    if pkt is not None:
        assert isinstance(pkt, (TTRequestPacket, TTDataPacket, TTAckPacket))
        assert pkt.to_bytes() == dg             # a decoded packet re-encodes exactly


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz_datagram, max_size=40), st.integers(0, 2**32))
def test_engine_survives_mutated_datagrams_mid_conversation(dgs, seed):
    """A sender and a receiver each with a message under way take fuzzed
    datagrams between the real ones: nothing raises, every datagram is
    counted, and the honest message still completes."""
    rng = random.Random(seed)
    a, b = Engine(), Engine()
    a.send_message(B, rng.randbytes(5000), 0.0, ensure=True)
    now = 0.0
    for i, junk in enumerate(dgs):
        now += 0.001
        target, src = (b, A) if i % 2 else (a, B)
        target.datagram_received(junk, src, now)
        for x, y, xa in ((a, b, A), (b, a, B)):
            for dg, _ in x.datagrams_to_send(now):
                y.datagram_received(dg, xa, now)
        a.handle_timers(now)
        b.handle_timers(now)
    for _ in range(2000):
        now += 0.01
        for x, y, xa in ((a, b, A), (b, a, B)):
            for dg, _ in x.datagrams_to_send(now):
                y.datagram_received(dg, xa, now)
        a.handle_timers(now)
        b.handle_timers(now)
        if a.pending_sends() == 0:
            break
    assert a.counters["packets_received"] + b.counters["packets_received"] >= len(dgs)
    # junk may fail the honest message only by hitting its exact id: 2^-64
    assert any(isinstance(e, SendCompleted) for e in a.pop_events())


@pytest.mark.timeout(60)
def test_live_interface_counts_fuzzed_datagrams_and_keeps_delivering(udp_port):
    """3000 fuzzed datagrams at a live interface (paced so none is lost in
    the socket buffer): each is counted in exactly the drop counter the
    decoder predicts, and an honest peer's messages get through after."""
    rng = random.Random(7)
    blast = []
    for i in range(3000):
        if i % 3 == 0:
            blast.append(rng.randbytes(rng.randrange(0, 1300)))
        else:
            blast.append(mutate(rng.choice(_valid_datagrams(rng)), rng, reseal=False))
    want_malformed = want_crc = 0
    for dg in blast:
        if len(dg) > MAX_DATAGRAM:
            want_malformed += 1
            continue
        try:
            pkt = convert_to_packet(dg)
        except MalformedPacket:
            want_malformed += 1
            continue
        want_crc += pkt is None
    inbox = Inbox()
    with TTNetworkInterfaceUDP(port=udp_port(), receiver_function=inbox) as b, \
            TTNetworkInterfaceUDP(port=udp_port()) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for i in range(0, len(blast), 200):
            for dg in blast[i:i + 200]:
                raw.sendto(dg, b.address)
            upto = i + len(blast[i:i + 200])
            assert wait_until(lambda upto=upto: b.counters.get("packets_received", 0) >= upto)
        c = b.counters
        print(f"\nfuzz blast: {len(blast)} datagrams, malformed={c['dropped_malformed']} "
              f"crc={c.get('dropped_crc', 0)} other={len(blast) - want_malformed - want_crc}")
        assert c["packets_received"] == len(blast)
        assert c["dropped_malformed"] == want_malformed
        assert c.get("dropped_crc", 0) == want_crc
        assert want_malformed > 0 and want_crc > 0
        payloads = [os.urandom(n) for n in (10, 5000, 300_000)]
        hs = [a.send(TTNetworkMessageUDP("127.0.0.1", b.port, p), ensure=True) for p in payloads]
        assert all(h.wait(10) for h in hs)
        assert sorted(m.payload for m in inbox.wait_for(3)) == sorted(payloads)


# ---------------------------------------------------------------------- floods
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(60)
def test_req_flood_from_one_address_stays_in_budget_and_others_get_through(udp_port):
    """One address floods 3000 REQs for maximum-size messages and fills the
    huge message it got accepted; a second floods 3000 REQs for one-packet
    messages. The receiver's reservation never exceeds peer_receive_budget
    per flooder, incomplete messages stay <= max_incoming_per_peer each, RSS
    grows by at most the budget plus slack, and another peer's messages
    (one of 1 MB) still arrive."""
    budget = 8 * 1024 * 1024
    cfg = EngineConfig(max_message_size=4 * 1024 * 1024, max_incoming_per_peer=64,
                       peer_receive_budget=budget, total_receive_budget=4 * budget,
                       incoming_idle_timeout_s=30)
    huge_packets = cfg.max_message_size // MAX_DATA
    inbox = Inbox()
    gc.collect()
    with TTNetworkInterfaceUDP(port=udp_port(), receiver_function=inbox, config=cfg) as b, \
            TTNetworkInterfaceUDP(port=udp_port()) as honest, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw2:
        rss0 = _rss()
        peak_reserved = peak_pending = 0

        def sample():
            nonlocal peak_reserved, peak_pending
            peak_reserved = max(peak_reserved, b.engine.reserved_bytes)
            try:
                peak_pending = max(peak_pending, b.engine.pending_receives())
            except RuntimeError:
                pass

        sent = 0
        for mid in range(6000):
            # huge REQs from raw (refused by budget), 1-packet REQs from
            # raw2 (refused by the per-peer count)
            sock, num = (raw, huge_packets) if mid < 3000 else (raw2, 1)
            sock.sendto(encode_req(mid + 1, num), b.address)
            sent += 1
            if sent % 200 == 0:
                wait_until(lambda sent=sent: b.counters.get("req_received", 0) >= sent, 5)
                sample()
        # fill the accepted huge message (id 1): real bytes held in memory
        chunk = os.urandom(MAX_DATA)
        for i in range(huge_packets - 1):
            raw.sendto(encode_data(1, i % SEQ_MODULUS, chunk), b.address)
            if i % 200 == 199:
                wait_until(lambda i=i: b.counters.get("data_received", 0) >= i + 1, 5)
                sample()
        wait_until(lambda: b.counters.get("data_received", 0) >= huge_packets - 1, 5)
        sample()
        rss_flood = _rss()
        payloads = [os.urandom(n) for n in (100, 20_000, 1_000_000)]
        hs = [honest.send(TTNetworkMessageUDP("127.0.0.1", b.port, p), ensure=True,
                          deadline_s=10) for p in payloads]
        oks = [h.wait(15) for h in hs]
        c = b.counters
        print(f"\nREQ flood: peak reserved {peak_reserved / 1e6:.2f} MB (budget {budget / 1e6:.2f}),"
              f" peak pending {peak_pending}, RSS +{(rss_flood - rss0) / 1e6:.1f} MB, "
              f"refused budget={c.get('req_refused_budget', 0)} "
              f"peer_limit={c.get('req_refused_peer_limit', 0)}")
        assert oks == [True, True, True], [h.reason for h in hs]
        assert sorted(m.payload for m in inbox.wait_for(3)) == sorted(payloads)
        assert peak_reserved <= 2 * cfg.peer_receive_budget
        assert peak_pending <= 2 * cfg.max_incoming_per_peer
        per_peer = b.engine.reserved_bytes_by_peer()
        assert max(per_peer.values()) <= cfg.peer_receive_budget
        assert c.get("req_refused_budget", 0) > 0 and c.get("req_refused_peer_limit", 0) > 0, c
        # held: ~4.2 MB of packets; the rest is per-message bookkeeping
        assert rss_flood - rss0 < budget + 16 * 1024 * 1024


# --------------------------------------------------------------------- pickles
class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = f"/tmp/ttnet-hostile-{os.getpid()}"


class MyToken:
    def __init__(self, v):
        self.v = v


def test_code_running_pickle_over_the_network_is_refused_and_nothing_runs(udp_port):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    inbox = Inbox()
    pb = udp_port()
    with TTNetwork("b", TTNetworkInterfaceType.UDP_IP, ip_addr="127.0.0.1", port=pb,
                   receiver_function=inbox) as b, \
            TTNetwork("a", TTNetworkInterfaceType.UDP_IP, ip_addr="127.0.0.1",
                      port=udp_port()) as a:
        a.add_route("b", f"127.0.0.1:{pb}")
        evil = TTNetworkMessageUDP("127.0.0.1", pb, pickle.dumps(RunsCode()))
        assert a.send_message(evil, ensure=True).wait(5)
        assert a.send_message(a.create_message("b", MyToken(3)), ensure=True).wait(5)
        got = inbox.wait_for(2)
        assert len(got) == 2
        with pytest.raises(UnsafePayloadError, match="system"):
            b.decode(got[0])
        with pytest.raises(UnsafePayloadError, match="allow_class"):
            b.decode(got[1])
        assert not os.path.exists(MARKER)
        # the application admits its own token class, and only that
        dec = SafeDecoder(classes=[MyToken])
        assert dec.loads(got[1].payload).v == 3
        with pytest.raises(UnsafePayloadError):
            dec.loads(got[0].payload)
        assert not os.path.exists(MARKER)


# ---------------------------------------------------------------- authentication
@pytest.fixture
def auth_pair(udp_port):
    inbox = Inbox()
    b = TTNetworkInterfaceUDP(port=udp_port(), receiver_function=inbox,
                              authenticator=Authenticator(KEY))
    a = TTNetworkInterfaceUDP(port=udp_port(), authenticator=Authenticator(KEY))
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield a, b, inbox, raw
    raw.close()
    a.cleanup()
    b.cleanup()


def test_forged_messages_without_or_with_garbage_mac_are_refused(auth_pair):
    a, b, inbox, raw = auth_pair
    inject(raw, b.address, 11, pickle.dumps("no mac at all"))
    inject(raw, b.address, 12, b"TTA1" + os.urandom(48) + pickle.dumps("garbage mac"))
    assert wait_until(lambda: b.engine.counters["messages_delivered"] == 2)
    assert a.send(message("honest", "127.0.0.1", b.port), ensure=True).wait(5)
    (got,) = inbox.wait_for(1)
    time.sleep(0.1)
    assert [m.decode() for m in inbox.items] == ["honest"]
    c = b.counters
    assert c["auth_missing"] == 1 and c["auth_bad_mac"] == 1 and c["auth_ok"] == 1


def test_tampered_message_with_valid_frames_is_refused(auth_pair):
    """Seal with the right key, flip one payload byte, and send it with
    correct CRCs: the transport accepts it, authentication does not."""
    a, b, inbox, raw = auth_pair
    sealed = bytearray(Authenticator(KEY).seal(pickle.dumps({"cmd": "set", "v": 1}) + b"x" * 3000))
    sealed[-1000] ^= 0x20                         # a byte in the second DATA packet
    inject(raw, b.address, 21, bytes(sealed))
    assert wait_until(lambda: b.engine.counters["messages_delivered"] == 1)
    time.sleep(0.1)
    assert inbox.items == []
    assert b.counters["auth_bad_mac"] == 1 and b.counters.get("auth_ok", 0) == 0


def test_replayed_message_is_refused_whatever_its_message_id(auth_pair):
    """The same sealed payload delivered twice: under the same message id
    the engine's exactly-once memory re-ACKs it without delivering; under
    a fresh id the engine delivers and the nonce cache refuses it."""
    a, b, inbox, raw = auth_pair
    sealed = Authenticator(KEY).seal(pickle.dumps("pay 10"))
    inject(raw, b.address, 31, sealed)
    assert len(inbox.wait_for(1)) == 1
    inject(raw, b.address, 31, sealed)            # same id: a duplicate
    inject(raw, b.address, 32, sealed)            # new id: a replay
    assert wait_until(lambda: b.counters.get("auth_replay", 0) == 1)
    time.sleep(0.1)
    assert [m.decode() for m in inbox.items] == ["pay 10"]
    c = b.counters
    assert c["req_duplicate_completed"] >= 1 and c["auth_ok"] == 1


def test_correct_key_end_to_end_through_ttnetwork(udp_port):
    inbox = Inbox()
    pb = udp_port()
    with TTNetwork("b", TTNetworkInterfaceType.UDP_IP, port=pb, receiver_function=inbox,
                   auth_key=KEY) as b, \
            TTNetwork("a", TTNetworkInterfaceType.UDP_IP, port=udp_port(),
                      auth_key=KEY) as a, \
            TTNetwork("m", TTNetworkInterfaceType.UDP_IP, port=udp_port(),
                      auth_key=b"wrong-key-wrong-key-wrong-key!!") as mallory:
        for net in (a, mallory):
            net.add_route("b", f"127.0.0.1:{pb}")
            assert net.send_message(net.create_message("b", {"from": net.ensemble_name}),
                                    ensure=True).wait(5)
        inbox.wait_for(1)
        time.sleep(0.1)
        assert [b.decode(m) for m in inbox.items] == [{"from": "a"}]
        assert b.counters["auth_ok"] == 1 and b.counters["auth_bad_mac"] == 1


# ------------------------------------------------------- known wire ambiguity
@pytest.mark.xfail(strict=True, reason=(
    "wire format: ACK_START and ACK(0) are the same datagram; a network "
    "duplicate of ACK_START arriving after DATA 0 was sent is taken as its "
    "acknowledgement. With no delay-variation history yet (this test's first "
    "exchange) the copy cannot be told from a real ACK(0), so a 1-packet send "
    "completes though packet 0 was lost. See test_engine.py for the jittery-path guard."))
def test_duplicated_ack_start_can_fake_ack_of_packet_0():
    a, b = Engine(), Engine()
    a.send_message(B, b"one packet", 0.0, ensure=True)
    (req,) = a.datagrams_to_send(0.0)
    b.datagram_received(req[0], A, 0.001)
    (ack_start,) = b.datagrams_to_send(0.001)
    a.datagram_received(ack_start[0], B, 0.002)
    (data0,) = a.datagrams_to_send(0.002)        # DATA 0 ... lost on the way
    a.datagram_received(ack_start[0], B, 0.003)  # the network's copy of ACK_START
    a.handle_timers(0.003)
    events = a.pop_events()
    # correct behaviour: the send is still pending, packet 0 gets resent
    assert not any(isinstance(e, SendCompleted) for e in events)
