"""Two real UDP interfaces on loopback."""
import os
import socket
import threading
import time

import pytest

from ttnet import TTNetworkInterfaceUDP, TTNetworkMessageUDP, TTRequestPacket, message
from ttnet.wire import encode_data, encode_req

from inbox import Inbox


@pytest.fixture
def pair(udp_port):
    inbox = Inbox()
    pb, pa = udp_port(), udp_port()
    b = TTNetworkInterfaceUDP(port=pb, receiver_function=inbox)
    a = TTNetworkInterfaceUDP(port=pa)
    yield a, b, inbox
    a.cleanup()
    b.cleanup()


def test_object_round_trip_with_restricted_decode(pair):
    a, b, inbox = pair
    obj = {"token": [1, 2.5, "x", None], "t": (3, frozenset({4}))}
    h = a.send(message(obj, "127.0.0.1", b.port), ensure=True)
    assert h.wait(5) and h.ok
    (got,) = inbox.wait_for(1)
    assert got.decode() == obj and got.address == ("127.0.0.1", a.port)


@pytest.mark.parametrize("size", [0, 1, 1199, 1200, 1201, 2400, 10**6, 10**7])
def test_sizes_arrive_intact(pair, size):
    a, b, inbox = pair
    payload = os.urandom(size)
    h = a.send(TTNetworkMessageUDP("127.0.0.1", b.port, payload), ensure=True)
    assert h.wait(30), h.reason
    (got,) = inbox.wait_for(1)
    assert got.payload == payload


def test_many_parallel_messages_exactly_once(pair):
    a, b, inbox = pair
    payloads = {i: i.to_bytes(4, "big") + os.urandom(i * 97) for i in range(200)}
    handles = [a.send(TTNetworkMessageUDP("127.0.0.1", b.port, p), ensure=True)
               for p in payloads.values()]
    assert all(h.wait(30) for h in handles)
    got = inbox.wait_for(200)
    time.sleep(0.2)                                     # any duplicate would show up now
    assert len(inbox.items) == 200
    assert sorted(m.payload for m in got) == sorted(payloads.values())


def test_after_callback_runs_on_completion(pair):
    a, b, _ = pair
    done = threading.Event()
    a.send(message("hi", "127.0.0.1", b.port), after=done.set, ensure=True)
    assert done.wait(5)


def test_failure_reported_after_deadline_when_peer_is_gone(udp_port):
    dead = udp_port()                                   # nobody listens there
    failures = []
    with TTNetworkInterfaceUDP(port=udp_port(), failure_function=lambda m, r: failures.append(r)) as a:
        t0 = time.monotonic()
        h = a.send(message("x" * 5000, "127.0.0.1", dead), ensure=True, deadline_s=1.0)
        assert not h.wait(5) and h.done
        elapsed = time.monotonic() - t0
        assert 1.0 <= elapsed < 2.0
        assert "no ACK_START" in h.reason and failures == [h.reason]
        assert a.counters["messages_failed"] == 1 and a.engine.pending_sends() == 0


def test_malformed_and_corrupt_datagrams_are_dropped_and_counted(pair):
    a, b, inbox = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        bad = bytearray(encode_data(1, 0, b"abc"))
        bad[-1] ^= 1
        for dg in (b"", b"\xff" * 40, b"\x00" * 3, bytes(bad), b"\x01" * 5000, encode_req(7, 2)[:-1]):
            raw.sendto(dg, ("127.0.0.1", b.port))
        time.sleep(0.2)
    c = b.counters
    assert c["dropped_malformed"] >= 4 and c["dropped_crc"] == 1
    h = a.send(message("still alive", "127.0.0.1", b.port), ensure=True)
    assert h.wait(5)
    assert inbox.wait_for(1)[0].decode() == "still alive"


def test_receiver_exception_does_not_kill_the_interface(udp_port):
    calls = []

    def bad_receiver(msg):
        calls.append(msg)
        raise RuntimeError("user bug")

    with TTNetworkInterfaceUDP(port=udp_port(), receiver_function=bad_receiver) as b, \
            TTNetworkInterfaceUDP(port=udp_port()) as a:
        for i in range(3):
            assert a.send(message(i, "127.0.0.1", b.port), ensure=True).wait(5)
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 3 and b.counters["callback_errors"] == 3


def test_cleanup_is_fast_and_frees_the_port(udp_port):
    port = udp_port()
    iface = TTNetworkInterfaceUDP(port=port)
    iface.send(message("x" * 100000, "127.0.0.1", udp_port()), ensure=True)
    t0 = time.monotonic()
    iface.cleanup()
    assert time.monotonic() - t0 < 0.2
    assert not iface._io.is_alive() and not iface._dispatch.is_alive()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))                     # port is free again
    with pytest.raises(RuntimeError, match="closed"):
        iface.send(message(1, "127.0.0.1", port))


@pytest.mark.parametrize("kwargs,match", [({"port": 80}, "1024..65535"),
                                          ({"port": 70000}, "1024..65535"),
                                          ({"ip_addr": "1.2.3"}, "IPv4"),
                                          ({"ip_addr": "::1"}, "IPv4")])
def test_bad_endpoint_is_a_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTNetworkInterfaceUDP(**kwargs)


