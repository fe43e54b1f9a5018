import pytest

from ttnet import TTSlidingWindow


def test_receiver_reassembles_out_of_order_and_completes_once():
    calls = []
    w = TTSlidingWindow(window_size=4, completion_fn=calls.append, initializer=6)
    order = [2, 0, 1, 3, 5, 4]
    for i in order:
        idx, new = w.receive(w.sequence_of(i), bytes([i]))
        assert (idx, new) == (i, True)
    assert w.complete and calls == [w]
    assert w.assemble() == bytes(range(6))


def test_receiver_rejects_beyond_window_and_reacks_behind():
    w = TTSlidingWindow(window_size=4, initializer=20)
    assert w.receive(w.sequence_of(4), b"x") == (None, False)    # base 0, window 0..3
    for i in range(4):
        w.receive(w.sequence_of(i), b"x")
    assert w.base == 4
    assert w.receive(w.sequence_of(1), b"x") == (1, False)       # behind: re-ACK, no store
    assert w.is_in_window(w.sequence_of(7)) and not w.is_in_window(w.sequence_of(8))


def test_sequence_wraps_around_modulus():
    w = TTSlidingWindow(window_size=1000, initializer=5000)
    for i in range(4200):
        assert w.ack(i % 2001) == i
    assert w.base == 4200
    assert w.get_packet_index(4200 % 2001) == 4200
    assert w.get_packet_index(4199 % 2001) == 4199            # behind, for re-ACKs
    assert w.ack(4199 % 2001) is None                          # duplicate


def test_sender_window_from_packets_and_completion():
    done = []
    w = TTSlidingWindow(3, 100, lambda win: done.append(True), ["a", "b"])
    assert w.total == 2
    w.ack(1)
    assert w.base == 0 and not done
    w.ack(0)
    assert w.base == 2 and done == [True]


def test_empty_message_is_complete_at_once():
    done = []
    w = TTSlidingWindow(completion_fn=done.append, initializer=0)
    assert w.complete and len(done) == 1 and w.assemble() == b""


def test_invalid_sequence_numbers():
    w = TTSlidingWindow(window_size=4, initializer=3)
    assert w.get_packet_index(9) is None        # beyond modulus 9
    assert w.get_packet_index(5) is None        # maps past the message
    assert w.ack(-1) is None
    with pytest.raises(ValueError):
        TTSlidingWindow(window_size=0)
    assert "base=0" in w.print_window()


def test_start_takes_the_time_from_the_caller():
    w = TTSlidingWindow(window_size=4, initializer=3)
    assert w.started_at is None
    w.start(12.5)                          # any clock: real or simulated seconds
    assert w.started_at == 12.5
    with pytest.raises(TypeError):
        w.start()                          # no hidden clock to fall back on


def test_window_module_reads_no_clock():
    import ttnet.window as window_mod
    assert not hasattr(window_mod, "time")
