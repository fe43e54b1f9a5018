"""Device-like hosts (``cpus:``, ``memory:``) and ``capture:`` in topology
files: parsing, errors, writing back, the schema; what the docker backend
and the simulator make of them (no root, no Docker)."""
from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from testbed.simulate.host import HostModel, enforces_cpu_limits
from testbed.simulate.simulator import simulate_events, simulate_host, topology_cpu_limits
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


def test_the_simulator_takes_each_ensembles_cpus_and_only_docker_enforces_them():
    assert topology_cpu_limits(load(DEVICES)) == {"pi": 0.25, "big": 2.0}     # not ram's memory
    assert topology_cpu_limits(load("ensembles: [a, b]\nflows: []\n")) == {}
    assert enforces_cpu_limits("docker") and enforces_cpu_limits("swarm")
    assert not any(map(enforces_cpu_limits, ("netns", "sim", None, "")))
    assert HostModel().cpu_limits is True                   # `simulate` alone: as on docker
    assert HostModel().key()["cpu_limits"] is True          # a cached simulation tells them apart


# --- the CPU quota (SimNetwork.cpu_finish): Docker's CFS quota per 100 ms ----

def _cpu(cpus: float | None = 0.25):
    simpy = pytest.importorskip("simpy")
    from ttnet import SimNetwork
    return SimNetwork(simpy.Environment(), cpu_limits={"pi": cpus} if cpus else None)


def _serial(net, jobs: int, cost: float, start: float = 0.0, name: str = "pi") -> list[float]:
    """Finish times of ``jobs`` back-to-back datagrams on one host's CPU."""
    done, t = [], start
    for _ in range(jobs):
        t = net.cpu_finish(name, t, cost)
        done.append(t)
    return done


def test_without_a_limit_cpu_time_is_start_plus_cost_exactly():
    net = _cpu(None)
    for start, cost in [(0.0, 4e-5), (0.123456789, 2.08e-5), (7.3, 0.3)]:
        assert net.cpu_finish("pi", start, cost) == start + cost
    assert _cpu(0.25).cpu_finish("server", 0.0999, 0.05) == 0.0999 + 0.05   # others unlimited


def test_a_burst_within_the_quota_runs_at_full_speed():
    net = _cpu(0.25)                                        # 25 ms of CPU per 100 ms
    assert _serial(net, 240, 1e-4) == _serial(_cpu(None), 240, 1e-4)     # 24 ms: unthrottled


def test_past_the_quota_the_host_waits_for_the_next_period():
    done = _serial(_cpu(0.25), 300, 1e-4)                   # 30 ms of CPU from t=0
    assert done[249] == pytest.approx(0.025)                # the quota lasts 25 ms ...
    assert done[250] == pytest.approx(0.1001)               # ... then nothing until 100 ms
    assert done[-1] == pytest.approx(0.105)
    # A datagram that exhausts the quota midway finishes its rest in the next period.
    net = _cpu(0.25)
    assert net.cpu_finish("pi", 0.0, 0.02495) == pytest.approx(0.02495)
    assert net.cpu_finish("pi", 0.03, 1e-4) == pytest.approx(0.10005)


def test_the_quota_is_fresh_each_period_and_not_carried_over():
    net = _cpu(0.25)
    assert net.cpu_finish("pi", 0.0, 0.025) == pytest.approx(0.025)      # period 0 used up
    assert net.cpu_finish("pi", 0.0999, 2e-4) == pytest.approx(0.1002)   # waits for period 1
    assert net.cpu_finish("pi", 0.15, 0.0248) == pytest.approx(0.1748)   # period 1: 24.8 ms left
    assert net.cpu_finish("pi", 0.1748, 1e-4) == pytest.approx(0.2001)   # and no more
    # Idle periods save nothing: after 0.5 s of idling, still 25 ms per period.
    net = _cpu(0.25)
    assert net.cpu_finish("pi", 0.5, 0.03) == pytest.approx(0.605)


def test_a_datagram_across_a_period_boundary_charges_both_periods():
    net = _cpu(0.25)
    assert net.cpu_finish("pi", 0.0999, 2e-4) == 0.0999 + 2e-4          # unthrottled, exact
    assert net.cpu_finish("pi", 0.1001, 0.0249) == pytest.approx(0.125)  # 0.1 ms went to period 1
    assert net.cpu_finish("pi", 0.125, 1e-5) == pytest.approx(0.20001)


def test_a_long_job_on_a_tenth_of_a_core_takes_ten_times_its_cpu_time():
    # 100 ms of CPU at 10 ms per 100 ms: 10 ms in each of 10 periods.
    assert _cpu(0.1).cpu_finish("pi", 0.0, 0.1) == pytest.approx(0.91)
    done = _serial(_cpu(0.1), 20_000, 5e-5)                 # 1 s of CPU in small pieces
    assert done[-1] == pytest.approx(9.91)
    # One core or more: a host that runs one datagram at a time never waits.
    assert _serial(_cpu(1.0), 20_000, 5e-5) == _serial(_cpu(None), 20_000, 5e-5)


def test_cpu_limits_must_be_positive():
    simpy = pytest.importorskip("simpy")
    from ttnet import SimNetwork
    with pytest.raises(ValueError):
        SimNetwork(simpy.Environment(), cpu_limits={"pi": 0.0})
    with pytest.raises(ValueError):
        SimNetwork(simpy.Environment(), cpu_limits={"pi": 0.5}, cpu_period_s=0.0)


