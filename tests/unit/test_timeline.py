"""The fault timeline (``events:``): the file format, the links in force over
time, live link changes in the impairment engine (daemon ``set`` op, tc
arguments), the emulator's timeline thread, the simulator's, ``testbed set``'s
control channel, and the latency-over-time plot."""
from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from testbed.spec.model import (EnsembleEvent, HealEvent, LinkEvent, LinkSpec, PartitionEvent,
                                Topology)
from testbed.spec.schema import topology_schema
from testbed.spec.timeline import (describe_event, event_times, initial_links, link_history,
                                   links_at, steps)
from testbed.spec.topology import (EVENT_FIELDS, TopologyError, check_topology_text,
                                   link_change, load_topology_text, parse_assignments,
                                   topology_to_yaml)

REPO = Path(__file__).resolve().parents[2]

BASE = """
ensembles: [a, b, c]
defaults: {delay: 10ms, loss: 2%}
links:
  a->c: {delay: 30ms}
flows:
  - {name: f, from: a, to: b, size: 100, count: 200, interval: 100ms}
"""

TIMELINE = BASE + """
events:
  - {at: 8s, link: a<->b, set: {loss: 2%}}         # out of order: sorted
  - {at: 5s, link: a<->b, set: {loss: 100%}}
  - {at: 10s, link: a->b, set: {delay: 80ms, jitter: 10ms, rate: 10mbit}}
  - {at: 12s, ensemble: c, action: pause}
  - {at: 13.5s, ensemble: c, action: resume}
  - {at: 15s, partition: [[a, b], [c]]}
  - {at: 16s, link: a->c, set: {delay: 5ms}}
  - {at: 17s, heal: true}
  - {at: 18s, ensemble: c, action: kill}
"""


def load(text: str) -> Topology:
    return load_topology_text(text, "t.yaml")


# --- the file format -----------------------------------------------------------

def test_events_are_read_sorted_by_time_with_their_fields():
    t = load(TIMELINE)
    assert [e.at_s for e in t.events] == [5, 8, 10, 12, 13.5, 15, 16, 17, 18]
    assert t.events[0] == LinkEvent(5.0, "a", "b", (("loss", 1.0),), both=True)
    assert t.events[2] == LinkEvent(10.0, "a", "b", (("delay_s", 0.08), ("jitter_s", 0.01),
                                                     ("rate_bps", 10e6)), both=False)
    assert t.events[3] == EnsembleEvent(12.0, "c", "pause")
    assert t.events[5] == PartitionEvent(15.0, (("a", "b"), ("c",)))
    assert t.events[7] == HealEvent(17.0)
    assert load(BASE).events == ()


def test_events_round_trip_through_yaml():
    t = load(TIMELINE)
    text = topology_to_yaml(t)
    assert load(text) == t
    assert "events:" in text and "heal: true" in text
    # equal times keep file order
    tied = load(BASE + "events:\n  - {at: 1s, link: a->b, set: {loss: 5%}}\n"
                "  - {at: 1s, link: a->b, set: {loss: 7%}}\n")
    assert [dict(e.changes)["loss"] for e in tied.events] == [0.05, 0.07]
    assert load(topology_to_yaml(tied)) == tied


def test_unlimited_rate_in_a_set_round_trips():
    t = load(BASE.replace("defaults: {", "defaults: {rate: 1mbit, ")
             + "events:\n  - {at: 1s, link: a<->c, set: {rate: unlimited}}\n")
    assert t.events[0].changes == (("rate_bps", None),)
    assert load(topology_to_yaml(t)) == t
    assert links_at(t, 1.0)[("c", "a")].rate_bps is None


@pytest.mark.parametrize("event, where, words", [
    ("{at: 5s, link: a<->x, set: {loss: 1%}}", "events[0].link", "unknown ensemble 'x'"),
    ("{at: 5s, link: a=>b, set: {loss: 1%}}", "events[0].link", "is not a link"),
    ("{at: 5s, link: a->a, set: {loss: 1%}}", "events[0].link", "to itself"),
    ("{at: 5s, link: a->b}", "events[0].set", "missing required field"),
    ("{at: 5s, link: a->b, set: {}}", "events[0].set", "nothing to set"),
    ("{at: 5s, link: a->b, set: {latency: 3ms}}", "events[0].set.latency", "unknown field"),
    ("{at: 5s, link: a->b, set: {loss: 200%}}", "events[0].set.loss", "outside"),
    ("{at: 5s, link: a->b, set: {delay: 20}}", "events[0].set.delay", "no unit"),
    ("{at: 5s, ensemble: z, action: pause}", "events[0].ensemble", "unknown ensemble"),
    ("{at: 5s, ensemble: c, action: nap}", "events[0].action", "unknown action 'nap'"),
    ("{at: 5s, ensemble: c, action: reboot}", "events[0].action", "unknown action 'reboot'"),
    ("{at: 5s, ensemble: c, action: resume}", "events[0].action", "not paused"),
    ("{at: 5s, partition: [[a, b]]}", "events[0].partition", "two or more groups"),
    ("{at: 5s, partition: [[a, b], []]}", "events[0].partition[1]", "non-empty list"),
    ("{at: 5s, partition: [[a, b], [b]]}", "events[0].partition[1][0]", "in two groups"),
    ("{at: 5s, partition: [[a], [q]]}", "events[0].partition[1][0]", "unknown ensemble"),
    ("{at: 5s, heal: false}", "events[0].heal", "heals nothing"),
    ("{at: 5s, heal: true, partition: [[a], [b]]}", "events[0]", "does one thing"),
    ("{at: 5s}", "events[0]", "nothing to do"),
    ("{link: a->b, set: {loss: 1%}}", "events[0].at", "missing required field"),
    ("{at: -1s, heal: true}", "events[0].at", "negative"),
    ("{at: 5, heal: true}", "events[0].at", "no unit"),
    ("{at: 5s, heal: true, when: 3s}", "events[0].when", "unknown field"),
    ("[5s, heal]", "events[0]", "expected a mapping"),
])
def test_bad_events_are_refused_with_where_and_how(event, where, words):
    with pytest.raises(TopologyError) as err:
        load(BASE + f"events:\n  - {event}\n")
    e = err.value
    assert e.entry == where and words in e.problem, str(e)
    assert e.line == 9 and e.column is not None and e.fix
    assert re.match(r"t\.yaml:9:\d+: ", str(e))


