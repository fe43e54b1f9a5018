import os

import pytest
from hypothesis import given, strategies as st

from ttnet import wire
from ttnet.wire import (MalformedPacket, TTAckPacket, TTDataPacket, TTRequestPacket,
                        convert_to_packet, convert_to_payload, crc32)


def _crc_bitwise(data: bytes) -> int:
    """The reference definition from wire-format.md, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_crc_check_value():
    assert crc32(b"123456789") == 0x89A1897F


@given(st.binary(max_size=1300))
def test_fast_crc_matches_bitwise_definition(data):
    assert crc32(data) == _crc_bitwise(data)


def test_req_vector_from_spec():
    req = TTRequestPacket(0x0102030405060708, 3)
    assert convert_to_payload(req).hex() == "00" "0807060504030201" "0000" "03000000" "27cb1a8c"


def test_ack_vector_from_spec():
    ack = TTAckPacket(0x0102030405060708, 0)
    assert convert_to_payload(ack).hex() == "02" "0807060504030201" "00000000" "f2786c14"


def test_whole_datagram_crc_is_zero():
    assert crc32(convert_to_payload(TTDataPacket(7, 5, b"hello"))) == 0


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=1200))
def test_round_trip_all_types(mid, seq, data):
    for pkt in (TTRequestPacket(mid, seq), TTAckPacket(mid, seq), TTDataPacket(mid, seq, data)):
        assert convert_to_packet(convert_to_payload(pkt)) == pkt


def test_sizes_on_the_wire():
    assert len(convert_to_payload(TTRequestPacket(1, 1))) == 19
    assert len(convert_to_payload(TTAckPacket(1, 1))) == 17
    assert len(convert_to_payload(TTDataPacket(1, 1, b"x" * 1200))) == 1217


def test_crc_failure_returns_none():
    raw = bytearray(convert_to_payload(TTDataPacket(1, 2, b"abc")))
    raw[14] ^= 0x01
    assert convert_to_packet(bytes(raw)) is None


@pytest.mark.parametrize("raw", [b"", b"\x00" * 5, b"\x07" + b"\x00" * 20,
                                 b"\x00" * 18, b"\x02" * 20, b"\x01" * 1300])
def test_malformed_datagram_raises_clear_error(raw):
    with pytest.raises(MalformedPacket):
        convert_to_packet(raw)


def test_data_over_1200_bytes_is_refused():
    with pytest.raises(ValueError, match="1200"):
        TTDataPacket(1, 0, b"x" * 1201).to_bytes()


def test_packet_send_uses_socket(udp_port):
    import socket
    port = udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", port))
        rx.settimeout(2)
        TTAckPacket(9, 4).send(tx, ("127.0.0.1", port))
        assert convert_to_packet(rx.recv(2000)) == TTAckPacket(9, 4)


@pytest.mark.parametrize("size,count", [(0, 0), (1, 1), (1199, 1), (1200, 1), (1201, 2),
                                        (2400, 2), (2401, 3), (10**6, 834), (10**7, 8334)])
def test_fragmentation_counts(size, count):
    from ttnet import TTNetworkMessageUDP
    payload = os.urandom(size)
    msg = TTNetworkMessageUDP("127.0.0.1", 9000, payload)
    pkts = msg.generate_packets(1000)
    assert len(pkts) == count == msg.get_request().num_packets
    assert all(len(p.data) == 1200 for p in pkts[:-1])
    assert b"".join(p.data for p in pkts) == payload
    assert [p.sequence_num for p in pkts] == [i % 2001 for i in range(count)]
    assert all(len(p.to_bytes()) <= wire.MAX_DATAGRAM for p in pkts)


# --- the one parser --------------------------------------------------------
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=1200))
def test_parse_datagram_round_trips_every_type(mid, number, data):
    assert wire.parse_datagram(wire.encode_req(mid, number)) == (wire.REQ_KIND, mid, number,
                                                                 b"", 0)
    assert wire.parse_datagram(wire.encode_ack(mid, number)) == (wire.ACK_KIND, mid, number,
                                                                 b"", 0)
    assert wire.parse_datagram(wire.encode_data(mid, number, data)) == (
        wire.DATA_KIND, mid, number, data, 0)


def test_parse_datagram_keeps_the_req_message_type():
    dg = TTRequestPacket(5, 2, message_type=7).to_bytes()
    assert wire.parse_datagram(dg) == (wire.REQ_KIND, 5, 2, b"", 7)
    assert convert_to_packet(dg) == TTRequestPacket(5, 2, 7)


@given(st.binary(max_size=1300))
def test_parse_datagram_agrees_with_convert_to_packet(raw):
    try:
        pkt = convert_to_packet(raw)
    except MalformedPacket:
        with pytest.raises(MalformedPacket):
            wire.parse_datagram(raw)
        return
    parsed = wire.parse_datagram(raw)
    assert (pkt is None) == (parsed is None)
    if parsed is not None:
        assert parsed[0] == pkt.packet_type and parsed[1] == pkt.message_id
        assert parsed[2] == (pkt.num_packets if parsed[0] == wire.REQ_KIND
                             else pkt.sequence_num)


def test_parse_datagram_crc_failure_and_malformed():
    raw = bytearray(wire.encode_ack(1, 2))
    raw[5] ^= 0x10
    assert wire.parse_datagram(bytes(raw)) is None
    for bad in (b"", b"\x02" * 16, b"\x00" * 18, b"\x01" * 1218, b"\x09" * 17):
        with pytest.raises(MalformedPacket):
            wire.parse_datagram(bad)


def test_wire_sizes_are_the_specs():
    assert (wire.REQ_SIZE, wire.ACK_SIZE, wire.MIN_DATAGRAM, wire.DATA_HEADER,
            wire.CRC_SIZE, wire.MAX_DATAGRAM) == (19, 17, 17, 13, 4, 1217)
