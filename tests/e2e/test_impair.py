"""Impairments measured end to end: two namespaces joined by a veth pair,
the UDP probe in each, the nfqueue engine (this kernel has no netem)."""
from __future__ import annotations

import atexit
import ipaddress
import json
import os
import random
import secrets
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from testbed.emulate import impair
from testbed.emulate.impair import Impairments, ImpairError, detect_engine, netem, rate, rules, sweep
from testbed.emulate.impair.nfqueue import corrupt_packet
from testbed.spec.model import LinkSpec

#: The probe, run as a module (it imports testbed.spec) by this venv's python.
PROBE = ["-m", "testbed.guest.probe"]
PORT = 7474


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for cmd in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        for word in subprocess.run(cmd, capture_output=True, text=True).stdout.split():
            try:
                nets.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                pass
    ids = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True,
                         text=True).stdout.split()
    if ids:
        out = subprocess.run(["docker", "network", "inspect", *ids],
                             capture_output=True, text=True).stdout or "[]"
        for net in json.loads(out):
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                if cfg.get("Subnet", "").count(".") == 3:
                    nets.append(ipaddress.IPv4Network(cfg["Subnet"]))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = [n for n in _used_networks() if n.prefixlen > 0]  # ignore default route
    for third in range(200, 250):
        cand = ipaddress.IPv4Network(f"10.241.{third}.0/30")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError("no free 10.241.x.0/30 subnet for the impairment test")


@dataclass
class Pair:
    run_id: str
    ns_a: str
    ns_b: str
    path_a: str
    path_b: str
    ip_a: str
    ip_b: str
    if_a: str
    if_b: str
    log_dir: Path

    def run(self, ns: str, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *PROBE, *args],
                              capture_output=True, text=True, check=True, **kw)

    def ping(self, **kw) -> dict:
        args = [f"--{k}={v}" for k, v in kw.items()]
        out = self.run(self.ns_a, "ping", self.ip_b, f"--port={PORT}", *args, timeout=120)
        return json.loads(out.stdout)

    def bulk(self, nbytes: int) -> dict:
        out = self.run(self.ns_a, "bulk", self.ip_b, f"--port={PORT}", f"--bytes={nbytes}",
                       "--max-duration=20", timeout=60)
        return json.loads(out.stdout)


@pytest.fixture
def impair_pair(tmp_path):
    """Two fresh namespaces a, b on a veth pair, a probe echo server in b."""
    rid = secrets.token_hex(3)
    net = _free_subnet()
    ip_a, ip_b = (str(h) for h in net.hosts())
    pair = Pair(rid, f"ttnet-{rid}-a", f"ttnet-{rid}-b", f"/run/netns/ttnet-{rid}-a",
                f"/run/netns/ttnet-{rid}-b", ip_a, ip_b, f"tt{rid}a", f"tt{rid}b", tmp_path)
    server = None
    try:
        netns.create(pair.ns_a)
        netns.create(pair.ns_b)
        with IPRoute() as ipr:
            ipr.link("add", ifname=pair.if_a, kind="veth", peer=pair.if_b)
            ipr.link("set", index=ipr.link_lookup(ifname=pair.if_a)[0], net_ns_fd=pair.ns_a)
            ipr.link("set", index=ipr.link_lookup(ifname=pair.if_b)[0], net_ns_fd=pair.ns_b)
        for ns, ifname, ip in ((pair.ns_a, pair.if_a, ip_a), (pair.ns_b, pair.if_b, ip_b)):
            with IPRoute(netns=ns) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=ip, prefixlen=30)
                ipr.link("set", index=idx, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        server = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, sys.executable,
                                   *PROBE, "serve", f"--port={PORT}", "--duration=120"])
        time.sleep(0.3)
        yield pair
    finally:
        if server is not None:
            server.terminate()
            server.wait(5)
        for ns in (pair.ns_a, pair.ns_b):
            if ns in netns.listnetns():
                netns.remove(ns)