def test_events_must_be_a_list_and_actions_must_make_sense_in_time_order():
    with pytest.raises(TopologyError, match="expected a list"):
        load(BASE + "events: {at: 5s}\n")
    pause_twice = BASE + ("events:\n  - {at: 2s, ensemble: c, action: pause}\n"
                          "  - {at: 1s, ensemble: c, action: pause}\n")
    with pytest.raises(TopologyError, match="already paused") as err:
        load(pause_twice)
    assert err.value.line == 9           # the later one in time (2s), written first
    after_kill = BASE + ("events:\n  - {at: 1s, ensemble: c, action: kill}\n"
                         "  - {at: 2s, ensemble: c, action: pause}\n")
    with pytest.raises(TopologyError, match="killed earlier"):
        load(after_kill)
    assert load(BASE + "events:\n").events == ()


def test_late_events_and_pointless_heals_warn():
    t, warnings = check_topology_text(BASE + "events:\n  - {at: 500s, heal: true}\n",
                                      "t.yaml")
    text = [str(w) for w in warnings]
    assert any("after the planned end" in w and "t.yaml:9:" in w for w in text), text
    assert any("no partition in force" in w for w in text), text
    assert t.events == (HealEvent(500.0),)
    _, quiet = check_topology_text(TIMELINE, "t.yaml")
    assert quiet == []


# --- the links in force over time ------------------------------------------------

def test_steps_say_which_links_change_and_to_what():
    t = load(TIMELINE)
    s = steps(t)
    assert [x.at_s for x in s] == [e.at_s for e in t.events]
    base = LinkSpec(delay_s=0.01, loss=0.02)
    assert s[0].links == {("a", "b"): LinkSpec(delay_s=0.01, loss=1.0),
                          ("b", "a"): LinkSpec(delay_s=0.01, loss=1.0)}
    assert s[1].links == {("a", "b"): base, ("b", "a"): base}
    assert s[2].links == {("a", "b"): LinkSpec(delay_s=0.08, jitter_s=0.01, loss=0.02,
                                               rate_bps=10e6)}
    assert s[3].links == {} and s[3].action == ("c", "pause")
    # the partition drops between the groups, keeping the other fields
    assert set(s[5].links) == {("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")}
    assert s[5].links[("a", "c")] == LinkSpec(delay_s=0.03, loss=1.0)
    # a set during the partition changes the link underneath: still cut
    assert s[6].links == {("a", "c"): LinkSpec(delay_s=0.005, loss=1.0)}
    # heal brings back what the links say, the change included
    assert s[7].links[("a", "c")] == LinkSpec(delay_s=0.005, loss=0.02)
    assert s[7].links[("c", "b")] == base
    assert s[8].action == ("c", "kill") and s[8].links == {}


def test_links_at_and_history():
    t = load(TIMELINE)
    assert links_at(t, 0.0) == initial_links(t)
    assert links_at(t, 4.999)[("a", "b")].loss == 0.02
    assert links_at(t, 5.0)[("a", "b")].loss == 1.0            # events at t apply
    assert links_at(t, 6.0)[("b", "a")].loss == 1.0
    assert links_at(t, 9.0)[("a", "b")] == LinkSpec(delay_s=0.01, loss=0.02)
    assert links_at(t, 15.5)[("c", "a")].loss == 1.0
    assert links_at(t, 15.5)[("a", "b")].delay_s == 0.08       # inside a group: kept
    assert links_at(t, 99)[("a", "c")] == LinkSpec(delay_s=0.005, loss=0.02)
    history = link_history(t, "a", "b")
    assert [at for at, _ in history] == [0.0, 5.0, 8.0, 10.0]
    assert event_times(t) == [5, 8, 10, 12, 13.5, 15, 16, 17, 18]


