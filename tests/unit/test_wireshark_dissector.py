"""tools/wireshark/ttnet.lua on a pcap written here: datagrams built with
ttnet.wire's encoders, wrapped in IPv4/UDP and written as a raw-IP pcap, then
decoded by tshark with the dissector. Checks every field, the CRC (computed
in Lua, compared with ttnet.wire.crc32; a broken one flagged bad), the
testbed payload header, port 8225/8226 registration and the heuristic.

tshark is installed by scripts/install-deps.sh (`make deps`, part of `make
test`); this test fails rather than skips without it.
"""
from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from testbed.spec.payloads import message_bytes
from ttnet.wire import MAX_DATA, crc32, encode_ack, encode_data, encode_req, packet_count

ROOT = Path(__file__).resolve().parents[2]
DISSECTOR = ROOT / "tools" / "wireshark" / "ttnet.lua"
FIELDS = ["ttnet.type", "ttnet.msgid", "ttnet.msgtype", "ttnet.num_packets", "ttnet.seq",
          "ttnet.len", "ttnet.crc", "ttnet.crc.computed", "ttnet.crc.status",
          "ttnet.tb.flow", "ttnet.tb.msg", "udp.srcport", "udp.dstport", "_ws.expert.message"]


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(payload: bytes, src: str = "10.210.0.2", dst: str = "10.210.0.3",
             sport: int = 40000, dport: int = 8225) -> bytes:
    """One IPv4/UDP packet around ``payload`` (UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    addr = bytes(int(x) for x in src.split(".")) + bytes(int(x) for x in dst.split("."))
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0) + addr
    header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
    return header + udp


def write_pcap(path: Path, packets: list[bytes]) -> None:
    """A classic pcap (LINKTYPE_RAW: packets start with the IPv4 header)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for i, pkt in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


