"""ttnet under hostile networks: two namespaces on a veth pair, a ttnet
process in each (``fault_peer.py``), impairments from ``testbed.emulate.impair``
(the nfqueue engine on this kernel), crashes by SIGKILL, outages by
iptables DROP rules.

Each test checks the outcome from the processes' JSON logs: which message
arrived (by digest), which send failed and why, and what the engines still
hold afterwards.
"""
from __future__ import annotations

import importlib.util
import json
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyroute2 import IPRoute, netns  # noqa: E402

from testbed.emulate.impair import Impairments  # noqa: E402
from testbed.spec.model import LinkSpec  # noqa: E402

PEER = Path(__file__).with_name("fault_peer.py")
_spec = importlib.util.spec_from_file_location("fault_peer", PEER)
fault_peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_peer)

PORT_A, PORT_B = 8425, 8225

pytestmark = pytest.mark.e2e     # needs root for namespaces (make test runs as root)


# --------------------------------------------------------------------- plumbing
@dataclass
class Proc:
    """A fault_peer process in a namespace and its JSON log."""

    popen: subprocess.Popen
    log: Path

    def events(self, ev: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue                    # a line cut by SIGKILL
            if ev is None or obj.get("ev") == ev:
                out.append(obj)
        return out

    def last(self, ev: str) -> dict | None:
        evs = self.events(ev)
        return evs[-1] if evs else None

    def wait_for(self, pred, timeout: float, what: str, poll: float = 0.05):
        """Poll ``pred()`` until truthy (returned) or fail naming ``what``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = pred()
            if got:
                return got
            if self.popen.poll() is not None and not pred():
                break
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                             f"exit={self.popen.poll()} log tail={self.events()[-3:]}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


@dataclass
class Net:
    run_id: str
    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str
    if_a: str
    if_b: str
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def path_a(self) -> str:
        return f"/run/netns/{self.ns_a}"

    @property
    def path_b(self) -> str:
        return f"/run/netns/{self.ns_b}"

    def _spawn(self, ns: str, name: str, *args: str) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.jsonl"
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(PEER), *args, f"--out={log}"],
            stdin=subprocess.DEVNULL)
        proc = Proc(popen, log)
        self.procs.append(proc)
        proc.wait_for(lambda: proc.last("ready"), 15, f"{name} ready")
        return proc

    def receiver(self, *extra: str) -> Proc:
        """fault_peer recv in namespace b on PORT_B."""
        return self._spawn(self.ns_b, "recv", "recv", f"--bind={self.ip_b}",
                           f"--port={PORT_B}", *extra)

    def sender(self, phases: list[dict], *extra: str) -> Proc:
        """fault_peer send in namespace a on PORT_A, towards b."""
        plan = self.tmp / f"plan-{len(self.procs)}.json"
        plan.write_text(json.dumps({"phases": phases}))
        return self._spawn(self.ns_a, "send", "send", f"--bind={self.ip_a}",
                           f"--port={PORT_A}", f"--dst={self.ip_b}", f"--dport={PORT_B}",
                           f"--plan={plan}", *extra)

    def iptables(self, ns: str, *rule: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", *rule],
                       check=True, capture_output=True, text=True)


@pytest.fixture
def net(tmp_path):
    """Namespaces a and b on a veth pair (10.242.x.0/30); every process
    started through it is killed and both namespaces removed on the way out,
    pass or fail. Addresses live only inside the namespaces, so concurrent
    runs with the same subnet do not collide."""
    rid = secrets.token_hex(3)
    third = random.randrange(0, 256)
    n = Net(rid, f"ttf-{rid}-a", f"ttf-{rid}-b", f"10.242.{third}.1", f"10.242.{third}.2",
            f"ttf{rid}a", f"ttf{rid}b", tmp_path)
    try:
        netns.create(n.ns_a)
        netns.create(n.ns_b)
        with IPRoute() as ipr:
            ipr.link("add", ifname=n.if_a, kind="veth", peer=n.if_b)
            ipr.link("set", index=ipr.link_lookup(ifname=n.if_a)[0], net_ns_fd=n.ns_a)
            ipr.link("set", index=ipr.link_lookup(ifname=n.if_b)[0], net_ns_fd=n.ns_b)
        for ns, ifname, ip in ((n.ns_a, n.if_a, n.ip_a), (n.ns_b, n.if_b, n.ip_b)):
            with IPRoute(netns=ns) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=ip, prefixlen=30)
                ipr.link("set", index=idx, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield n
    finally:
        for p in n.procs:
            try:
                p.kill()
            except Exception:
                pass
        for ns in (n.ns_a, n.ns_b):
            if ns in netns.listnetns():
                netns.remove(ns)


def expected_digests(messages: list[list[int]]) -> dict[int, str]:
    return {mid: fault_peer.digest(fault_peer.make_payload(mid, size)) for mid, size in messages}


def mixed_sizes(n: int, seed: int) -> list[list[int]]:
    """``n`` message sizes: 95 % small, log-uniform 64 B..16 KB (tokens and
    control messages), 5 % large, log-uniform 64 KB..2 MB, with message 0
    exactly 2 MB so the largest size is always covered. Log-uniform keeps
    the total moderate (seed 5: 34.5 MB for 1000 messages, ~90 % of it in
    the ~50 large ones) while spreading over five orders of magnitude."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i == 0:
            size = 2 * 1024 * 1024
        elif rng.random() < 0.05:
            size = int(2 ** rng.uniform(16, 21))
        else:
            size = int(2 ** rng.uniform(6, 14))
        out.append([i, size])
    return out


# ------------------------------------------------------------------------ tests
@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_1000_ensured_messages_survive_loss_duplication_reordering_corruption(net):
    """30 % loss, 5 % duplication, 1 % corruption and 1-5 ms jitter (which
    reorders) on both directions: every message arrives exactly once with
    its digest, no send fails, and retransmission did the work."""
    messages = mixed_sizes(1000, seed=5)
    want = expected_digests(messages)
    total = sum(s for _, s in messages)
    hostile = LinkSpec(delay_s=0.003, jitter_s=0.002, loss=0.30, duplicate=0.05, corrupt=0.01)
    # Duplication on the ACK path too: a network copy of ACK_START looks
    # exactly like ACK(0); the engine treats ACK(0)s within the path's
    # measured delay variation of ACK_START as echoes (docs/guarantees.md).
    acks = hostile
    with Impairments(net.run_id, seed=9, log_dir=net.tmp) as imp:
        imp.apply(net.path_a, net.if_a, {net.ip_b: hostile}, label="a")
        imp.apply(net.path_b, net.if_b, {net.ip_a: acks}, label="b")
        recv = net.receiver("--status-every=1")
        t0 = time.monotonic()
        # 64 unfinished sends at a time: the round-robin scheduler must not
        # starve the large ones past the receiver's 15 s idle timeout.
        send = net.sender([{"messages": messages, "deadline_s": 150, "concurrency": 64}])
        phase = send.wait_for(lambda: send.last("phase"), 200, "all sends to finish", poll=0.5)
        elapsed = time.monotonic() - t0
        assert send.popen.wait(20) == 0
        link_stats = imp.stats()["links"]
    recv.wait_for(lambda: len(recv.events("msg")) >= len(messages), 10, "all deliveries")
    time.sleep(0.5)                                   # a late duplicate would show now
    assert recv.stop() == 0

    results = send.events("result")
    failed = [r for r in results if not r["ok"]]
    got = recv.events("msg")
    ids = [m["id"] for m in got]
    sc = phase["counters"]
    rc = recv.last("final")["counters"]
    print(f"\n1000 msgs, {total / 1e6:.1f} MB, {elapsed:.1f}s "
          f"({total * 8 / elapsed / 1e6:.2f} Mbit/s goodput)")
    print("sender:", {k: sc.get(k, 0) for k in (
        "data_sent", "data_retransmitted", "req_sent", "req_retransmitted", "rto_expired",
        "fast_retransmit", "dropped_crc", "ack_duplicate", "send_errors")})
    print("receiver:", {k: rc.get(k, 0) for k in (
        "messages_delivered", "dropped_crc", "data_duplicate", "req_duplicate_ignored",
        "req_duplicate_completed", "data_duplicate_completed", "dropped_malformed")})
    print("links:", link_stats)

    assert failed == [], f"{len(failed)} sends failed, first: {failed[:3]}"
    assert len(results) == len(messages)
    assert sorted(ids) == sorted(want), "a message is missing or was delivered twice"
    bad = [m["id"] for m in got if m["sha"] != want[m["id"]]]
    assert bad == [], f"content corrupted in messages {bad[:10]}"
    assert sc["data_retransmitted"] > 0 and sc["req_retransmitted"] > 0
    # the impairments really happened, and the CRC caught what was corrupted
    a_link, b_link = link_stats[f"a->{net.ip_b}"], link_stats[f"b->{net.ip_a}"]
    for s in (a_link, b_link):
        assert 0.25 * s["seen"] < s["dropped"] < 0.35 * s["seen"]
        assert s["corrupted"] > 0
    assert a_link["duplicated"] > 0 and b_link["duplicated"] > 0
    assert rc.get("dropped_crc", 0) + rc.get("dropped_malformed", 0) > 0
    assert sc.get("dropped_crc", 0) + sc.get("dropped_malformed", 0) > 0
    assert rc.get("data_duplicate", 0) + rc.get("data_duplicate_completed", 0) > 0
    final = recv.last("final")
    assert final["reserved"] == 0 and final["pending_receives"] == 0


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_receiver_killed_mid_transfer_fails_send_at_deadline_then_restart_delivers(net):
    """SIGKILL the receiver while a 20 MB message is on a 40 Mbit/s link:
    the send fails at its deadline saying how far it got, the sender keeps
    no state, and once a receiver is back on the same port new messages get
    through. Afterwards no ttnet thread is left in the sender."""
    deadline = 4.0
    go = net.tmp / "restarted"
    big = [[1, 20_000_000]]
    after = [[2, 64], [3, 50_000], [4, 1_500_000]]
    with Impairments(net.run_id, log_dir=net.tmp) as imp:
        imp.apply(net.path_a, net.if_a, {net.ip_b: LinkSpec(rate_bps=40e6)})
        recv = net.receiver("--status-every=0.05")
        send = net.sender([{"messages": big, "deadline_s": deadline},
                           {"messages": after, "deadline_s": 20, "wait_file": str(go)}])
        t_send = send.last("ready")["t"]
        recv.wait_for(lambda: any(s.get("counters", {}).get("data_received", 0) > 1000
                                  for s in recv.events("status")), 10,
                      "the large transfer to be under way")
        recv.kill()
        t_kill = time.monotonic()
        phase0 = send.wait_for(lambda: send.last("phase"), 15, "the large send to fail")
        (res,) = send.events("result")
        print(f"\nfailure after {res['t'] - t_send:.2f}s (deadline {deadline}s, "
              f"killed at {t_kill - t_send:.2f}s): {res['reason']}")
        assert res["ok"] is False and res["done"] is True
        assert res["reason"].startswith("deadline:") and "packets acknowledged" in res["reason"]
        acked, total = map(int, res["reason"].split()[1].split("/"))
        assert 0 < acked < total == 16667
        assert deadline - 0.1 <= res["t"] - t_send <= deadline + 1.5
        assert phase0["pending_sends"] == 0

        recv2 = net.receiver("--status-every=0.5")
        go.touch()
        send.wait_for(lambda: len(send.events("phase")) == 2, 30, "sends after the restart")
        assert send.popen.wait(10) == 0
    results = send.events("result")[1:]
    assert [r["ok"] for r in results] == [True, True, True], results
    recv2.wait_for(lambda: len(recv2.events("msg")) == 3, 5, "deliveries after restart")
    want = expected_digests(after)
    assert {m["id"]: m["sha"] for m in recv2.events("msg")} == want
    final = send.last("final")
    assert final["pending_sends"] == 0
    assert [t for t in final["threads"] if t.startswith("ttnet")] == []
    assert final["counters"]["messages_failed"] == 1


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_sender_killed_mid_transfer_receiver_drops_it_after_idle_timeout(net):
    """SIGKILL the sender of a 20 MB message halfway: the receiver gives the
    half message up after incoming_idle_timeout_s (1 s here) and releases
    its reservation and buffers; it still receives from a new sender."""
    idle = 1.0
    with Impairments(net.run_id, log_dir=net.tmp) as imp:
        imp.apply(net.path_a, net.if_a, {net.ip_b: LinkSpec(rate_bps=40e6)})
        recv = net.receiver(f"--idle-timeout={idle}", "--status-every=0.05")
        base_rss = recv.last("ready")["rss"]
        send = net.sender([{"messages": [[1, 20_000_000]], "deadline_s": 30}])
        holding = recv.wait_for(
            lambda: [s for s in recv.events("status")
                     if s.get("counters", {}).get("data_received", 0) > 3000], 15,
            "a third of the message to arrive")[0]
        send.kill()
        t_kill = time.monotonic()
        freed = recv.wait_for(
            lambda: [s for s in recv.events("status")
                     if s["t"] > t_kill and s.get("pending_receives") == 0], 10,
            "the half message to be dropped")[0]
    print(f"\nheld {holding['reserved']} B reserved, rss {holding['rss'] / 1e6:.1f} MB "
          f"(start {base_rss / 1e6:.1f} MB); freed {freed['t'] - t_kill:.2f}s after the kill, "
          f"rss then {freed['rss'] / 1e6:.1f} MB")
    assert holding["reserved"] == 20_000_400 and holding["pending_receives"] == 1
    assert freed["reserved"] == 0
    assert freed["counters"]["incoming_expired"] == 1
    assert freed["counters"].get("messages_delivered", 0) == 0
    # idle timer runs from the last packet, which came just before the kill
    assert idle - 0.3 <= freed["t"] - t_kill <= idle + 1.0
    # the packets are released: RSS stays near what was held (the allocator
    # keeps freed pages for reuse; holding all 20 MB would be the leak)
    assert freed["rss"] - base_rss < 10_000_000

    send2 = net.sender([{"messages": [[7, 3000]], "deadline_s": 10}])
    send2.wait_for(lambda: send2.last("phase"), 15, "a new sender's message")
    recv.wait_for(lambda: recv.events("msg"), 5, "delivery from the new sender")
    assert [m["id"] for m in recv.events("msg")] == [7]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_messages_sent_during_a_5s_outage_arrive_when_the_link_returns(net):
    """The link is cut (iptables DROP of the peer's packets in both
    namespaces: packets vanish, nothing reports an error) for 5 s, while a
    2 MB transfer is mid-way and while 50 more messages are sent. With a
    20 s deadline every one of them arrives after the link returns."""
    go = net.tmp / "cut"
    first = [[0, 2_000_000], [1, 100]]
    during = mixed_sizes(50, seed=3)
    during = [[100 + i, min(s, 300_000)] for i, s in during]
    rule_a = ("INPUT", "-s", net.ip_b, "-j", "DROP")
    rule_b = ("INPUT", "-s", net.ip_a, "-j", "DROP")
    with Impairments(net.run_id, log_dir=net.tmp) as imp:
        # 10 Mbit/s so the 2 MB message takes ~1.7 s and is cut mid-way
        imp.apply(net.path_a, net.if_a, {net.ip_b: LinkSpec(rate_bps=10e6)})
        recv = net.receiver("--status-every=0.1")
        send = net.sender([{"messages": first, "deadline_s": 20, "join": False},
                           {"messages": during, "deadline_s": 20, "wait_file": str(go)}])
        recv.wait_for(lambda: any(s.get("counters", {}).get("data_received", 0) > 300
                                  for s in recv.events("status")), 10, "transfer to start")
        net.iptables(net.ns_a, "-I", *rule_a)
        net.iptables(net.ns_b, "-I", *rule_b)
        t_cut = time.monotonic()
        try:
            go.touch()
            time.sleep(5.0)
            mid = recv.last("status")
            assert mid["counters"].get("messages_delivered", 0) <= 1  # the 100 B one
        finally:
            net.iptables(net.ns_a, "-D", *rule_a)
            net.iptables(net.ns_b, "-D", *rule_b)
        t_back = time.monotonic()
        send.wait_for(lambda: send.last("phase"), 30, "all sends to finish")
    results = send.events("result")
    recv.wait_for(lambda: len(recv.events("msg")) >= len(first) + len(during), 5,
                  "all deliveries")
    msgs = recv.events("msg")
    last_arrival = max(m["t"] for m in msgs) - t_back
    counters = send.last("final")["counters"]
    print(f"\noutage {t_back - t_cut:.1f}s; all {len(msgs)} delivered "
          f"{last_arrival:.2f}s after the link returned; sender "
          f"rto_expired={counters.get('rto_expired')} "
          f"req_retransmitted={counters.get('req_retransmitted')} "
          f"data_retransmitted={counters.get('data_retransmitted')}")
    assert [r for r in results if not r["ok"]] == []
    want = expected_digests(first + during)
    assert sorted(m["id"] for m in msgs) == sorted(want)
    assert all(m["sha"] == want[m["id"]] for m in msgs)
    assert any(m["id"] == 0 and m["t"] > t_back for m in msgs), "2 MB message was not cut"
    assert counters["req_retransmitted"] > 0 and counters["data_retransmitted"] > 0