def test_a_new_partition_replaces_the_one_in_force():
    t = load(BASE + "events:\n  - {at: 1s, partition: [[a], [b]]}\n"
             "  - {at: 2s, partition: [[a], [c]]}\n")
    assert links_at(t, 1.5)[("a", "b")].loss == 1.0
    at2 = links_at(t, 2.0)
    assert at2[("a", "b")].loss == 0.02 and at2[("a", "c")].loss == 1.0
    assert at2[("b", "c")].loss == 0.02          # b in no group: its links stay


def test_describe_event_reads_like_the_file():
    t = load(TIMELINE)
    assert [describe_event(e) for e in t.events[:4]] == [
        "a<->b loss=100%", "a<->b loss=2%", "a->b delay=80ms jitter=10ms rate=10mbit",
        "pause c"]
    assert describe_event(t.events[5]) == "partition a,b | c"
    assert describe_event(t.events[7]) == "heal"


# --- the schema and the docs ---------------------------------------------------

def test_schema_has_the_event_fields_and_docs_mention_them():
    schema = topology_schema()
    assert set(schema["$defs"]["event"]["properties"]) == set(EVENT_FIELDS)
    assert schema["$defs"]["event"]["required"] == ["at"]
    docs = (REPO / "docs" / "topologies.md").read_text(encoding="utf-8")
    for key in EVENT_FIELDS:
        assert f"{key}:" in docs or f"`{key}`" in docs, key
    assert "events:" in docs


def test_schema_accepts_the_timeline_and_refuses_its_shape_errors():
    from tests.unit.test_topology_schema import errors
    assert errors(yaml.safe_load(TIMELINE)) == []
    assert errors(yaml.safe_load(topology_to_yaml(load(TIMELINE)))) == []
    for bad in ("{at: 5s, heal: true, partition: [[a], [b]]}", "{at: 5s, link: a->b}",
                "{at: 5s, ensemble: c, action: nap}", "{at: 5s, partition: [[a]]}",
                "{heal: true}", "{at: 5s, heal: 1}", "{at: 5s, link: a=>b, set: {loss: 1%}}"):
        assert errors(yaml.safe_load(BASE + f"events:\n  - {bad}\n")) != [], bad


def test_the_docs_timeline_example_loads():
    docs = (REPO / "docs" / "topologies.md").read_text(encoding="utf-8")
    example = re.search(r"### Fault timeline.*?```yaml\n(.*?)```", docs, re.S).group(1)
    t = load(BASE + example)
    assert len(t.events) >= 5


# --- `testbed set`'s parsing ----------------------------------------------------

def test_link_change_lays_fields_over_the_spec_in_force():
    t = load(BASE)
    props = parse_assignments(["delay=80ms", "loss=5%"])
    assert props == {"delay": "80ms", "loss": "5%"}
    got = link_change(t.ensembles, "a<->c", props, t.link)
    assert got == {("a", "c"): LinkSpec(delay_s=0.08, loss=0.05),
                   ("c", "a"): LinkSpec(delay_s=0.08, loss=0.05)}
    got = link_change(t.ensembles, "b->a", {"rate": "unlimited", "jitter": "1ms"},
                      lambda s, d: LinkSpec(rate_bps=1e6, delay_s=0.01))
    assert got == {("b", "a"): LinkSpec(delay_s=0.01, jitter_s=0.001)}


@pytest.mark.parametrize("words, match", [
    (["delay"], "key=value"), (["latency=3ms"], "unknown link field"),
    (["delay=3"], "no unit"), (["loss=101%"], "outside"), ([], "nothing to set"),
    (["delay=1ms", "delay=2ms"], "given twice")])
def test_bad_assignments_are_refused(words, match):
    with pytest.raises(TopologyError, match=match):
        parse_assignments(words)


def test_link_change_refuses_unknown_links():
    t = load(BASE)
    for link in ("a->x", "a-b", "a->a"):
        with pytest.raises(TopologyError):
            link_change(t.ensembles, link, {"delay": "1ms"}, t.link)


# --- the verdict daemon's set op -------------------------------------------------

def _daemon_with_queue():
    from testbed.emulate.impair.nfqueue import Daemon
    d = Daemon(seed=7, dup_mark=0x7474)
    links = {socket.inet_aton(ip): d.make_link("a", "a", ip, {"delay_s": 0.01, "loss": 0.1})
             for ip in ("10.0.0.2", "10.0.0.3")}
    nq = SimpleNamespace(netns="/run/netns/x", links=links, label="a", rng_key="a")
    d.queues[99] = nq           # as "add" would register it, without a real queue
    return d, nq


def test_daemon_set_changes_one_link_in_place_keeping_rng_and_counters():
    d, nq = _daemon_with_queue()
    target = nq.links[socket.inet_aton("10.0.0.2")]
    other = nq.links[socket.inet_aton("10.0.0.3")]
    target.rng.random()
    target.counters["seen"] = 5
    rng, state = target.rng, target.rng.getstate()
    reply = d.handle({"op": "set", "netns": "/run/netns/x", "dst": "10.0.0.2",
                      "spec": {"delay_s": 0.08, "jitter_s": 0.01, "loss": 1.0,
                               "duplicate": 0.0, "corrupt": 0.0}})
    assert reply == {"ok": True, "link": "a->10.0.0.2"}
    assert nq.links[socket.inet_aton("10.0.0.2")] is target
    assert (target.delay_s, target.jitter_s, target.loss) == (0.08, 0.01, 1.0)
    assert target.rng is rng and target.rng.getstate() == state
    assert target.counters["seen"] == 5
    assert (other.delay_s, other.loss) == (0.01, 0.1)          # untouched


