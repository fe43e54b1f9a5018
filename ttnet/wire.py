"""The TTPython UDP wire format: packet types, encoding, decoding, CRC.

Owns the bytes of ``docs/wire-format.md`` and nothing else: pure
functions and small value classes (TTPython's packet classes, and
:class:`TTNetworkMessageUDP`, the message that splits into them). It never
keeps state between datagrams, never reads a clock, and only touches a
socket in the TTPython-compatible ``TTPacket.send`` helper.

There is one parser, :func:`parse_datagram`: the engine, the
TTPython-compatible :func:`convert_to_packet` and the benchmarks' protocol
floor all read datagrams through it, so no other module needs the offsets
below or the CRC's lookup table.

Layouts (integers little-endian, CRC trailer big-endian)::

    REQ  type(1)=0 message_id(8) message_type(2)=0 num_packets(4) crc(4)   19 B
    DATA type(1)=1 message_id(8) sequence_num(4)   data(<=1200)   crc(4)   17+n B
    ACK  type(1)=2 message_id(8) sequence_num(4)                  crc(4)   17 B

ttnet's one extension, sent only when configured (``EngineConfig.fast_start``)
and only to ttnet peers; a ttnet receiver always accepts it::

    FAST type(1)=3 message_id(8) sequence_num(4)=0 data(<=1200) crc(4)   17+n B

A FAST packet is the REQ and the only DATA packet of a one-packet message in
one datagram; the receiver answers it with ACK(message_id, 0).
"""
from __future__ import annotations

import binascii
import enum
import ipaddress
import struct
from typing import Any

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
    """The type byte at the front of every packet (TTPython's enum)."""

    REQ = 0
    DATA = 1
    ACK = 2


class TTPacket:
    """One packet: ``TTPacket(packet_type, message_id)``, TTPython's base.

    The three kinds below set ``packet_type`` themselves. ``to_bytes()``
    gives the datagram; ``send(server_socket, address)`` sends it. Packets
    are equal when they put the same bytes on the wire (``ACKed`` is the
    sender's bookkeeping, not content). The protocol engine reads datagrams
    with :func:`parse_datagram` and builds none of these objects.
    """

    __slots__ = ("packet_type", "message_id")

    def __init__(self, packet_type: TTPacketType | int, message_id: int) -> None:
        self.packet_type = TTPacketType(packet_type)
        self.message_id = message_id

    def _key(self) -> tuple[Any, ...]:
        return (self.packet_type, self.message_id)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, TTPacket):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]   # mutable (ACKed), like TTPython's

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields())
        return f"{type(self).__name__}({fields})"

    def _fields(self) -> tuple[str, ...]:
        return ("packet_type", "message_id")

    def to_bytes(self) -> bytes:
        """The datagram of this packet (CRC trailer included)."""
        raise NotImplementedError(f"a bare TTPacket of type {self.packet_type.name} has no "
                                  "content; use TTRequestPacket, TTDataPacket or TTAckPacket")

    def send(self, server_socket: Any, address: tuple[str, int]) -> None:
        """Send this packet as one datagram on ``server_socket``."""
        server_socket.sendto(self.to_bytes(), address)


class TTRequestPacket(TTPacket):
    """REQ: ``TTRequestPacket(message_id, num_packets)``. ``message_type``
    (ttnet's extra) is the 2-byte field TTPython always writes as 0."""

    __slots__ = ("num_packets", "message_type")

    def __init__(self, message_id: int, num_packets: int, message_type: int = 0) -> None:
        super().__init__(TTPacketType.REQ, message_id)
        self.num_packets = num_packets
        self.message_type = message_type

    def _key(self) -> tuple[Any, ...]:
        return (self.message_id, self.num_packets, self.message_type)

    def _fields(self) -> tuple[str, ...]:
        return ("message_id", "num_packets", "message_type")

    def to_bytes(self) -> bytes:
        return encode_req(self.message_id, self.num_packets, self.message_type)


class TTDataPacket(TTPacket):
    """DATA: ``TTDataPacket(message_id=0, sequence_num=0, payload=None,
    ACKed=False)``. ``payload`` is the packet's share of the message (at
    most :data:`MAX_DATA` bytes; None is empty); ``ACKed`` is set by a
    sending :class:`~ttnet.window.TTSlidingWindow` when it is acknowledged.
    ``data`` is ttnet's older name for ``payload``."""

    __slots__ = ("sequence_num", "payload", "ACKed")

    def __init__(self, message_id: int = 0, sequence_num: int = 0,
                 payload: bytes | bytearray | memoryview | None = None,
                 ACKed: bool = False) -> None:
        super().__init__(TTPacketType.DATA, message_id)
        self.sequence_num = sequence_num
        self.payload = b"" if payload is None else payload
        self.ACKed = ACKed

    @property
    def data(self) -> bytes | bytearray | memoryview:
        return self.payload

    def _key(self) -> tuple[Any, ...]:
        return (self.message_id, self.sequence_num, bytes(self.payload))

    def _fields(self) -> tuple[str, ...]:
        return ("message_id", "sequence_num", "payload", "ACKed")

    def to_bytes(self) -> bytes:
        return encode_data(self.message_id, self.sequence_num, self.payload)


class TTAckPacket(TTPacket):
    """ACK: ``TTAckPacket(message_id, sequence_num)``; ACK(0) before any
    DATA is the ACK_START that answers a REQ."""

    __slots__ = ("sequence_num",)

    def __init__(self, message_id: int, sequence_num: int) -> None:
        super().__init__(TTPacketType.ACK, message_id)
        self.sequence_num = sequence_num

    def _key(self) -> tuple[Any, ...]:
        return (self.message_id, self.sequence_num)

    def _fields(self) -> tuple[str, ...]:
        return ("message_id", "sequence_num")

    def to_bytes(self) -> bytes:
        return encode_ack(self.message_id, self.sequence_num)