def test_ttpython_style_helpers(pair):
    a, b, _ = pair
    msg = message(list(range(2000)), "127.0.0.1", b.port)
    w = a.create_sending_window(msg, None)
    assert w.total == msg.get_request().num_packets == len(msg.generate_packets(1000))
    assert a.create_receiving_window(("127.0.0.1", b.port), TTRequestPacket(1, 3)).total == 3
    # the engine handshakes by itself: these are no-ops kept for TTPython code
    assert a.ensure_handshake(msg.get_request(), msg.get_address()) is None
    assert a.handshake() is None
    called, entries = [], {5: "w"}
    a.wrap_completion(msg, entries, 5, called.append)
    assert called == [msg] and entries == {}
    a.wrap_completion(msg, entries, 5, lambda: called.append("no-arg"))   # same rule as after
    assert called == [msg, "no-arg"]
    with pytest.raises(ZeroDivisionError):              # propagates, as in TTPython
        a.wrap_completion(msg, {}, 5, lambda m: 1 / 0)


@pytest.fixture
def peer(udp_port):
    """A bare UDP socket on loopback, to see exactly what an interface sends."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", udp_port()))
        sock.settimeout(5)
        yield sock


def test_terminate_handshake_sends_ack_start_from_the_io_thread(peer, udp_port):
    from ttnet.wire import encode_ack
    iface = TTNetworkInterfaceUDP(port=udp_port())
    try:
        assert iface.terminate_handshake(0xABC, peer.getsockname()) is None
        data, src = peer.recvfrom(2048)
        assert data == encode_ack(0xABC, 0) and src == iface.address
        assert iface.counters["acks_sent"] == 1
    finally:
        iface.cleanup()
    iface.terminate_handshake(0xABC, peer.getsockname())          # closed: a no-op


def test_windows_are_visible_while_a_send_is_under_way(peer, udp_port):
    a = TTNetworkInterfaceUDP(port=udp_port())
    try:
        a.send(TTNetworkMessageUDP("127.0.0.1", peer.getsockname()[1], b"z" * 2500),
               ensure=True)
        req, _ = peer.recvfrom(2048)
        mid = int.from_bytes(req[1:9], "little")
        w = a.get_sending_window(peer.getsockname(), mid)
        assert w is not None and w.total == 3
        assert a.get_receiving_window(peer.getsockname(), mid) is None
    finally:
        a.cleanup()


def test_slow_receiver_function_never_stalls_the_network_and_order_holds(udp_port):
    """Callbacks run on the interface's dispatcher thread, never on the I/O
    thread. While B's receiver function is stuck, B keeps acknowledging (A's
    sends complete) and keeps sending (its own sends from another thread
    complete); once it returns, every message is delivered exactly once, in
    order, and the replies the receiver function sent arrive."""
    release = threading.Event()
    got: list[int] = []
    replies: list[bytes] = []

    def on_b(msg):
        i = int(msg.payload)
        got.append(i)
        if i == 10:
            release.wait(10)
        b.send(TTNetworkMessageUDP(*msg.address, b"re%d" % i), ensure=True)

    with TTNetworkInterfaceUDP(port=udp_port(), receiver_function=on_b) as b, \
            TTNetworkInterfaceUDP(port=udp_port(),
                                  receiver_function=lambda m: replies.append(m.payload)) as a:
        dest = ("127.0.0.1", b.port)
        for i in range(10):                                   # make the interface busy
            assert a.send(TTNetworkMessageUDP(*dest, b"%d" % i), ensure=True).wait(5)
        a.send(TTNetworkMessageUDP(*dest, b"10"), ensure=True)
        deadline = time.monotonic() + 5
        while 10 not in got and time.monotonic() < deadline:
            time.sleep(0.001)
        assert got[-1] == 10                                  # B's receiver is stuck now
        later = [a.send(TTNetworkMessageUDP(*dest, b"%d" % i), ensure=True)
                 for i in range(11, 16)]
        own = b.send(TTNetworkMessageUDP("127.0.0.1", a.port, b"from B"), ensure=True)
        assert all(h.wait(5) for h in later), "B stopped acknowledging"
        assert own.wait(5), "B stopped sending"
        assert got[-1] == 10 and not release.is_set()        # still stuck meanwhile
        release.set()
        deadline = time.monotonic() + 5
        while len(replies) < 17 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert got == list(range(16))
    assert sorted(replies) == sorted([b"from B"] + [b"re%d" % i for i in range(16)])
    assert b.counters["callback_errors"] == 0


def test_fast_start_over_real_sockets_delivers_every_message_once(udp_port):
    """EngineConfig(fast_start=...) on a UDP interface: one-packet
    ensure=True messages go as FAST datagrams (no REQ), larger ones keep
    the handshake, and a default-configured ttnet receiver takes both."""
    from ttnet.engine import EngineConfig
    inbox = Inbox()
    pb, pa = udp_port(), udp_port()
    with TTNetworkInterfaceUDP(port=pb, receiver_function=inbox) as b, \
            TTNetworkInterfaceUDP(port=pa, config=EngineConfig(
                fast_start=[("127.0.0.1", pb)])) as a:
        payloads = [b"%03d" % i + os.urandom(60) for i in range(100)] + [os.urandom(5000)]
        handles = [a.send(TTNetworkMessageUDP("127.0.0.1", pb, p), ensure=True)
                   for p in payloads]
        assert all(h.wait(10) and h.ok for h in handles)
        got = inbox.wait_for(len(payloads))
        assert sorted(m.payload for m in got) == sorted(payloads)
        assert a.counters["fast_starts"] == 100 and a.counters["req_sent"] == 1
        assert b.counters["fast_received"] >= 100 and b.counters["messages_delivered"] == 101
