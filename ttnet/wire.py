"""The TTPython UDP wire format: packet types, encoding, decoding, CRC.

Owns the bytes of ``docs/wire-format.md`` and nothing else: pure
functions and small value classes. It never keeps state between datagrams,
never reads a clock, and only touches a socket in the TTPython-compatible
``TTPacket.send`` helper.

Layouts (integers little-endian, CRC trailer big-endian)::

    REQ  type(1)=0 message_id(8) message_type(2)=0 num_packets(4) crc(4)   19 B
    DATA type(1)=1 message_id(8) sequence_num(4)   data(<=1200)   crc(4)   17+n B
    ACK  type(1)=2 message_id(8) sequence_num(4)                  crc(4)   17 B
"""
from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass
from typing import Any

#: Largest DATA payload. A TTPython receiver reads at most 1217-byte
#: datagrams, so this is fixed by interop, not a tuning knob.
MAX_DATA = 1200
MAX_DATAGRAM = MAX_DATA + 17
#: Window size both ends use; sequence numbers are taken mod 2W+1.
WINDOW_SIZE = 1000
SEQ_MODULUS = 2 * WINDOW_SIZE + 1

_HDR = struct.Struct("<BQ")          # type, message_id
_REQ = struct.Struct("<BQHI")        # type, message_id, message_type, num_packets
_SEQ = struct.Struct("<BQI")         # type, message_id, sequence_num (DATA/ACK)
_CRC = struct.Struct(">I")


class MalformedPacket(ValueError):
    """A datagram that is not a TTPython packet (bad type, bad length)."""


class WindowException(Exception):
    """A sequence number or packet index outside what a window can take."""


# --- CRC -----------------------------------------------------------------
# The format's CRC is CRC-32/MPEG-2's polynomial with init 0 and no final
# XOR (non-reflected). zlib's crc32 is the *reflected* form; a reflected CRC
# of bit-reversed input bytes is the bit-reversal of the non-reflected CRC.
# bytes.translate and binascii.crc32 both run in C, so one 1200-byte packet
# costs about a microsecond instead of the old bit loop's milliseconds.
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _rev32(v: int) -> int:
    b = v.to_bytes(4, "little").translate(_REV8)
    return int.from_bytes(b, "big")


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32, poly 0x04C11DB7, init 0, no reflection, no final XOR."""
    # binascii.crc32(x, v) starts from ~v and returns ~crc: start from 0
    # and undo the final inversion.
    r = binascii.crc32(bytes(data).translate(_REV8), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return _rev32(r)


def crc_ok(datagram: bytes) -> bool:
    """True when the datagram's trailer matches (CRC over it all is 0).

    Same test as ``crc32(datagram) == 0`` in one C call: the reflected
    CRC of the bit-reversed bytes is all ones exactly when ours is zero.
    """
    return (len(datagram) >= 4
            and binascii.crc32(datagram.translate(_REV8), 0xFFFFFFFF) == 0xFFFFFFFF)


def _seal(body: bytes) -> bytes:
    return body + _CRC.pack(crc32(body))


# --- packets -------------------------------------------------------------
class TTPacketType(enum.IntEnum):
    REQ = 0
    DATA = 1
    ACK = 2


@dataclass(frozen=True, slots=True)
class TTPacket:
    """Base of the three packet kinds. ``to_bytes()`` gives the datagram."""

    message_id: int

    packet_type = None  # set by subclasses

    def to_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, server_socket: Any, address: tuple[str, int]) -> None:
        """Send this packet as one datagram (TTPython-compatible helper)."""
        server_socket.sendto(self.to_bytes(), address)


@dataclass(frozen=True, slots=True)
class TTRequestPacket(TTPacket):
    num_packets: int
    message_type: int = 0
    packet_type = TTPacketType.REQ

    def to_bytes(self) -> bytes:
        return encode_req(self.message_id, self.num_packets, self.message_type)


@dataclass(frozen=True, slots=True)
class TTDataPacket(TTPacket):
    sequence_num: int
    data: bytes
    packet_type = TTPacketType.DATA

    def to_bytes(self) -> bytes:
        return encode_data(self.message_id, self.sequence_num, self.data)


@dataclass(frozen=True, slots=True)
class TTAckPacket(TTPacket):
    sequence_num: int
    packet_type = TTPacketType.ACK

    def to_bytes(self) -> bytes:
        return encode_ack(self.message_id, self.sequence_num)


def _check_id(message_id: int) -> None:
    if not 0 <= message_id < 1 << 64:
        raise ValueError(f"message_id {message_id} is not an unsigned 64-bit integer")


def encode_req(message_id: int, num_packets: int, message_type: int = 0) -> bytes:
    _check_id(message_id)
    if not 0 <= num_packets < 1 << 32:
        raise ValueError(f"num_packets {num_packets} does not fit 32 bits")
    return _seal(_REQ.pack(TTPacketType.REQ, message_id, message_type, num_packets))


def encode_data(message_id: int, sequence_num: int, data: bytes) -> bytes:
    if len(data) > MAX_DATA:
        raise ValueError(f"DATA carries at most {MAX_DATA} bytes, got {len(data)}")
    return _seal(_SEQ.pack(TTPacketType.DATA, message_id, sequence_num) + bytes(data))


def encode_ack(message_id: int, sequence_num: int) -> bytes:
    return _seal(_SEQ.pack(TTPacketType.ACK, message_id, sequence_num))


def convert_to_payload(packet: TTPacket) -> bytes:
    """The datagram bytes of a packet (CRC trailer included)."""
    return packet.to_bytes()


def convert_to_packet(payload: bytes) -> TTPacket | None:
    """Decode one datagram.

    Returns None when the CRC does not check (the format says: drop
    silently). Raises :class:`MalformedPacket` for anything that cannot be a
    packet at all: too short, unknown type, wrong length for its type.
    """
    payload = bytes(payload)
    n = len(payload)
    if n < _HDR.size + 4:
        raise MalformedPacket(f"datagram of {n} bytes is shorter than any packet (13)")
    kind = payload[0]
    if kind == TTPacketType.REQ:
        if n != _REQ.size + 4:
            raise MalformedPacket(f"REQ must be {_REQ.size + 4} bytes, got {n}")
    elif kind == TTPacketType.ACK:
        if n != _SEQ.size + 4:
            raise MalformedPacket(f"ACK must be {_SEQ.size + 4} bytes, got {n}")
    elif kind == TTPacketType.DATA:
        if not _SEQ.size + 4 <= n <= MAX_DATAGRAM:
            raise MalformedPacket(f"DATA must be 17..{MAX_DATAGRAM} bytes, got {n}")
    else:
        raise MalformedPacket(f"unknown packet type {kind}")
    if crc32(payload) != 0:
        return None
    if kind == TTPacketType.REQ:
        _, mid, mtype, num = _REQ.unpack_from(payload)
        return TTRequestPacket(mid, num, mtype)
    _, mid, seq = _SEQ.unpack_from(payload)
    if kind == TTPacketType.ACK:
        return TTAckPacket(mid, seq)
    return TTDataPacket(mid, seq, payload[_SEQ.size:-4])


def packet_count(payload_len: int) -> int:
    """Number of DATA packets for a payload: ceil(len / 1200)."""
    return -(-payload_len // MAX_DATA)