def check_endpoint(ip_addr: str, port: int) -> None:
    """Raise a clear ValueError unless ``ip_addr:port`` is an IPv4 address
    and an unprivileged port."""
    try:
        ipaddress.IPv4Address(ip_addr)
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise ValueError(f"ip_addr {ip_addr!r} is not an IPv4 address (e.g. '127.0.0.1')") from exc
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"port {port!r} is outside 1024..65535; pick an unprivileged UDP port")


class TTNetworkMessageUDP:
    """A message for ``recipient_ip:recipient_port`` (TTPython's class).

    ``TTNetworkMessageUDP(recipient_ip='127.0.0.1', recipient_port=8080,
    payload_byte_array=None)``. Attributes: ``recipient_ip``,
    ``recipient_port``, ``payload`` (the bytes; None is empty),
    ``message_id`` (TTPython's: ``id(self)``, unique among live messages;
    the engine picks its own random id for the wire) and ``num_packets``.

    A receiving :class:`~ttnet.window.TTSlidingWindow` hands its
    ``completion_fn`` one of these, built as TTPython builds it: the
    *sender's* address in ``recipient_ip``/``recipient_port``.
    """

    def __init__(self, recipient_ip: str = "127.0.0.1", recipient_port: int = 8080,
                 payload_byte_array: bytes | bytearray | memoryview | None = None) -> None:
        check_endpoint(recipient_ip, recipient_port)
        self.recipient_ip: str | None = recipient_ip
        self.recipient_port: int | None = recipient_port
        self.payload = b"" if payload_byte_array is None else bytes(payload_byte_array)
        self.message_id = id(self)

    @classmethod
    def received(cls, address: Any, payload: bytes, message_id: int) -> "TTNetworkMessageUDP":
        """A message as a receiver sees it (no endpoint check: any sender
        port is possible); ``address`` is the sender's ``(ip, port)``."""
        m = cls.__new__(cls)
        ip, port = address if isinstance(address, tuple) and len(address) == 2 else (None, None)
        m.recipient_ip, m.recipient_port = ip, port
        m.payload = payload
        m.message_id = message_id
        return m

    @property
    def num_packets(self) -> int:
        return packet_count(len(self.payload))

    def get_address(self) -> tuple[str | None, int | None]:
        return (self.recipient_ip, self.recipient_port)

    def get_request(self, message_id: int | None = None) -> "TTRequestPacket":
        """The REQ for this message (``message_id`` defaults to this
        message's own)."""
        mid = self.message_id if message_id is None else message_id
        return TTRequestPacket(mid, self.num_packets)

    def generate_packets(self, window_size: int = WINDOW_SIZE,
                         message_id: int | None = None) -> "list[TTDataPacket]":
        """All DATA packets, sequence numbers taken mod 2*window_size+1."""
        mid = self.message_id if message_id is None else message_id
        mod = 2 * window_size + 1
        p = self.payload
        return [TTDataPacket(mid, i % mod, p[i * MAX_DATA:(i + 1) * MAX_DATA])
                for i in range(packet_count(len(p)))]

    def __repr__(self) -> str:
        return (f"TTNetworkMessageUDP({self.recipient_ip}:{self.recipient_port}, "
                f"{len(self.payload)} bytes)")


def _check_id(message_id: int) -> None:
    if not 0 <= message_id < 1 << 64:
        raise ValueError(f"message_id {message_id} is not an unsigned 64-bit integer")


def encode_req(message_id: int, num_packets: int, message_type: int = 0) -> bytes:
    _check_id(message_id)
    if not 0 <= num_packets < 1 << 32:
        raise ValueError(f"num_packets {num_packets} does not fit 32 bits")
    return _seal(_REQ.pack(TTPacketType.REQ, message_id, message_type, num_packets))


def encode_data(message_id: int, sequence_num: int,
                data: bytes | bytearray | memoryview) -> bytes:
    if len(data) > MAX_DATA:
        raise ValueError(f"DATA carries at most {MAX_DATA} bytes, got {len(data)}")
    return _seal(_SEQ.pack(TTPacketType.DATA, message_id, sequence_num) + bytes(data))


def encode_fast(message_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """A FAST packet: REQ and DATA 0 of a one-packet message together."""
    if len(data) > MAX_DATA:
        raise ValueError(f"FAST carries at most {MAX_DATA} bytes, got {len(data)}")
    return _seal(_SEQ.pack(FAST_KIND, message_id, 0) + bytes(data))


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
#: ttnet's fast-start packet (not TTPython's: a TTPython receiver drops it as
#: an unknown type). Same layout as DATA; see the module docstring.
FAST_KIND = 3
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
    if kind == DATA_KIND or kind == FAST_KIND:
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
    if kind == DATA_KIND or kind == FAST_KIND:
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
    if kind == FAST_KIND:
        raise MalformedPacket("FAST (type 3) is ttnet's fast-start extension, not a "
                              "TTPython packet; ttnet's engine reads it")
    if kind == REQ_KIND:
        return TTRequestPacket(mid, number, mtype)
    if kind == ACK_KIND:
        return TTAckPacket(mid, number)
    return TTDataPacket(mid, number, data)


def packet_count(payload_len: int) -> int:
    """Number of DATA packets for a payload: ceil(len / 1200)."""
    return -(-payload_len // MAX_DATA)
