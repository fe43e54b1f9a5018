"""Device-like hosts (``cpus:``, ``memory:``) and ``capture:`` in topology
files: parsing, errors, writing back, the schema; what the docker backend
and the simulator make of them (no root, no Docker)."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from testbed.simulate.simulator import cpu_factor, device_host_costs, simulate_events
from testbed.spec.model import EnsembleSettings, Flow, LinkSpec, Topology
from testbed.spec.topology import (SHIPPED_DIR, TopologyError, load_topology,
                                   load_topology_text, topology_to_yaml)

from test_topology_schema import errors as schema_errors  # tests/unit is on sys.path


def load(text: str) -> Topology:
    return load_topology_text(textwrap.dedent(text), "t.yaml")


DEVICES = textwrap.dedent("""
    ensembles:
      pi: {cpus: 0.25, memory: 256MB}
      big: {cpus: 2}
      ram: {memory: 1GiB}
      plain: {}
    flows:
      - {from: pi, to: plain, size: 100, count: 1, interval: 10ms}
""")


def test_cpus_and_memory_are_read_as_cores_and_bytes():
    t = load(DEVICES)
    assert t.settings == {"pi": EnsembleSettings(cpus=0.25, memory=256_000_000),
                          "big": EnsembleSettings(cpus=2.0),
                          "ram": EnsembleSettings(memory=2**30)}
    assert set(t.limits) == {"pi", "big", "ram"}
    assert t.programs == {} and t.apps == {} and t.duration_s is None   # no duration needed
    assert isinstance(t.settings["big"].cpus, float)
    assert t.settings_of("plain") == EnsembleSettings()


def test_limits_with_a_program_still_need_duration():
    with pytest.raises(TopologyError, match=r"need duration: \(a\)"):
        load("ensembles: {a: {run: ./x, cpus: 0.5}, b: {cpus: 0.5}}\n")
    t = load("ensembles: {a: {run: ./x, cpus: 0.5}, b: {cpus: 0.5}}\nduration: 5s\n")
    assert t.programs == {"a": "./x"} and set(t.limits) == {"a", "b"}


@pytest.mark.parametrize("value,problem", [
    ("cpus: 0", "is not a CPU share"), ("cpus: -1", "is not a CPU share"),
    ("cpus: 0.001", "is not a CPU share"), ("cpus: '0.5'", "is not a CPU share"),
    ("cpus: .inf", "is not a CPU share"), ("cpus: .nan", "is not a CPU share"),
    ("cpus: true", "is not a CPU share"), ("memory: 15MB", "below 16MB"),
    ("memory: 100KB", "below 16MB"), ("memory: 3 parsecs", "unknown size unit"),
    ("memory: yes", "is not a size"), ("memory: 1.5", "whole number of bytes"),
    ("cpu: 1", "unknown field 'cpu'"),
])
def test_bad_limits_are_refused_with_the_line(value, problem):
    with pytest.raises(TopologyError) as info:
        load(f"ensembles:\n  a: {{{value}}}\n  b: {{}}\nflows: []\n")
    assert problem in str(info.value)
    assert info.value.line == 2


def test_limits_and_capture_are_written_back_and_load_equal():
    t = load(DEVICES + "capture: true\n")
    assert t.capture is True
    text = topology_to_yaml(t)
    doc = yaml.safe_load(text)
    assert doc["capture"] is True
    assert doc["ensembles"]["pi"] == {"cpus": 0.25, "memory": "256MB"}
    assert doc["ensembles"]["ram"] == {"memory": "1024MiB"}
    assert load_topology_text(text, "t.yaml") == t
    assert schema_errors(doc) == []
    assert "capture" not in yaml.safe_load(topology_to_yaml(load(DEVICES)))


def test_capture_is_a_boolean_defaulting_to_false():
    assert load(DEVICES).capture is False
    assert load(DEVICES + "capture: false\n").capture is False
    with pytest.raises(TopologyError, match="not true/false"):
        load(DEVICES + "capture: 'yes'\n")


@pytest.mark.parametrize("settings,ok", [
    ({"cpus": 0.25}, True), ({"cpus": 4}, True), ({"memory": "256MB"}, True),
    ({"memory": 16_000_000}, True), ({"cpus": 0}, False), ({"cpus": "1"}, False),
    ({"memory": 1000}, False), ({"memory": "lots"}, False),
])
def test_the_schema_checks_the_shape_of_limits(settings, ok):
    doc = {"ensembles": {"a": settings, "b": {}}}
    assert (schema_errors(doc) == []) is ok


def test_the_devices_topology_is_small_and_pi_sized():
    t = load_topology(SHIPPED_DIR / "devices.yaml")
    assert {n: (s.cpus, s.memory) for n, s in t.limits.items()} == \
        {"pi1": (0.25, 256_000_000), "pi2": (0.25, 256_000_000)}
    assert t.description and t.expected_duration_s() < 60
    assert any(f.ensure and f.src in t.limits for f in t.flows)
    assert any(f.ensure and f.dst in t.limits for f in t.flows)


# --- what the backends and the simulator make of them -------------------------

def test_docker_limits_are_nano_cpus_and_memory_without_extra_swap(monkeypatch, caplog):
    docker_backend = pytest.importorskip("testbed.emulate.backends.docker")
    host_limits = docker_backend.host_limits
    assert host_limits(EnsembleSettings()) == {}
    assert host_limits(EnsembleSettings(cpus=0.1, memory=256_000_000)) == {
        "nano_cpus": 100_000_000, "mem_limit": 256_000_000, "memswap_limit": 256_000_000}
    monkeypatch.setattr(docker_backend.os, "cpu_count", lambda: 2)
    assert host_limits(EnsembleSettings(cpus=3.5), "big") == {"nano_cpus": 2_000_000_000}
    assert "cpus 3.5 is more than this machine's 2 cores" in caplog.text


def test_cpu_factor_slows_only_hosts_below_one_core():
    assert cpu_factor(None) == cpu_factor(1.0) == cpu_factor(4.0) == 1.0
    assert cpu_factor(0.25) == 4.0 and cpu_factor(0.1) == pytest.approx(10.0)
    t = load(DEVICES)
    assert device_host_costs(t, 1e-4) == {"pi": pytest.approx(4e-4)}
    assert device_host_costs(load("ensembles: [a, b]\nflows: []\n"), 1e-4) == {}


def _bulk(cpus: float | None) -> Topology:
    settings = {"src": EnsembleSettings(cpus=cpus)} if cpus is not None else {}
    return Topology(name="bulk", ensembles=("src", "dst"), default_link=LinkSpec(delay_s=0.001),
                    flows=(Flow("f", "src", "dst", (200_000,), 5, 0.0, True, 30.0),),
                    settings=settings)


def _last_delivery(events: list[dict]) -> float:
    return max(e["t"] for e in events if e["event"] == "deliver")


def test_a_limited_host_is_slower_in_the_simulator_and_others_are_not():
    base, _ = simulate_events(_bulk(None), host_cost_s=50e-6)
    same, _ = simulate_events(_bulk(1.0), host_cost_s=50e-6)
    slow, _ = simulate_events(_bulk(0.25), host_cost_s=50e-6)
    assert same == base                              # cpus >= 1 changes nothing
    assert _last_delivery(slow) > 2 * _last_delivery(base)
    assert sum(e["event"] == "deliver" for e in slow) == 5
    # Without a host cost there is nothing to scale.
    assert simulate_events(_bulk(0.25))[0] == simulate_events(_bulk(None))[0]


def test_sim_network_host_cost_overrides_one_host_only():
    simpy = pytest.importorskip("simpy")
    from ttnet import SimNetwork
    net = SimNetwork(simpy.Environment(), host_cost_s=1e-4, host_costs={"pi": 4e-4})
    assert (net.host_cost("pi"), net.host_cost("server")) == (4e-4, 1e-4)
    assert SimNetwork(simpy.Environment(), host_cost_s=1e-4).host_cost("pi") == 1e-4
