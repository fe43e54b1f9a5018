"""Topology files: units, validation messages, round trip, shipped files."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.spec.topology import (TopologyError, find_topology, list_topologies,
                              load_topology, load_topology_text, topology_to_yaml)
from testbed.spec.units import (UnitError, format_duration, format_rate, format_size,
                           parse_duration, parse_percent, parse_rate, parse_size)

REPO = Path(__file__).resolve().parents[2]
TOPO_DIR = REPO / "topologies"

BASE = """
ensembles: [a, b, c]
defaults: {delay: 20ms, loss: 2%}
links:
  a->b: {loss: 5%}
flows:
  - {name: f1, from: a, to: b, size: 1200, count: 50, interval: 100ms}
"""


def load(text: str) -> Topology:
    return load_topology_text(textwrap.dedent(text), "test.yaml")


def error_for(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(text)
    return info.value


# --- units ------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("20ms", 0.02), ("1.5s", 1.5), ("500us", 0.0005), ("500µs", 0.0005),
    ("2min", 120.0), (0, 0.0), ("0", 0.0), ("20 ms", 0.02), ("1.5MS", 0.0015),
])
def test_duration_units_convert_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, fraction", [("2%", 0.02), ("0.1%", 0.001),
                                            (2, 0.02), ("100%", 1.0), ("0%", 0.0)])
def test_percentages_become_fractions(text, fraction):
    assert parse_percent(text) == fraction


@pytest.mark.parametrize("text, bps", [("10mbit", 10e6), ("1gbit", 1e9),
                                       ("200kbit", 200e3), ("10Mbit", 10e6),
                                       ("64bit", 64.0), ("10mbit/s", 10e6),
                                       (None, None), ("unlimited", None)])
def test_rates_are_decimal_bits_per_second(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text, size", [(1200, 1200), ("200KB", 200_000),
                                        ("200KiB", 204_800), ("3MB", 3_000_000),
                                        ("1MiB", 1_048_576), ("1.5KB", 1500),
                                        ("64B", 64), ("200kb", 200_000)])
def test_sizes_kb_is_1000_and_kib_is_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("parser, text, hint", [
    (parse_duration, "20", "no unit"), (parse_duration, "20 fortnights", "unknown"),
    (parse_percent, "2x", "unknown"), (parse_percent, "101%", "outside"),
    (parse_rate, "10mbps", "ambiguous"), (parse_rate, "10", "no unit"),
    (parse_rate, "0mbit", "not positive"), (parse_size, "1.5B", "whole number"),
    (parse_size, "3 parsecs", "unknown"), (parse_duration, True, "boolean"),
])
def test_bad_units_are_refused_with_a_fix(parser, text, hint):
    with pytest.raises(UnitError) as info:
        parser(text)
    assert hint in str(info.value) and "Fix:" in str(info.value)


def test_formatting_prefers_readable_units():
    assert format_duration(0.02) == "20ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0.5) == "500ms"
    assert format_rate(10e6) == "10mbit"
    assert format_size(200_000) == "200KB"
    assert format_size(262_144) == "256KiB"
    assert format_size(1200) == 1200


@given(st.floats(min_value=0, max_value=1e4, allow_nan=False))
def test_any_duration_survives_format_then_parse(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


# --- loading ----------------------------------------------------------------

def test_valid_file_loads_into_model_types():
    t = load(BASE)
    assert t.name == "test"  # default name is the file stem
    assert t.ensembles == ("a", "b", "c")
    assert t.default_link == LinkSpec(delay_s=0.02, loss=0.02)
    # The override keeps the default delay and replaces only the loss.
    assert t.link("a", "b") == LinkSpec(delay_s=0.02, loss=0.05)
    assert t.link("b", "a") == t.default_link
    assert t.flows == (Flow(name="f1", src="a", dst="b", sizes=(1200,), count=50,
                            interval_s=0.1, ensure=False),)


def test_symmetric_link_sets_both_directions_and_one_way_refines_it():
    t = load("""
        ensembles: [a, b]
        links:
          a<->b: {delay: 40ms, rate: 10mbit}
          b->a: {loss: 1%}
        flows: []
    """)
    assert t.link("a", "b") == LinkSpec(delay_s=0.04, rate_bps=10e6)
    assert t.link("b", "a") == LinkSpec(delay_s=0.04, rate_bps=10e6, loss=0.01)


def test_unnamed_flows_get_unique_names_from_their_endpoints():
    t = load("""
        ensembles: [a, b]
        flows:
          - {from: a, to: b, size: 10, count: 1, interval: 0}
          - {from: a, to: b, sizes: [10, 20], count: 2, interval: 1s, ensure: true,
             deadline: 5s, start: 2s}
    """)
    assert [f.name for f in t.flows] == ["a-b", "a-b-2"]
    assert t.flows[1].sizes == (10, 20) and t.flows[1].deadline_s == 5.0
    assert t.flows[1].start_s == 2.0 and t.flows[1].ensure is True


def test_seed_auth_key_and_description_are_read():
    t = load("ensembles: [a]\nseed: 7\nauth_key: s3cret\ndescription: hello\n")
    assert (t.seed, t.auth_key, t.description) == (7, "s3cret", "hello")


@pytest.mark.parametrize("change, entry, fix_hint", [
    (("a->b: {loss: 5%}", "a->x: {loss: 5%}"), "links['a->x']", "add it to ensembles"),
    (("from: a, to: b", "from: a, to: zz"), "flows[0] (f1).to", "add it to ensembles"),
    (("delay: 20ms", "delay: -5ms"), "defaults.delay", ">= 0"),
    (("a->b: {loss: 5%}", "a->b: {loss: 150%}"), "links['a->b'].loss", "between 0% and 100%"),
    (("delay: 20ms", "delay: 20 parsecs"), "defaults.delay", "use one of"),
    (("delay: 20ms", "delay: 20ms, latency: 3ms"), "defaults.latency", "remove it"),
    (("count: 50, ", ""), "flows[0] (f1).count", "add 'count:'"),
    (("[a, b, c]", "[a, b, a]"), "ensembles[2]", "different name"),
    (("from: a, to: b", "from: a, to: a"), "flows[0] (f1)", "different ensemble"),
    (("count: 50", "count: 0"), "flows[0] (f1).count", "integer >= 1"),
    (("size: 1200", "size: 65MiB"), "flows[0] (f1).size", "smaller messages"),
    (("size: 1200", "size: 1200, sizes: [1]"), "flows[0] (f1).size", "or sizes:"),
    (("interval: 100ms", "interval: 100"), "flows[0] (f1).interval", "100ms"),
    (("ensembles:", "ensemble:"), "ensemble", "remove it"),
    (("a->b:", "a=>b:"), "links['a=>b']", "'a->b'"),
    (("[a, b, c]", "[a, b, 'no']"), "", ""),  # quoted: fine, must not raise
])
def test_bad_entries_name_file_entry_and_fix(change, entry, fix_hint):
    text = BASE.replace(*change)
    assert text != BASE
    if not entry:
        load(text)
        return
    err = error_for(text)
    message = str(err)
    assert message.startswith("test.yaml: ")
    assert err.entry == entry, message
    assert f"test.yaml: {entry}:" in message
    assert fix_hint in err.fix, message


def test_yaml_booleans_as_ensemble_names_are_refused_with_quote_hint():
    err = error_for(BASE.replace("[a, b, c]", "[a, b, no]"))
    assert err.entry == "ensembles[2]" and "quote" in err.fix


def test_duplicate_yaml_keys_are_an_error_not_silently_merged():
    err = error_for(BASE.replace("a->b: {loss: 5%}", "a->b: {loss: 5%}\n  a->b: {loss: 1%}"))
    assert "duplicate key" in str(err)


def test_same_link_twice_in_both_symmetric_spellings_is_refused():
    err = error_for("""
        ensembles: [a, b]
        links: {a<->b: {delay: 1ms}, b<->a: {delay: 2ms}}
    """)
    assert err.entry == "links['b<->a']"


def test_duplicate_flow_names_are_refused():
    err = error_for(BASE + "  - {name: f1, from: b, to: a, size: 1, count: 1, interval: 0}\n")
    assert err.entry == "flows[1].name"


def test_missing_ensembles_and_broken_yaml_are_reported():
    assert error_for("flows: []\n").entry == "ensembles"
    assert "not valid YAML" in str(error_for("ensembles: [a, b\n"))


def test_unreadable_file_raises_topology_error(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


# --- round trip -------------------------------------------------------------

def test_round_trip_keeps_every_field_and_writes_symmetric_links_once():
    t = load("""
        name: rt
        description: round trip
        seed: 9
        auth_key: k
        ensembles: [a, b, c]
        defaults: {delay: 2ms, loss: 0.1%, rate: 100mbit}
        links:
          a<->b: {delay: 40ms, jitter: 5ms, loss: 2%, rate: 10mbit, duplicate: 1%, corrupt: 0.5%}
          b->c: {loss: 0%}
        flows:
          - {name: big, from: a, to: b, size: 200KB, count: 40, interval: 500ms,
             ensure: true, deadline: 15s, start: 250ms}
          - {from: c, to: a, sizes: [64, 128, 256KiB], count: 3, interval: 1.5s}
    """)
    text = topology_to_yaml(t)
    assert "a<->b" in text and "b->a" not in text
    assert load_topology_text(text, "other.yaml") == t


link_values = st.builds(
    LinkSpec,
    delay_s=st.floats(0, 2, allow_nan=False), jitter_s=st.floats(0, 0.1),
    loss=st.floats(0, 1), rate_bps=st.none() | st.integers(1, 10**10).map(float),
    duplicate=st.floats(0, 1), corrupt=st.floats(0, 1))


@settings(max_examples=60)
@given(default=link_values, ab=link_values, ba=link_values,
       sizes=st.lists(st.integers(1, 64 * 2**20), min_size=1, max_size=3),
       interval=st.floats(0, 100), count=st.integers(1, 10**6))
def test_any_valid_topology_survives_yaml_round_trip(default, ab, ba, sizes,
                                                     interval, count):
    t = Topology(name="h", ensembles=("a", "b"), default_link=default,
                 links={("a", "b"): ab, ("b", "a"): ba},
                 flows=(Flow("f", "a", "b", tuple(sizes), count, interval, True),))
    assert load_topology_text(topology_to_yaml(t), "h.yaml") == t


# --- shipped files ----------------------------------------------------------

SHIPPED = ["edge-cloud", "lossy", "mesh-20", "pair", "star"]


def test_shipped_topologies_are_listed():
    assert list_topologies(TOPO_DIR) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_topology_is_valid_short_and_round_trips(name):
    t = load_topology(find_topology(name, TOPO_DIR))
    assert t.name == name
    last_send = max(f.start_s + f.interval_s * (f.count - 1) for f in t.flows)
    assert last_send <= 30, "keeps make testbed within its time budget"
    assert t.expected_duration_s() <= 60
    # Enough messages for the fidelity verdict to bound a p95 interval.
    assert all(f.count >= 100 for f in t.flows)
    assert load_topology_text(topology_to_yaml(t), f"{name}.yaml") == t


def test_shipped_topologies_have_the_promised_links():
    pair = load_topology(TOPO_DIR / "pair.yaml")
    assert pair.link("a", "b") == LinkSpec(delay_s=0.02, loss=0.02)
    assert {f.ensure for f in pair.flows} == {True, False}
    ec = load_topology(TOPO_DIR / "edge-cloud.yaml")
    assert ec.link("sensor1", "edge") == LinkSpec(delay_s=0.002, loss=0.001, rate_bps=100e6)
    assert ec.link("cloud", "edge") == LinkSpec(delay_s=0.04, jitter_s=0.005,
                                                loss=0.02, rate_bps=10e6)
    mesh = load_topology(TOPO_DIR / "mesh-20.yaml")
    assert mesh.ensembles == tuple(f"e{i}" for i in range(20))
    assert all(sum(f.src == e for f in mesh.flows) == 2 for e in mesh.ensembles)
    lossy = load_topology(TOPO_DIR / "lossy.yaml")
    assert lossy.default_link.loss == 0.2


def test_find_topology_accepts_name_or_path_and_lists_names_when_missing(tmp_path):
    assert find_topology("pair", TOPO_DIR) == TOPO_DIR / "pair.yaml"
    assert find_topology(str(TOPO_DIR / "star.yaml"), tmp_path) == TOPO_DIR / "star.yaml"
    with pytest.raises(TopologyError) as info:
        find_topology("nosuch", TOPO_DIR)
    assert "pair" in info.value.fix and "nosuch" in str(info.value)