def test_daemon_set_adds_a_link_seeded_as_add_would():
    d, nq = _daemon_with_queue()
    reply = d.handle({"op": "set", "netns": "/run/netns/x", "dst": "10.0.0.9",
                      "spec": {"loss": 0.5}})
    assert reply["ok"]
    link = nq.links[socket.inet_aton("10.0.0.9")]
    assert link.name == "a->10.0.0.9" and link.loss == 0.5 and link.delay_s == 0
    assert link.rng.random() == random.Random("7:a:10.0.0.9").random()


def test_daemon_set_refuses_unknown_netns_and_keys():
    d, _ = _daemon_with_queue()
    assert not d.handle({"op": "set", "netns": "/run/netns/y", "dst": "10.0.0.2",
                         "spec": {"loss": 0.1}})["ok"]
    reply = d.handle({"op": "set", "netns": "/run/netns/x", "dst": "10.0.0.2",
                      "spec": {"rate_bps": 1e6}})
    assert not reply["ok"] and "rate_bps" in reply["error"]


def test_daemon_set_over_the_control_pipe(tmp_path):
    """serve(): one JSON line in, one out, for the set op as for the others."""
    import io
    import os
    d, nq = _daemon_with_queue()
    d.queues.clear()
    r, w = os.pipe()
    os.write(w, (json.dumps({"op": "set", "netns": "/run/netns/x", "dst": "10.0.0.2",
                             "spec": {"loss": 0.0}}) + "\n" + '{"op": "stop"}\n').encode())
    os.close(w)
    wake_r, _ = os.pipe()
    out = io.StringIO()
    d.serve(os.fdopen(r, "rb"), out, wake_r)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[0]["ok"] is False and "not served" in replies[0]["error"]
    assert replies[1] == {"ok": True}


# --- Impairments.update: tc arguments and daemon calls, with a fake tc ------------

def test_tc_arguments_for_live_changes():
    from testbed.emulate.impair import netem, rate
    spec = LinkSpec(delay_s=0.08, jitter_s=0.01, loss=0.05, duplicate=0.01, corrupt=0.001)
    assert netem.qdisc_args("change", "eth0", 3, spec) == [
        "qdisc", "change", "dev", "eth0", "parent", "7474:3", "handle", "7477:", "netem",
        "limit", "10000", "delay", "80000us", "10000us", "loss", "5%", "duplicate", "1%",
        "corrupt", "0.1%"]
    assert rate.class_args("change", "eth0", 12, 10e6) == [
        "class", "change", "dev", "eth0", "parent", "7474:", "classid", "7474:c", "htb",
        "rate", "10000000bit", "ceil", "10000000bit"]
    assert rate.class_args("change", "eth0", 1, None)[-3:] == [
        "10000000000bit", "ceil", "10000000000bit"]
    assert rate.filter_args("eth0", 2, "10.0.0.3") == [
        "filter", "add", "dev", "eth0", "parent", "7474:", "protocol", "ip", "prio", "1",
        "u32", "match", "ip", "dst", "10.0.0.3/32", "flowid", "7474:2"]


@pytest.fixture
def fake_kernel(monkeypatch):
    """Record tc commands, tree installs, iptables rules and daemon calls."""
    from testbed.emulate import impair
    from testbed.emulate.impair import rate, rules
    calls: list = []
    monkeypatch.setattr(impair, "_tc", lambda ns, args: (
        calls.append(("tc", args)), subprocess.CompletedProcess(args, 0, "", ""))[1])
    monkeypatch.setattr(rate, "install_tree", lambda ns, ifname, plans: calls.append(
        ("tree", [(p.minor, p.dst, p.rate_bps, p.netem is not None) for p in plans])))
    monkeypatch.setattr(rules, "install", lambda ns, chain, q, dsts: calls.append(
        ("rules", chain, list(dsts))))
    monkeypatch.setattr(rules, "add_dst", lambda ns, chain, q, dst: calls.append(
        ("rule", chain, dst)))
    monkeypatch.setattr(rules, "remove", lambda ns, chain: None)
    monkeypatch.setattr(rate, "remove_tree", lambda ns, ifname: False)
    monkeypatch.setattr(impair.Impairments, "_call", lambda self, cmd: (
        calls.append(("daemon", cmd)), {"ok": True, "links": {}})[1])
    return calls


NS = "/proc/self/ns/net"


