"""Packet captures of emulated runs (``capture: true`` / ``run --capture``),
decoded by tshark with tools/wireshark/ttnet.lua and checked against what
the flows sent: every message's REQ announces as many packets as its size
needs, its DATA packets carry sequence numbers 0..n-1 with the message's
bytes, the receiver ACKs each, message ids agree across REQ/DATA/ACK, every
CRC checks, and the sender's and receiver's pcaps show the same packets
(the links lose nothing here). Also: an interrupted run still leaves
complete pcaps.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from ttnet.wire import MAX_DATA, packet_count

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ["ip.src", "ip.dst", "ttnet.type", "ttnet.msgid", "ttnet.num_packets", "ttnet.seq",
          "ttnet.len", "ttnet.crc.status", "ttnet.tb.flow", "ttnet.tb.msg"]
SIZES = [100, 1200, 1201, 5000, 30000]
COUNT = 10
TOPOLOGY = f"""\
name: captured
description: Two ensembles, capture on; sizes around the 1200-byte DATA limit.
seed: 5
ensembles: [a, b]
defaults: {{delay: 2ms}}
{{capture}}
flows:
  - {{name: bulk, from: a, to: b, sizes: {SIZES}, count: {COUNT}, interval: 50ms,
      ensure: true, deadline: 10s}}
  - {{name: tokens, from: b, to: a, size: 64, count: {COUNT}, interval: 50ms, ensure: false,
      deadline: 2s}}
"""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def decode(pcap: Path) -> list[dict[str, str]]:
    from tests.unit.test_wireshark_dissector import dissect
    return dissect(pcap, FIELDS)


def own_resources(tag: str) -> list[str]:
    out = []
    for kind in ("ps", "network"):
        cmd = ["docker", kind, *(["-a"] if kind == "ps" else ["ls"]),
               "--filter", f"label=ttnet.run={tag}", "-q"]
        out += subprocess.run(cmd, capture_output=True, text=True).stdout.split()
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [line for line in ns.splitlines() if line.startswith(f"ttnet-{tag}-")]
    return out


def check_capture(run_dir: Path) -> None:
    meta = json.loads((run_dir / "meta.json").read_text())
    ips = meta["hosts"]
    for name in ("a", "b"):
        stats = meta["capture"][name]
        assert stats["complete"] and stats["dropped_by_kernel"] == 0, stats
        assert stats["captured"] > 0
    rows = {name: decode(run_dir / "capture" / f"{name}.pcap") for name in ("a", "b")}
    for name, got in rows.items():
        assert got, f"{name}.pcap is empty"
        assert all(r["ttnet.type"] in ("0", "1", "2") for r in got), "a datagram not decoded"
        assert {r["ttnet.crc.status"] for r in got} == {"1"}
        # Only this ensemble's traffic.
        assert all(ips[name] in (r["ip.src"], r["ip.dst"]) for r in got)

    # What a sent, seen in a's own pcap; the ACKs b sent back, seen there too.
    sent = [r for r in rows["a"] if r["ip.src"] == ips["a"]]
    acks = [r for r in rows["a"] if r["ip.src"] == ips["b"] and r["ttnet.type"] == "2"]
    reqs = {r["ttnet.msgid"]: int(r["ttnet.num_packets"]) for r in sent
            if r["ttnet.type"] == "0"}
    data: dict[str, dict[int, int]] = defaultdict(dict)
    which: dict[str, tuple[int, int]] = {}
    for r in sent:
        if r["ttnet.type"] == "1":
            data[r["ttnet.msgid"]][int(r["ttnet.seq"])] = int(r["ttnet.len"])
            if r["ttnet.tb.msg"]:
                which[r["ttnet.msgid"]] = (int(r["ttnet.tb.flow"]), int(r["ttnet.tb.msg"]))
    # a sends flow 0 (bulk) only; b's flow 1 comes the other way.
    assert sorted(which.values()) == [(0, k) for k in range(COUNT)]
    assert set(data) == set(reqs) == set(which)          # ids agree between REQ and DATA
    for mid, (_, k) in which.items():
        size = SIZES[k % len(SIZES)]
        n = packet_count(size)
        assert reqs[mid] == n, (k, size)
        assert sorted(data[mid]) == list(range(n))
        assert [data[mid][i] for i in range(n)] == \
            [MAX_DATA] * (n - 1) + [size - MAX_DATA * (n - 1)]
        acked = {int(r["ttnet.seq"]) for r in acks if r["ttnet.msgid"] == mid}
        assert acked == set(range(n)), (k, sorted(acked))

    # b's tokens (best effort, 64 B: one DATA each), seen arriving in a's pcap.
    tokens = {r["ttnet.tb.msg"] for r in rows["a"]
              if r["ip.src"] == ips["b"] and r["ttnet.type"] == "1" and r["ttnet.tb.flow"] == "1"}
    assert tokens == {str(k) for k in range(COUNT)}

    # No loss on these links: b's pcap holds every packet a's pcap holds.
    def key(r):
        return (r["ip.src"], r["ttnet.type"], r["ttnet.msgid"], r["ttnet.seq"],
                r["ttnet.num_packets"])
    assert {key(r) for r in rows["a"]} == {key(r) for r in rows["b"]}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("backend,how", [("netns", "topology"), ("docker", "flag")])
def test_a_captured_run_decodes_to_what_was_sent(tmp_path, backend, how):
    topo = tmp_path / "captured.yaml"
    topo.write_text(TOPOLOGY.replace("{capture}", "capture: true" if how == "topology"
                                     else ""))
    args = ["run", str(topo), "--backend", backend, "--no-compare", "--results",
            str(tmp_path / "results")]
    if how == "flag":
        args.append("--capture")
    out = cli(*args)
    (run_dir,) = (tmp_path / "results" / "captured").iterdir()
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "packet captures in" in out.stdout + out.stderr
        check_capture(run_dir)
    finally:
        tag = json.loads((run_dir / "meta.json").read_text())["backend_run_id"]
        assert own_resources(tag) == []


@pytest.mark.timeout(300)
def test_an_interrupted_run_leaves_complete_pcaps(tmp_path):
    topo = tmp_path / "captured.yaml"
    topo.write_text(TOPOLOGY.replace("{capture}", "capture: true")
                    .replace(f"count: {COUNT}", "count: 2000"))
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(topo), "--backend",
                             "netns", "--no-compare", "--results", str(tmp_path / "results")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "running flows" in line:
                break
        assert "running flows" in "".join(seen), "".join(seen)
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, rest
    (run_dir,) = (tmp_path / "results" / "captured").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    for name in ("a", "b"):
        assert meta["capture"][name]["exit_code"] == 0, meta["capture"]   # SIGINT, not gone
        assert meta["capture"][name]["ended"] == "stopped"
        rows = decode(run_dir / "capture" / f"{name}.pcap")     # complete: tshark reads it all
        assert len(rows) == meta["capture"][name]["captured"] > 20
        assert {r["ttnet.crc.status"] for r in rows} == {"1"}