def dissect(pcap: Path, fields: list[str] = FIELDS) -> list[dict[str, str]]:
    """Each packet of ``pcap`` decoded by tshark with the dissector: the
    first occurrence of each of ``fields``. A Lua error, a read error or a
    cut-short capture fails the test. (The e2e capture test uses it too.)"""
    tshark = shutil.which("tshark")
    assert tshark, "tshark is missing: run `make deps` (scripts/install-deps.sh installs it)"
    cmd = [tshark, "-n", "-X", f"lua_script:{DISSECTOR}", "-r", str(pcap), "-T", "fields",
           "-E", "separator=/t", "-E", "occurrence=f"]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cut short" not in out.stderr, out.stderr
    assert "Lua" not in out.stderr and "rror" not in out.stderr, out.stderr
    return [dict(zip(fields, line.split("\t"), strict=True))
            for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    rng = random.Random(7)
    mid = 0x0102030405060708
    payload = message_bytes(3, 17, 2 * MAX_DATA + 100)       # a testbed message, 3 packets
    chunks = [payload[i:i + MAX_DATA] for i in range(0, len(payload), MAX_DATA)]
    datagrams = [encode_req(mid, packet_count(len(payload))), encode_ack(mid, 0)]
    datagrams += [encode_data(mid, i, c) for i, c in enumerate(chunks)]
    datagrams += [encode_ack(mid, i) for i in range(len(chunks))]
    datagrams += [encode_data(0xFFFFFFFFFFFFFFFF, 2000, b""),          # empty DATA, top id
                  encode_data(7, 5, rng.randbytes(MAX_DATA))]
    broken = bytearray(encode_data(mid, 1, chunks[1]))
    broken[100] ^= 0x10                                          # one flipped bit
    datagrams.append(bytes(broken))
    packets = [ipv4_udp(d, sport=40000 + i % 2 * 8225, dport=8225) for i, d in
               enumerate(datagrams)]
    packets.append(ipv4_udp(encode_ack(mid, 9), sport=50000, dport=8226))   # program port
    packets.append(ipv4_udp(encode_req(0xAB, 1), sport=50000, dport=50001))  # heuristic
    packets.append(ipv4_udp(b"x" * 17, sport=50000, dport=50001))     # not ttnet
    packets.append(ipv4_udp(bytes(broken), sport=50000, dport=50001))  # bad CRC, other port
    pcap = tmp_path_factory.mktemp("dissector") / "t.pcap"
    write_pcap(pcap, packets)
    return datagrams, dissect(pcap)


def test_every_field_of_every_packet(decoded):
    datagrams, rows = decoded
    assert len(rows) == len(datagrams) + 4
    req, ack_start, *rest = rows
    assert req["ttnet.type"] == "0" and req["ttnet.msgid"] == "0x0102030405060708"
    assert (req["ttnet.msgtype"], req["ttnet.num_packets"]) == ("0", "3")
    assert req["ttnet.seq"] == "" and req["ttnet.len"] == ""
    assert req["ttnet.crc"] == "0x" + datagrams[0][-4:].hex()
    assert ack_start["ttnet.type"] == "2" and ack_start["ttnet.seq"] == "0"
    data = rest[:3]
    assert [r["ttnet.type"] for r in data] == ["1"] * 3
    assert [r["ttnet.seq"] for r in data] == ["0", "1", "2"]
    assert [r["ttnet.len"] for r in data] == [str(MAX_DATA), str(MAX_DATA), "100"]
    assert {r["ttnet.msgid"] for r in data} == {"0x0102030405060708"}
    acks = rest[3:6]
    assert [(r["ttnet.type"], r["ttnet.seq"]) for r in acks] == [("2", "0"), ("2", "1"),
                                                                 ("2", "2")]
    empty, full = rest[6:8]
    assert (empty["ttnet.msgid"], empty["ttnet.seq"], empty["ttnet.len"]) == \
        ("0xffffffffffffffff", "2000", "0")
    assert (full["ttnet.msgid"], full["ttnet.len"]) == ("0x0000000000000007", str(MAX_DATA))


def test_the_lua_crc_is_ttnets_and_a_broken_one_is_flagged(decoded):
    datagrams, rows = decoded
    for d, row in zip(datagrams[:-1], rows, strict=False):
        assert int(row["ttnet.crc.computed"], 16) == crc32(d[:-4])
        assert row["ttnet.crc.status"] == "1" and row["_ws.expert.message"] == ""
    bad = rows[len(datagrams) - 1]
    assert bad["ttnet.type"] == "1" and bad["ttnet.seq"] == "1"
    assert bad["ttnet.crc.status"] == "0"
    assert "Bad CRC" in bad["_ws.expert.message"]
    assert int(bad["ttnet.crc"], 16) != int(bad["ttnet.crc.computed"], 16)


def test_the_testbed_header_is_read_from_a_first_data_packet_only(decoded):
    _, rows = decoded
    first, second = rows[2], rows[3]
    assert (first["ttnet.tb.flow"], first["ttnet.tb.msg"]) == ("3", "17")
    assert second["ttnet.tb.flow"] == "" == rows[0]["ttnet.tb.flow"]


def test_ports_and_heuristic(decoded):
    datagrams, rows = decoded
    program, heur, other, bad_other = rows[len(datagrams):]
    assert (program["udp.dstport"], program["ttnet.type"], program["ttnet.seq"]) == \
        ("8226", "2", "9")
    assert (heur["udp.dstport"], heur["ttnet.type"], heur["ttnet.num_packets"]) == \
        ("50001", "0", "1")
    # On another port, only what is clearly ttnet (length fits, CRC checks).
    assert other["ttnet.type"] == "" and bad_other["ttnet.type"] == ""


def test_the_docs_vectors(tmp_path):
    # docs/wire-format.md: REQ of 3 packets and ACK 0 for id 0x0102030405060708.
    req = bytes.fromhex("00 0807060504030201 0000 03000000 27cb1a8c".replace(" ", ""))
    ack = bytes.fromhex("02 0807060504030201 00000000 f2786c14".replace(" ", ""))
    write_pcap(tmp_path / "v.pcap", [ipv4_udp(req), ipv4_udp(ack)])
    rows = dissect(tmp_path / "v.pcap")
    assert [(r["ttnet.type"], r["ttnet.crc"], r["ttnet.crc.status"]) for r in rows] == \
        [("0", "0x27cb1a8c", "1"), ("2", "0xf2786c14", "1")]


def test_fast_start_packets_are_decoded(tmp_path):
    from ttnet.wire import encode_fast
    payload = message_bytes(2, 5, 64)                            # a testbed message
    pcap = tmp_path / "fast.pcap"
    write_pcap(pcap, [ipv4_udp(encode_fast(0xAB, payload)),
                      ipv4_udp(encode_fast(0xAC, b""), sport=50000, dport=50001)])  # heuristic
    fast, empty = dissect(pcap)
    assert (fast["ttnet.type"], fast["ttnet.seq"], fast["ttnet.len"]) == ("3", "0", "64")
    assert (fast["ttnet.tb.flow"], fast["ttnet.tb.msg"]) == ("2", "5")
    assert fast["ttnet.crc.status"] == empty["ttnet.crc.status"] == "1"
    assert (empty["ttnet.type"], empty["ttnet.len"]) == ("3", "0")