def test_update_with_netem_changes_class_and_qdisc_in_place(fake_kernel):
    from testbed.emulate.impair import Impairments
    with Impairments("tl01", engine="netem") as imp:
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec(delay_s=0.01), "10.0.0.3": LinkSpec()},
                  label="a")
        assert fake_kernel == [("tree", [(1, "10.0.0.2", None, True)])]
        fake_kernel.clear()
        new = LinkSpec(delay_s=0.05, loss=1.0, rate_bps=1e6)
        imp.update(NS, "eth0", "10.0.0.2", new)
        assert [c[1][:2] for c in fake_kernel] == [["class", "change"], ["qdisc", "change"]]
        assert fake_kernel[0][1][-3:] == ["1000000bit", "ceil", "1000000bit"]
        assert "50000us" in fake_kernel[1][1] and "100%" in fake_kernel[1][1]
        assert imp.link(NS, "10.0.0.2") == new
        fake_kernel.clear()
        imp.update(NS, "eth0", "10.0.0.2", new)              # unchanged: nothing to do
        assert fake_kernel == []
        imp.update(NS, "eth0", "10.0.0.3", LinkSpec(delay_s=0.02))   # clean at start
        assert [c[1][:2] for c in fake_kernel] == [["class", "add"], ["qdisc", "add"],
                                                  ["filter", "add"]]
        assert fake_kernel[0][1][7] == "7474:2"


def test_update_with_nfqueue_uses_the_daemon_and_adds_what_was_missing(fake_kernel):
    from testbed.emulate.impair import Impairments
    with Impairments("tl02", engine="nfqueue") as imp:
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec(delay_s=0.01), "10.0.0.3": LinkSpec(),
                               "10.0.0.4": LinkSpec(rate_bps=1e6)}, label="a")
        kinds = [c[0] for c in fake_kernel]
        assert kinds == ["tree", "daemon", "rules"]
        assert fake_kernel[1][1]["rng_key"] == "a"
        fake_kernel.clear()
        # a queued link: the daemon's set op, nothing else
        imp.update(NS, "eth0", "10.0.0.2", LinkSpec(delay_s=0.05, loss=1.0))
        assert fake_kernel == [("daemon", {"op": "set", "netns": NS, "dst": "10.0.0.2",
                                           "spec": {"delay_s": 0.05, "jitter_s": 0.0,
                                                    "loss": 1.0, "duplicate": 0.0,
                                                    "corrupt": 0.0}})]
        fake_kernel.clear()
        # a clean link gets its daemon link, then its rule, then a rate class
        imp.update(NS, "eth0", "10.0.0.3", LinkSpec(loss=0.5, rate_bps=2e6))
        assert [c[0] for c in fake_kernel] == ["daemon", "rule", "tc", "tc"]
        assert fake_kernel[1] == ("rule", "ttnet-tl02-0", "10.0.0.3")
        assert fake_kernel[2][1][:2] == ["class", "add"] and fake_kernel[2][1][7] == "7474:2"
        assert fake_kernel[3][1][:2] == ["filter", "add"]
        fake_kernel.clear()
        # a rate-only link: its class changes (unlimited: 10 Gbit/s), no daemon
        imp.update(NS, "eth0", "10.0.0.4", LinkSpec())
        assert [c[0] for c in fake_kernel] == ["tc"]
        assert fake_kernel[0][1][:2] == ["class", "change"]
        assert fake_kernel[0][1][-1] == "10000000000bit"


def test_update_on_a_namespace_without_daemon_or_tree_starts_both(fake_kernel):
    from testbed.emulate.impair import Impairments
    with Impairments("tl03", engine="nfqueue") as imp:
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec()}, label="b")
        assert fake_kernel == []
        imp.update(NS, "eth0", "10.0.0.2", LinkSpec(delay_s=0.05, rate_bps=1e6))
        assert [c[0] for c in fake_kernel] == ["daemon", "rules", "tree"]
        assert fake_kernel[0][1]["op"] == "add" and fake_kernel[0][1]["label"] == "b"
        assert fake_kernel[1] == ("rules", "ttnet-tl03-0", ["10.0.0.2"])
        assert fake_kernel[2] == ("tree", [(1, "10.0.0.2", 1e6, False)])


def test_update_refuses_bad_input(fake_kernel):
    from testbed.emulate.impair import Impairments, ImpairError
    with Impairments("tl04", engine="nfqueue") as imp:
        with pytest.raises(ImpairError, match="apply"):
            imp.update(NS, "eth0", "10.0.0.2", LinkSpec())
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec()})
        with pytest.raises(ImpairError, match="loss"):
            imp.update(NS, "eth0", "10.0.0.2", LinkSpec(loss=2.0))
        with pytest.raises(ImpairError, match="eth1"):
            imp.update(NS, "eth1", "10.0.0.2", LinkSpec(loss=0.5))


# --- the emulator's timeline thread, with a fake backend and impairments --------

class FakeImpair:
    def __init__(self):
        self.updates = []

    def update(self, ns, ifname, dst, spec):
        self.updates.append((ns, dst, spec))


class FakeBackend:
    def __init__(self):
        self.actions = []

    def pause(self, name):
        self.actions.append(("pause", name))

    def resume(self, name):
        self.actions.append(("resume", name))

    def kill(self, name):
        self.actions.append(("kill", name))