def _no_leftovers(pair: Pair, imp: Impairments, pid: int | None) -> None:
    for path, ifname in ((pair.path_a, pair.if_a), (pair.path_b, pair.if_b)):
        assert "ttnet" not in rules.list_rules(path)
        assert "NFQUEUE" not in rules.list_rules(path)
        assert not rate.has_our_root(path, ifname)
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists(), "nfqueue daemon still running"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_20ms_each_way_measures_40ms_median_rtt(impair_pair):
    p = impair_pair
    with Impairments(p.run_id, log_dir=p.log_dir) as imp:
        d = LinkSpec(delay_s=0.020)
        assert imp.apply(p.path_a, p.if_a, {p.ip_b: d}) == "nfqueue"
        imp.apply(p.path_b, p.if_b, {p.ip_a: d})
        res = p.ping(count=300, interval=0.005)
        print("delay 20ms each way:", res)
        assert res["received"] == 300
        assert abs(res["rtt_median_s"] - 0.040) <= 0.001 + 0.05 * 0.040
        assert res["rtt_min_s"] >= 0.040  # a delay is never shortened
        s = imp.stats()["links"][f"{p.path_a}->{p.ip_b}"]
        assert s["seen"] >= 300 and s["delayed"] == s["seen"]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_jitter_spreads_delay_uniformly_around_the_mean(impair_pair):
    p = impair_pair
    with Impairments(p.run_id, seed=5, log_dir=p.log_dir) as imp:
        imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(delay_s=0.010, jitter_s=0.005)})
        res = p.ping(count=400, interval=0.002)
        print("delay 10ms jitter 5ms one way:", res)
        # uniform on [5, 15] ms: 5th/50th/95th percentiles near 5.5/10/14.5 ms
        assert 0.005 <= res["rtt_p05_s"] <= 0.0068
        assert 0.0093 <= res["rtt_median_s"] <= 0.0110
        assert 0.0135 <= res["rtt_p95_s"] <= 0.0158
        # (no bound on the maximum: one scheduling hiccup of the host in 400
        # probes reached 20 ms; p95 already bounds the uniform's top end)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_10pct_loss_a_to_b_only_measures_10pct_forward_loss(impair_pair):
    p = impair_pair
    with Impairments(p.run_id, seed=7, log_dir=p.log_dir) as imp:
        imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(loss=0.10)})
        res = p.ping(count=2000, interval=0.001, timeout=1.0)
        print("loss 10% a->b:", res)
        assert abs(res["loss_forward"] - 0.10) <= 0.03
        assert res["loss_reverse"] == 0
        s = imp.stats()["links"][f"{p.path_a}->{p.ip_b}"]
        lost_pings = 2000 - res["server_received"]
        # the probe's stats queries cross the same link and may be dropped too
        assert lost_pings <= s["dropped"] <= lost_pings + 10


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_same_seed_and_label_replay_the_same_losses(impair_pair):
    p = impair_pair
    received = []
    for run in ("r1", "r2"):
        with Impairments(f"{p.run_id}{run}", seed=11, log_dir=p.log_dir) as imp:
            imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(loss=0.3)}, label="ens-a")
            received.append(p.ping(count=300, interval=0.001, timeout=0.5)["server_received"])
            assert "ens-a->" + p.ip_b in imp.stats()["links"]
    assert received[0] == received[1]
    assert 150 < received[0] < 270


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_10mbit_rate_measures_10mbit_bulk_throughput(impair_pair):
    p = impair_pair
    with Impairments(p.run_id, log_dir=p.log_dir) as imp:
        imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(rate_bps=10e6)})
        res = p.bulk(2_500_000)
        print("rate 10mbit:", res)
        assert res["received_packets"] > 1000
        assert abs(res["rate_bps_ip"] - 10e6) <= 0.15 * 10e6
        assert imp.stats()["links"] == {}  # rate alone needs no daemon


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_duplicate_and_corrupt_are_counted_and_seen_by_receiver(impair_pair):
    p = impair_pair
    with Impairments(p.run_id, seed=3, log_dir=p.log_dir) as imp:
        imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(duplicate=0.3, corrupt=0.2)})
        res = p.ping(count=500, interval=0.002, timeout=1.0)
        s = imp.stats()["links"][f"{p.path_a}->{p.ip_b}"]
        print("duplicate 30% corrupt 20%:", res, s)
        assert 0.2 * s["seen"] <= s["duplicated"] <= 0.4 * s["seen"]
        assert 0.12 * s["seen"] <= s["corrupted"] <= 0.28 * s["seen"]
        # duplicated pings are echoed twice; corrupted ones fail the CRC at
        # the server (checksum zeroed so they reach the application)
        assert res["duplicate_replies"] > 0
        assert res["server_corrupt"] >= s["corrupted"]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_close_removes_rules_qdiscs_and_daemon(impair_pair):
    p = impair_pair
    imp = Impairments(p.run_id, log_dir=p.log_dir)
    imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(delay_s=0.01, rate_bps=5e6)})
    imp.apply(p.path_b, p.if_b, {p.ip_a: LinkSpec(loss=0.5)})
    assert f"ttnet-{p.run_id}-0" in rules.list_rules(p.path_a)
    assert rate.has_our_root(p.path_a, p.if_a)
    pid = imp._daemon.pid
    imp.close()
    _no_leftovers(p, imp, pid)
    imp.close()  # idempotent
    assert p.ping(count=50, interval=0.002)["loss"] == 0


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_close_cleans_up_after_daemon_died(impair_pair):
    p = impair_pair
    imp = Impairments(p.run_id, log_dir=p.log_dir)
    imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(delay_s=0.005)})
    pid = imp._daemon.pid
    os.kill(pid, 9)
    imp._daemon.wait(5)
    # fail closed: with the daemon gone, impaired traffic does not pass
    assert p.ping(count=20, interval=0.005, timeout=0.3)["loss"] == 1
    assert imp.stats()["daemon_alive"] is False
    imp.close()
    _no_leftovers(p, imp, pid)
    assert p.ping(count=20, interval=0.005)["loss"] == 0