# --- the quota in whole simulations ---------------------------------------------

def _bulk(cpus: float | None, size: int = 200_000, count: int = 5, delay_s: float = 0.001,
          interval_s: float = 0.0) -> Topology:
    settings = {"src": EnsembleSettings(cpus=cpus)} if cpus is not None else {}
    return Topology(name="bulk", ensembles=("src", "dst"), default_link=LinkSpec(delay_s=delay_s),
                    flows=(Flow("f", "src", "dst", (size,), count, interval_s, True, 30.0),),
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
    # Told the limits are not enforced (a netns run), the host is not slowed.
    assert simulate_events(_bulk(0.25), host_cost_s=50e-6, cpu_limits=False)[0] == base


def test_a_burst_within_the_quota_is_simulated_exactly_as_without_a_limit():
    # 32 KB each 200 ms: ~56 datagrams x 50 us = 3 ms of CPU, under 25 ms.
    limited = simulate_events(_bulk(0.25, 32_000, 5, interval_s=0.2), host_cost_s=50e-6)
    free = simulate_events(_bulk(None, 32_000, 5, interval_s=0.2), host_cost_s=50e-6)
    assert limited == free


def test_without_cpus_a_simulation_does_not_depend_on_the_cpu_model():
    t = _bulk(None)
    runs = [simulate_events(t, host_cost_s=50e-6, cpu_limits=flag) for flag in (True, False)]
    assert runs[0] == runs[1]
    host = HostModel(50e-6, 1e-4)
    assert simulate_host(t, host) == simulate_host(t, replace(host, cpu_limits=False))


def test_a_cpu_bound_transfer_on_a_tenth_of_a_core_takes_ten_times_its_cpu_time():
    cost = 50e-6
    events, counters = simulate_events(_bulk(0.1, 1_000_000, 2, delay_s=0.0), host_cost_s=cost)
    assert sum(e["event"] == "deliver" for e in events) == 2
    # The sender pays the cost for each datagram out (all of which the
    # receiver gets on a clean link) and each one in.
    cpu = (counters["dst"]["packets_received"] + counters["src"]["packets_received"]) * cost
    took = _last_delivery(events) - min(e["t"] for e in events if e["event"] == "send")
    assert 8.5 < took / cpu < 10.5                      # 10 ms of CPU per 100 ms
    free, counters = simulate_events(_bulk(None, 1_000_000, 2, delay_s=0.0), host_cost_s=cost)
    cpu = (counters["dst"]["packets_received"] + counters["src"]["packets_received"]) * cost
    assert _last_delivery(free) < 1.2 * cpu             # unlimited: about its CPU time


def _fake_run(root: Path, backend: str, cpus: float | None) -> Path:
    """An 'emulated' run on ``backend`` (events of a simulation with another
    seed): enough for compare_run to simulate and judge it."""
    t = _bulk(cpus, 300_000, 3, delay_s=0.002, interval_s=0.5)    # 25 ms of CPU each
    run = Path(root) / "bulk" / backend
    run.mkdir(parents=True)
    (run / "topology.yaml").write_text(topology_to_yaml(t))
    (run / "meta.json").write_text(json.dumps({"kind": "emulated", "backend": backend}))
    (run / "calibration.json").write_text(json.dumps({"host_cost_s": 50e-6,
                                                      "hop_latency_s": 1e-4}))
    events, _ = simulate_events(t, 50e-6, seed=999, hop_latency_s=1e-4)
    (run / "events-src.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def _sim_latencies(run) -> list[float]:
    from testbed.analysis.stats import load_events
    events = load_events(run / "sim")
    sends = {e["msg"]: e["t"] for e in events if e["event"] == "send"}
    return sorted(e["t"] - sends[e["msg"]] for e in events if e["event"] == "deliver")


def test_compare_simulates_cpus_only_for_a_run_on_a_backend_that_enforces_them(tmp_path):
    from testbed.pipelines.evaluate import compare_run
    runs = {b: _fake_run(tmp_path, b, 0.1) for b in ("docker", "netns")}
    free = _fake_run(tmp_path / "free", "docker", None)
    for run in (*runs.values(), free):
        compare_run(run, replications=2)
    meta = {b: json.loads((r / "sim" / "meta.json").read_text()) for b, r in runs.items()}
    assert meta["docker"]["cpu_limits"] == {"src": 0.1}
    assert meta["docker"]["host_model"]["cpu_limits"] is True
    assert meta["netns"]["cpu_limits"] == {} and meta["netns"]["host_model"]["cpu_limits"] is False
    # netns: simulated as if there were no limit; docker: throttled.
    assert _sim_latencies(runs["netns"]) == _sim_latencies(free)
    assert min(_sim_latencies(runs["docker"])) > 2 * max(_sim_latencies(free))
    assert "not simulated: netns does not enforce them" in (runs["netns"] / "report.md").read_text()


def test_sim_network_host_cost_overrides_one_host_only():
    simpy = pytest.importorskip("simpy")
    from ttnet import SimNetwork
    net = SimNetwork(simpy.Environment(), host_cost_s=1e-4, host_costs={"pi": 4e-4})
    assert (net.host_cost("pi"), net.host_cost("server")) == (4e-4, 1e-4)
    assert SimNetwork(simpy.Environment(), host_cost_s=1e-4).host_cost("pi") == 1e-4
