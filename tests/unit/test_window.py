import pytest

from ttnet import TTAckPacket, TTDataPacket, TTNetworkMessageUDP, TTRequestPacket, TTSlidingWindow


def test_receiver_reassembles_out_of_order_and_completes_once():
    calls = []
    w = TTSlidingWindow(window_size=4, completion_fn=calls.append, initializer=6)
    order = [2, 0, 1, 3, 5, 4]
    for i in order:
        idx, new = w.store(w.sequence_of(i), bytes([i]))
        assert (idx, new) == (i, True)
    assert w.complete and len(calls) == 1
    assert w.assemble() == bytes(range(6)) == calls[0].payload     # the assembled message


def test_receiver_rejects_beyond_window_and_reacks_behind():
    w = TTSlidingWindow(window_size=4, initializer=20)
    assert w.store(w.sequence_of(4), b"x") == (None, False)      # base 0, window 0..3
    for i in range(4):
        w.store(w.sequence_of(i), b"x")
    assert w.base == 4
    assert w.store(w.sequence_of(1), b"x") == (1, False)         # behind: re-ACK, no store
    assert w.is_in_window(w.sequence_of(7)) and not w.is_in_window(w.sequence_of(8))


def test_sequence_wraps_around_modulus():
    w = TTSlidingWindow(window_size=1000, initializer=5000)
    for i in range(4200):
        assert w.mark_acked(i % 2001) == i
    assert w.base == 4200
    assert w.get_packet_index(4200 % 2001) == 4200
    assert w.get_packet_index(4199 % 2001) == 4199            # behind, for re-ACKs
    assert w.mark_acked(4199 % 2001) is None                   # duplicate


def test_sender_window_from_packets_and_completion():
    done = []
    items = ["a", "b"]
    w = TTSlidingWindow(3, 100, done.append, items)
    assert w.total == 2 and w.is_sending
    w.mark_acked(1)
    assert w.base == 0 and not done
    w.mark_acked(0)
    assert w.base == 2 and done == [items]          # completion_fn(initializer)


def test_ttpython_sender_marks_packets_acked_and_completes_with_the_message():
    msg = TTNetworkMessageUDP("127.0.0.1", 9000, b"x" * 2500)
    done = []
    w = TTSlidingWindow(window_size=2, completion_fn=done.append, initializer=msg)
    assert w.is_sending and w.total == 3 and w.message_id == msg.message_id
    w.start()                                       # no socket: nothing is sent
    assert w.ack(TTAckPacket(msg.message_id, 1)) == 1 and w.items[1].ACKed
    assert not w.items[0].ACKed and w.base == 0
    assert w.ack(TTAckPacket(msg.message_id, 1)) is None                # duplicate
    w.ack(TTAckPacket(msg.message_id, 0))
    assert w.base == 2 and not done
    w.ack(TTAckPacket(msg.message_id, 2))
    assert done == [msg]


def test_ttpython_receiver_from_a_req_hands_on_the_assembled_message():
    got = []
    w = TTSlidingWindow(window_size=4, completion_fn=got.append,
                        initializer=TTRequestPacket(77, 2))
    assert not w.is_sending and w.total == 2
    assert w.receive(TTDataPacket(77, 1, b"b"), None, ("10.0.0.9", 4000)) == (1, True)
    assert w.receive(TTDataPacket(77, 1, b"b")) == (1, False)
    w.receive(TTDataPacket(77, 0, bytearray(b"a")))
    (m,) = got
    assert (m.payload, m.message_id, m.get_address()) == (b"ab", 77, ("10.0.0.9", 4000))


def test_empty_message_is_complete_at_once():
    done = []
    w = TTSlidingWindow(completion_fn=done.append, initializer=0)
    assert w.complete and len(done) == 1 and w.assemble() == b""


def test_invalid_sequence_numbers():
    w = TTSlidingWindow(window_size=4, initializer=3)
    assert w.get_packet_index(9) is None        # beyond modulus 9
    assert w.get_packet_index(5) is None        # maps past the message
    assert w.mark_acked(-1) is None
    with pytest.raises(ValueError):
        TTSlidingWindow(window_size=0)
    assert "base=0" in w.print_window()


def test_start_takes_the_time_from_the_caller():
    w = TTSlidingWindow(window_size=4, initializer=3)
    assert w.started_at is None
    w.start(now=12.5)                      # any clock: real or simulated seconds
    assert w.started_at == 12.5
    w2 = TTSlidingWindow(window_size=4, initializer=3)
    w2.start(None, None, 250)              # TTPython's start: no hidden clock either
    assert w2.started_at is None and w2.timeout_ms == 250


def test_window_module_reads_no_clock():
    import ttnet.window as window_mod
    assert not hasattr(window_mod, "time")