@pytest.mark.e2e
def test_detect_engine_is_nfqueue_on_kernel_without_netem(impair_pair):
    p = impair_pair
    assert detect_engine(p.path_a, p.if_a) == "nfqueue"
    assert not rate.has_our_root(p.path_a, p.if_a)


def test_detect_engine_is_netem_when_tc_add_succeeds_and_removes_probe(monkeypatch):
    calls = []

    def fake_tc(ns, args):
        calls.append(args[:2])
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(impair, "_tc", fake_tc)
    assert detect_engine("/proc/self/ns/net", "eth0") == "netem"
    assert calls == [["qdisc", "add"], ["qdisc", "del"]]


def test_detect_engine_is_nfqueue_when_tc_add_fails(monkeypatch):
    monkeypatch.setattr(impair, "_tc", lambda ns, args: subprocess.CompletedProcess(
        args, 2, "", "Error: Specified qdisc kind is unknown."))
    assert detect_engine("/proc/self/ns/net", "eth0") == "nfqueue"


@pytest.mark.parametrize("spec, word", [
    (LinkSpec(loss=1.5), "loss"), (LinkSpec(delay_s=-1), "delay_s"),
    (LinkSpec(rate_bps=0), "rate_bps"), (LinkSpec(corrupt=-0.1), "corrupt")])
def test_bad_link_spec_is_rejected_naming_the_field(spec, word):
    with Impairments("badspec", engine="nfqueue") as imp:
        with pytest.raises(ImpairError, match=word):
            imp.apply("/proc/self/ns/net", "lo", {"10.0.0.1": spec})


def test_bad_destination_and_path_are_rejected():
    with Impairments("badinput", engine="nfqueue") as imp:
        with pytest.raises(ImpairError, match="IPv4"):
            imp.apply("/proc/self/ns/net", "lo", {"host-b": LinkSpec(loss=0.1)})
        with pytest.raises(ImpairError, match="does not exist"):
            imp.apply("/run/netns/ttnet-no-such-ns", "lo", {"10.0.0.1": LinkSpec()})
    with pytest.raises(ImpairError, match="engine"):
        Impairments("x", engine="tc")


def test_netem_plan_has_one_class_per_impaired_destination():
    plans = netem.plan({"10.0.0.2": LinkSpec(delay_s=0.02, jitter_s=0.001, loss=0.1,
                                             rate_bps=1e6, corrupt=0.01),
                        "10.0.0.3": LinkSpec(), "10.0.0.4": LinkSpec(duplicate=0.05)})
    assert [(c.dst, c.rate_bps) for c in plans] == [("10.0.0.2", 1e6), ("10.0.0.4", None)]
    assert plans[0].netem == {"delay": 20000, "jitter": 1000, "loss": 10.0,
                              "duplicate": 0.0, "limit": netem.NETEM_LIMIT,
                              "prob_corrupt": 1.0}
    assert rate.u32_dst_key("10.0.0.2") == "0x0a000002/0xffffffff+16"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_daemon_exits_when_its_parent_goes_away_and_sweep_removes_leftovers(impair_pair):
    p = impair_pair
    imp = Impairments(p.run_id, log_dir=p.log_dir)
    imp.apply(p.path_a, p.if_a, {p.ip_b: LinkSpec(delay_s=0.005, rate_bps=1e6)})
    proc = imp._daemon
    atexit.unregister(imp.close)  # simulate a crashed parent: close() never runs
    proc.stdin.close()  # what the daemon sees when its parent dies
    assert proc.wait(5) == 0
    assert "stopping" in imp.daemon_log.read_text()
    assert sorted(sweep(p.path_a, p.if_a, p.run_id)) == [
        f"chain ttnet-{p.run_id}-0", f"qdisc 7474: on {p.if_a}"]
    _no_leftovers(p, imp, proc.pid)
    assert sweep(p.path_a, p.if_a, p.run_id) == []
    proc.stdout.close()


def _udp_packet(payload: bytes, frag: int = 0) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0xBEEF) + payload


def test_corrupt_flips_one_udp_payload_byte_and_zeroes_checksum():
    raw = _udp_packet(b"\x00" * 100)
    bad = corrupt_packet(raw, random.Random(1))
    assert len(bad) == len(raw) and bad[:26] == raw[:26]
    assert bad[26:28] == b"\x00\x00"  # checksum "not computed": app CRC decides
    assert sum(a != b for a, b in zip(bad[28:], raw[28:])) == 1


def test_corrupt_leaves_truncated_copies_and_later_fragments_alone():
    raw = _udp_packet(b"\x00" * 100)
    assert corrupt_packet(raw[:60], random.Random(1)) is None
    assert corrupt_packet(_udp_packet(b"\x00" * 100, frag=10), random.Random(1)) is None
