"""The TTPython UDP wire format: packet types, encoding, decoding, CRC.

Owns the bytes of ``docs/wire-format.md`` and nothing else: pure
functions and small value classes. It never keeps state between datagrams,
never reads a clock, and only touches a socket in the TTPython-compatible
``TTPacket.send`` helper.

There is one parser, :func:`parse_datagram`: the engine, the
TTPython-compatible :func:`convert_to_packet` and the benchmarks' protocol
floor all read datagrams through it, so no other module needs the offsets
below or the CRC's lookup table.

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
from typing import Any, ClassVar

#: Largest DATA payload. A TTPython receiver reads at most 1217-byte
#: datagrams, so this is fixed by interop, not a tuning knob.
MAX_DATA = 1200
MAX_DATAGRAM = MAX_DATA + 17
#: Window size both ends use; sequence numbers are taken mod 2W+1.
WINDOW_SIZE = 1000
SEQ_MODULUS = 2 * WINDOW_SIZE + 1

_REQ = struct.Struct("<BQHI")        # type, message_id, message_type, num_packets
_SEQ = struct.Struct("<BQI")         # type, message_id, sequence_num (DATA/ACK)
_CRC = struct.Struct(">I")

#: Bytes before a DATA packet's data (type, message_id, sequence_num).
DATA_HEADER = _SEQ.size
#: The CRC trailer of every packet.
CRC_SIZE = _CRC.size
#: Datagram sizes of the two fixed-size packets.
REQ_SIZE = _REQ.size + CRC_SIZE
ACK_SIZE = _SEQ.size + CRC_SIZE
#: The shortest datagram that can be a packet (an ACK, or an empty DATA).
MIN_DATAGRAM = ACK_SIZE


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

    packet_type: ClassVar[TTPacketType | None] = None  # set by subclasses

    def to_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, server_socket: Any, address: tuple[str, int]) -> None:
        """Send this packet as one datagram (TTPython-compatible helper)."""
        server_socket.sendto(self.to_bytes(), address)


@dataclass(frozen=True, slots=True)
class TTRequestPacket(TTPacket):
    num_packets: int
    message_type: int = 0
    packet_type: ClassVar[TTPacketType | None] = TTPacketType.REQ

    def to_bytes(self) -> bytes:
        return encode_req(self.message_id, self.num_packets, self.message_type)


@dataclass(frozen=True, slots=True)
class TTDataPacket(TTPacket):
    sequence_num: int
    data: bytes
    packet_type: ClassVar[TTPacketType | None] = TTPacketType.DATA

    def to_bytes(self) -> bytes:
        return encode_data(self.message_id, self.sequence_num, self.data)


@dataclass(frozen=True, slots=True)
class TTAckPacket(TTPacket):
    sequence_num: int
    packet_type: ClassVar[TTPacketType | None] = TTPacketType.ACK

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


#: What :func:`parse_datagram` returns: ``(kind, message_id, number, data,
#: message_type)``. ``kind`` is the type byte (a :class:`TTPacketType`
#: value); ``number`` is the sequence number of a DATA or ACK packet and the
#: packet count of a REQ; ``data`` is a DATA packet's data (empty for the
#: others); ``message_type`` is a REQ's (0 on the wire; 0 for the others).
#: A plain tuple, not a class: the receive path makes one per datagram.
ParsedDatagram = tuple[int, int, int, bytes, int]

REQ_KIND, DATA_KIND, ACK_KIND = int(TTPacketType.REQ), int(TTPacketType.DATA), int(TTPacketType.ACK)
_EMPTY = b""


def parse_datagram(datagram: bytes) -> ParsedDatagram | None:
    """Parse one datagram: the single reader of the format's bytes.

    Returns None when the CRC does not check (the format says: drop
    silently). Raises :class:`MalformedPacket` for anything that cannot be
    a packet at all: too short, unknown type, wrong length for its type.
    ``datagram`` must be ``bytes`` (or ``bytearray``); this runs once per
    datagram on every receive path, so it does the least work it can.
    """
    n = len(datagram)
    if n < MIN_DATAGRAM:
        raise MalformedPacket(f"datagram of {n} bytes is shorter than any packet ({MIN_DATAGRAM})")
    kind = datagram[0]
    if kind == DATA_KIND:
        if n > MAX_DATAGRAM:
            raise MalformedPacket(f"DATA must be {MIN_DATAGRAM}..{MAX_DATAGRAM} bytes, got {n}")
    elif kind == ACK_KIND:
        if n != ACK_SIZE:
            raise MalformedPacket(f"ACK must be {ACK_SIZE} bytes, got {n}")
    elif kind == REQ_KIND:
        if n != REQ_SIZE:
            raise MalformedPacket(f"REQ must be {REQ_SIZE} bytes, got {n}")
    else:
        raise MalformedPacket(f"unknown packet type {kind}")
    # crc_ok inlined: the reflected CRC of the bit-reversed bytes is all
    # ones exactly when the format's CRC over the whole datagram is 0.
    if binascii.crc32(datagram.translate(_REV8), 0xFFFFFFFF) != 0xFFFFFFFF:
        return None
    if kind == REQ_KIND:
        _, mid, mtype, num = _REQ.unpack_from(datagram)
        return kind, mid, num, _EMPTY, mtype
    _, mid, seq = _SEQ.unpack_from(datagram)
    if kind == DATA_KIND:
        return kind, mid, seq, datagram[DATA_HEADER:-CRC_SIZE], 0
    return kind, mid, seq, _EMPTY, 0


def convert_to_packet(payload: bytes) -> TTPacket | None:
    """Decode one datagram into a packet object (TTPython's function).

    Returns None when the CRC does not check (the format says: drop
    silently). Raises :class:`MalformedPacket` for anything that cannot be a
    packet at all: too short, unknown type, wrong length for its type.
    """
    dg = parse_datagram(bytes(payload))
    if dg is None:
        return None
    kind, mid, number, data, mtype = dg
    if kind == REQ_KIND:
        return TTRequestPacket(mid, number, mtype)
    if kind == ACK_KIND:
        return TTAckPacket(mid, number)
    return TTDataPacket(mid, number, data)


def packet_count(payload_len: int) -> int:
    """Number of DATA packets for a payload: ceil(len / 1200)."""
    return -(-payload_len // MAX_DATA)