def test_timeline_runner_applies_events_on_time_and_records_them():
    from testbed.emulate.timeline import TimelineRunner
    t = load(BASE + "events:\n  - {at: 50ms, link: a<->b, set: {loss: 100%}}\n"
             "  - {at: 100ms, ensemble: c, action: pause}\n"
             "  - {at: 150ms, partition: [[a], [c]]}\n")
    hosts = {n: SimpleNamespace(netns_path=f"/ns/{n}", ifname="eth0", ip=f"ip-{n}")
             for n in t.ensembles}
    imp, backend = FakeImpair(), FakeBackend()
    start = time.time() + 0.05
    runner = TimelineRunner(t, hosts, imp, backend, start, start + 60, say=lambda m: None)
    runner.start()
    deadline = time.monotonic() + 5
    while len(runner.applied) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop()
    assert [a["event"] for a in runner.applied] == ["a<->b loss=100%", "pause c",
                                                    "partition a | c"]
    for record in runner.applied:
        assert 0 <= record["t"] - record["at"] < 0.05, record
        assert "error" not in record
    assert ("/ns/a", "ip-b", LinkSpec(delay_s=0.01, loss=1.0)) in imp.updates
    assert {(u[0], u[1]) for u in imp.updates[2:]} == {("/ns/a", "ip-c"), ("/ns/c", "ip-a")}
    # stop() resumes what is still paused
    assert backend.actions == [("pause", "c"), ("resume", "c")]


def test_timeline_runner_records_a_failed_event_and_goes_on():
    from testbed.emulate.timeline import TimelineRunner
    t = load(BASE + "events:\n  - {at: 0s, ensemble: c, action: kill}\n"
             "  - {at: 10ms, link: a->b, set: {delay: 1ms}}\n")

    class Broken(FakeBackend):
        def kill(self, name):
            raise RuntimeError("no such host")
    hosts = {n: SimpleNamespace(netns_path=f"/ns/{n}", ifname="eth0", ip=f"ip-{n}")
             for n in t.ensembles}
    imp = FakeImpair()
    runner = TimelineRunner(t, hosts, imp, Broken(), time.time(), time.time() + 60,
                            say=lambda m: None)
    runner.start()
    deadline = time.monotonic() + 5
    while len(runner.applied) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop()
    assert "no such host" in runner.applied[0]["error"]
    assert "error" not in runner.applied[1] and len(imp.updates) == 1


# --- the simulator ---------------------------------------------------------------

OUTAGE = """
ensembles: [a, b]
defaults: {delay: 10ms}
flows:
  - {name: be, from: a, to: b, size: 100, count: 120, interval: 100ms}
  - {name: rel, from: a, to: b, size: 3000, count: 120, interval: 100ms, ensure: true,
     deadline: 10s}
events:
  - {at: 5.04s, link: a<->b, set: {loss: 100%}}
  - {at: 8.04s, link: a<->b, set: {loss: 0%}}
  - {at: 10.04s, link: a<->b, set: {delay: 50ms}}
"""


def _sim(text: str, seed: int = 1):
    pytest.importorskip("simpy")
    from testbed.simulate.simulator import simulate_events
    events, counters = simulate_events(load(text), 40e-6, seed=seed)
    sends = {(e["flow"], e["msg"]): e["t"] for e in events if e["event"] == "send"}
    got: dict = {}
    for e in events:
        if e["event"] == "deliver":
            got.setdefault((e["flow"], e["msg"]), e["t"])
    return events, sends, got


def test_simulated_outage_delays_ensured_and_loses_best_effort_messages():
    events, sends, got = _sim(OUTAGE)
    during = {k for (f, k), t in sends.items() if f == "be" and 5.04 <= t < 8.04}
    assert during == set(range(51, 81))
    lost = {k for (f, k) in sends if f == "be" and (f, k) not in got}
    assert lost == during                           # exactly the ones sent in the outage
    for k in range(120):                            # every ensured message arrives...
        assert ("rel", k) in got, k
    for k in during:                                # ...those of the outage after it
        assert got[("rel", k)] >= 8.04
    assert not [e for e in events if e["event"] == "fail" and e["ensure"]]
    # the delay change: ~3 one-way trips at 10 ms before, at 50 ms after
    before = [got[("be", k)] - sends[("be", k)] for k in range(10, 50)]
    after = [got[("be", k)] - sends[("be", k)] for k in range(102, 120)]
    assert 0.029 < max(before) < 0.035 and 0.149 < min(after) < 0.16
    # deterministic: the same seed, the same events
    assert _sim(OUTAGE)[0] == events


PAUSE = """
ensembles: [a, b, c]
defaults: {delay: 10ms}
flows:
  - {name: to-b, from: a, to: b, size: 2KB, count: 30, interval: 100ms, ensure: true,
     deadline: 5s}
  - {name: from-b, from: b, to: a, size: 128, count: 30, interval: 100ms}
  - {name: to-c, from: a, to: c, size: 128, count: 30, interval: 100ms}
  - {name: from-c, from: c, to: a, size: 128, count: 30, interval: 100ms}
events:
  - {at: 1.04s, ensemble: b, action: pause}
  - {at: 2.04s, ensemble: b, action: resume}
  - {at: 1.54s, ensemble: c, action: kill}
"""


def test_simulated_pause_holds_messages_until_resume_and_kill_stops_everything():
    events, sends, got = _sim(PAUSE)
    # to a paused ensemble: sent on time, delivered after the resume
    for k in range(11, 21):
        assert 1.04 < sends[("to-b", k)] < 2.04
        assert 2.04 <= got[("to-b", k)] < 2.1
    # from a paused ensemble: due during the pause, sent at the resume
    late = [k for k in range(30) if sends[("from-b", k)] == pytest.approx(2.04)]
    assert late == list(range(11, 21))
    assert all(("from-b", k) in got for k in range(30))
    # a killed ensemble: receives nothing and sends nothing from then on
    assert max(t for (f, _), t in sends.items() if f == "from-c") < 1.54
    assert {k for (f, k) in got if f == "to-c"} == set(range(16))
    assert not [e for e in events if e.get("dst") == "c" and e["event"] == "deliver"
                and e["t"] > 1.54]
    assert not [e for e in events if e["event"] == "fail" and e["ensure"]]


def test_sim_network_set_link_and_interface_faults():
    simpy = pytest.importorskip("simpy")
    from ttnet import LinkParams, SimNetwork, TTNetworkInterfaceSim, TTNetworkMessageSim
    env = simpy.Environment()
    net = SimNetwork(env, LinkParams(delay_s=0.01))
    got = []
    b = TTNetworkInterfaceSim(env, net, "b", receiver_function=lambda m: got.append(env.now))
    a = TTNetworkInterfaceSim(env, net, "a")
    net.set_link("a", "b", LinkParams(delay_s=0.1))
    assert net.params("a", "b").delay_s == 0.1 and net.params("b", "a").delay_s == 0.01
    with pytest.raises(TypeError):
        net.set_link("a", "b", {"delay_s": 0.1})
    a.send(TTNetworkMessageSim("b", b"x"), ensure=True)
    env.run(until=1)
    assert got == [pytest.approx(0.1 + 0.01 + 0.1, abs=1e-3)]     # REQ, ACK_START, DATA
    b.pause()
    assert b.state == "paused"
    a.send(TTNetworkMessageSim("b", b"y"), ensure=True)
    env.run(until=3)
    assert len(got) == 1
    waiter = b.when_running()
    b.resume()
    assert waiter.triggered
    env.run(until=6)
    assert len(got) == 2 and got[1] > 3
    b.kill()
    b.resume()                         # no effect once killed
    assert b.state == "killed" and not b.when_running().triggered
    a.send(TTNetworkMessageSim("b", b"z"))
    env.run(until=10)
    assert len(got) == 2


# --- `testbed set`: the control channel of a held `up` --------------------------

def test_control_request_and_reply(tmp_path):
    from testbed.emulate.control import ControlError, ControlServer, request
    run_dir = tmp_path / "topo" / "20260101-000000-abcd-up"
    seen = []

    def handler(req):
        seen.append(req)
        return {"ok": True, "echo": req["link"]}
    server = ControlServer(run_dir, handler, {"topology": "topo"})
    assert json.loads((run_dir / "control" / "up.json").read_text())["pid"] == os.getpid()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            server.poll()
            time.sleep(0.01)
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert request(run_dir, {"op": "set", "link": "a->b", "set": {}}) == {
            "ok": True, "echo": "a->b"}
    finally:
        stop.set()
        thread.join()
    assert seen == [{"op": "set", "link": "a->b", "set": {}}]
    assert not list((run_dir / "control").glob("re*-*.json"))
    server.close()
    assert not (run_dir / "control").exists()
    with pytest.raises(ControlError, match="no `testbed up`"):
        request(run_dir, {"op": "set"})


def test_control_without_a_live_up(tmp_path):
    from testbed.emulate.control import ControlError, request
    ctl = tmp_path / "t" / "x-up" / "control"
    ctl.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (ctl / "up.json").write_text(json.dumps({"pid": dead.pid}))
    with pytest.raises(ControlError, match="gone"):
        request(ctl.parent, {"op": "set"})
    with pytest.raises(ControlError, match="no `testbed up`"):
        request(tmp_path / "nothing", {"op": "set"})


def test_link_setter_updates_both_directions_over_the_spec_in_force():
    from testbed.emulate.control import link_setter
    t = load(BASE)
    hosts = {n: SimpleNamespace(netns_path=f"/ns/{n}", ifname="eth0", ip=f"ip-{n}")
             for n in t.ensembles}

    class Imp(FakeImpair):
        def link(self, ns, dst):
            return LinkSpec(delay_s=0.01, loss=0.02)
    imp = Imp()
    handle = link_setter(t, hosts, imp)
    reply = handle({"op": "set", "link": "a<->b", "set": {"delay": "80ms"}})
    assert reply["ok"] and set(reply["links"]) == {"a->b", "b->a"}
    assert imp.updates == [("/ns/a", "ip-b", LinkSpec(delay_s=0.08, loss=0.02)),
                           ("/ns/b", "ip-a", LinkSpec(delay_s=0.08, loss=0.02))]
    bad = handle({"op": "set", "link": "a->x", "set": {"delay": "1ms"}})
    assert not bad["ok"] and "unknown ensemble 'x'" in bad["error"]
    assert not handle({"op": "reboot"})["ok"]
    assert not handle({"op": "set", "link": "a->b", "set": {}})["ok"]


def test_cli_set_exits_2_without_a_live_up_or_with_bad_input(tmp_path, capsys, monkeypatch):
    import testbed.emulate.access as access
    import testbed.emulate.net as net
    from testbed.cli import main
    monkeypatch.setattr(access, "STATE_DIR", tmp_path / "up")
    monkeypatch.setattr(net, "RUNS_DIR", tmp_path / "runs")
    root = str(tmp_path)
    assert main(["--results", root, "set", "a->b", "delay=80ms"]) == 2
    assert "testbed up` is holding" in capsys.readouterr().err
    assert main(["--results", root, "set", "a-", "delay=80ms"]) == 2
    assert "quotes" in capsys.readouterr().err
    assert main(["--results", root, "set", "a->b", "delay=80"]) == 2
    assert "no unit" in capsys.readouterr().err
    assert main(["--results", root, "set", "a->b", "dealy=80ms"]) == 2


# --- the report ------------------------------------------------------------------

def test_latency_over_time_plot_and_report_section(tmp_path):
    from testbed.analysis.compare import plot_timeline, write_report
    emu, sim = [], []
    for k in range(20):
        emu.append({"event": "send", "flow": "f", "msg": k, "t": 1000.0 + k * 0.1})
        sim.append({"event": "send", "flow": "f", "msg": k, "t": k * 0.1, "replication": 0})
        if not 5 <= k < 10:
            emu.append({"event": "deliver", "flow": "f", "msg": k, "t": 1000.03 + k * 0.1})
            sim.append({"event": "deliver", "flow": "f", "msg": k, "t": 0.03 + k * 0.1,
                        "replication": 0})
    sim.append({"event": "send", "flow": "f", "msg": 1, "t": 9.0, "replication": 1})
    plots = plot_timeline(emu, sim, tmp_path, 1000.0, [(0.5, "a<->b loss=100%"),
                                                       (1.0, "a<->b loss=0%")], title="t")
    assert [p.name for p in plots] == ["latency-time.png"] and plots[0].stat().st_size > 1000
    report = write_report(tmp_path, [], [], ["a note"], timeline=plots)
    text = report.read_text()
    assert "## Latency over time" in text and "![latency-time](latency-time.png)" in text


def test_delay_floor_uses_the_lowest_delay_of_the_timeline():
    from testbed.analysis.compare import delay_floor_violations
    t = load(BASE + "events:\n  - {at: 1s, link: a<->b, set: {delay: 1ms}}\n")
    events = [{"event": "send", "flow": "f", "msg": 0, "src": "a", "dst": "b", "t": 0.0},
              {"event": "deliver", "flow": "f", "msg": 0, "src": "a", "dst": "b",
               "t": 0.002}]
    assert delay_floor_violations(t, events) == []
    assert delay_floor_violations(load(BASE), events) != []


def test_apply_installs_ahead_what_later_specs_need(fake_kernel):
    from testbed.emulate.impair import Impairments
    with Impairments("tl05", engine="nfqueue") as imp:
        cut = LinkSpec(loss=1.0)
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec(), "10.0.0.3": LinkSpec()}, label="a",
                  later={"10.0.0.2": [cut, LinkSpec()], "10.0.0.3": [LinkSpec(rate_bps=1e6)]})
        assert [c[0] for c in fake_kernel] == ["tree", "daemon", "rules"]
        assert fake_kernel[0] == ("tree", [(1, "10.0.0.3", None, False)])
        assert set(fake_kernel[1][1]["links"]) == {"10.0.0.2"}
        assert fake_kernel[2] == ("rules", "ttnet-tl05-0", ["10.0.0.2"])
        fake_kernel.clear()
        imp.update(NS, "eth0", "10.0.0.2", cut)          # the event: one daemon call
        imp.update(NS, "eth0", "10.0.0.3", LinkSpec(rate_bps=1e6))   # one tc call
        assert [(c[0], c[1]["op"] if c[0] == "daemon" else c[1][:2]) for c in fake_kernel] \
            == [("daemon", "set"), ("tc", ["class", "change"])]
    with Impairments("tl06", engine="netem") as imp:
        fake_kernel.clear()
        imp.apply(NS, "eth0", {"10.0.0.2": LinkSpec()}, later={"10.0.0.2": [cut]})
        assert fake_kernel == [("tree", [(1, "10.0.0.2", None, True)])]


def test_run_installs_the_timeline_links_ahead():
    from testbed.emulate.run import _later_specs
    t = load(BASE + "events:\n  - {at: 1s, partition: [[a], [b]]}\n  - {at: 2s, heal: true}\n")
    hosts = {n: SimpleNamespace(name=n, ip=f"ip-{n}") for n in t.ensembles}
    later = _later_specs(t, "a", hosts)
    assert later == {"ip-b": [LinkSpec(delay_s=0.01, loss=1.0), LinkSpec(delay_s=0.01,
                                                                         loss=0.02)],
                     "ip-c": []}
    assert _later_specs(load(BASE), "a", hosts) == {}
