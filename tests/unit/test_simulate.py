"""testbed.simulate.simulator: the topology's flows in simulated time."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.simulate.simulator import run_simulation, simulate_events
from testbed.analysis.stats import flow_stats
from testbed.spec.topology import load_topology

TOPO_DIR = Path(__file__).resolve().parents[2] / "testbed" / "topologies"


def test_same_topology_and_seed_give_identical_events():
    topo = load_topology(TOPO_DIR / "lossy.yaml")
    a, _ = simulate_events(topo, 2e-5, hop_latency_s=4e-4)
    b, _ = simulate_events(topo, 2e-5, hop_latency_s=4e-4)
    c, _ = simulate_events(topo, 2e-5, seed=topo.seed + 1, hop_latency_s=4e-4)
    assert a == b and a != c


def test_best_effort_delivery_ratio_matches_closed_form():
    # A 1-packet best-effort message arrives iff its single REQ and the
    # ACK_START survive (DATA is retransmitted until acknowledged).
    p = 0.2
    flow = Flow("t", "a", "b", sizes=(64,), count=2000, interval_s=0.01, ensure=False,
                deadline_s=2.0)
    topo = Topology("closed", ("a", "b"), LinkSpec(delay_s=0.01, loss=p), flows=(flow,), seed=5)
    fs = flow_stats(simulate_events(topo)[0])["t"]
    expect = (1 - p) ** 2
    sigma = math.sqrt(expect * (1 - expect) / 2000)
    assert abs(fs.delivery_ratio - expect) < 4 * sigma


def test_lossless_latency_is_one_and_a_half_round_trips_plus_serialisation():
    rate, d = 1e6, 0.02
    flow = Flow("t", "a", "b", sizes=(1000,), count=5, interval_s=0.5, ensure=True)
    topo = Topology("closed", ("a", "b"), LinkSpec(delay_s=d, rate_bps=rate), flows=(flow,))
    fs = flow_stats(simulate_events(topo)[0])["t"]
    tx = lambda n: (n + 42) * 8 / rate                       # noqa: E731
    assert fs.p50 == pytest.approx(3 * d + tx(19) + tx(17) + tx(1017), rel=1e-9)


def test_fast_start_topology_is_one_way_plus_serialisation_and_still_exactly_once():
    rate, d = 1e6, 0.02
    flows = (Flow("t", "a", "b", sizes=(1000,), count=5, interval_s=0.5, ensure=True),
             Flow("big", "b", "a", sizes=(3000,), count=5, interval_s=0.5, ensure=True))
    topo = Topology("fast", ("a", "b"), LinkSpec(delay_s=d, rate_bps=rate), flows=flows,
                    fast_start=True)
    stats = flow_stats(simulate_events(topo)[0])
    tx = lambda n: (n + 42) * 8 / rate                       # noqa: E731
    assert stats["t"].p50 == pytest.approx(d + tx(1017), rel=1e-9)     # one FAST datagram
    assert stats["big"].p50 > 3 * d                          # 3 packets: the handshake
    lossy = Topology("fast", ("a", "b"), LinkSpec(delay_s=d, loss=0.3), seed=3,
                     flows=(Flow("t", "a", "b", sizes=(64,), count=300, interval_s=0.01,
                                 ensure=True, deadline_s=30.0),), fast_start=True)
    fs = flow_stats(simulate_events(lossy)[0])["t"]
    assert fs.delivered == 300 and fs.duplicates == 0


def test_run_simulation_writes_schema_and_metadata(tmp_path):
    topo = load_topology(TOPO_DIR / "pair.yaml")
    out = run_simulation(topo, out_dir=tmp_path / "sim", replications=2,
                         calibration={"host_cost_s": 1e-5, "hop_latency_s": 1e-4,
                                      "source": "test"})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["replications"] == 2 and meta["host_cost_s"] == 1e-5
    assert meta["hop_latency_s"] == 1e-4 and meta["speedup_span"] > 1
    events = [json.loads(line) for line in (out / "events-sim.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"send", "deliver", "complete"} <= kinds
    assert {e["replication"] for e in events} == {0, 1}
    assert all({"flow", "msg", "src", "dst", "size", "ensure", "t"} <= e.keys()
               for e in events if e["event"] != "unknown")


def _two_hosts(**link) -> Topology:
    flow = Flow("t", "a", "b", sizes=(64,), count=400, interval_s=0.01, ensure=True)
    return Topology("spread", ("a", "b"), LinkSpec(delay_s=0.01, **link), flows=(flow,), seed=3)


def test_host_spread_widens_the_latency_distribution_but_never_reorders():
    from testbed.simulate.host import HostModel
    from testbed.simulate.simulator import simulate_host
    topo = _two_hosts()
    flat = flow_stats(simulate_host(topo, HostModel(0.0, 5e-4))[0])["t"]
    spread = tuple(-2e-4 + 6e-4 * i / 100 for i in range(101))          # -0.2..+0.4 ms
    noisy = flow_stats(simulate_host(topo, HostModel(0.0, 5e-4, spread))[0])["t"]
    assert flat.p95 - flat.p50 < 1e-9                                  # a constant
    assert noisy.p95 - noisy.p50 > 2e-4 and noisy.min >= 0.03           # never below 3 x delay
    assert abs(noisy.p50 - flat.p50) < 3e-4
    # FIFO: with no configured jitter no datagram overtakes another, so the
    # engine never sees reordering (no spurious retransmission)
    _, counters = simulate_host(topo, HostModel(0.0, 5e-4, spread))
    assert counters["a"].get("data_retransmitted", 0) == 0
    assert counters["a"].get("spurious_retransmit", 0) == 0


def test_calibration_of_the_runs_backend_is_preferred(tmp_path):
    import json

    from testbed.simulate.host import load_calibration
    base = {"host_cost_s": 1e-6, "hop_latency_s": 1e-4, "impairment_engine": "nfqueue"}
    (tmp_path / "calibration.json").write_text(json.dumps({**base, "backend": "docker"}))
    (tmp_path / "calibration-netns.json").write_text(
        json.dumps({**base, "backend": "netns", "hop_latency_s": 2e-5}))
    assert load_calibration(tmp_path)["backend"] == "docker"                 # the latest
    assert load_calibration(tmp_path, "netns")["hop_latency_s"] == 2e-5
    assert load_calibration(tmp_path, "netns", "nfqueue")["backend"] == "netns"
    # another engine's calibration of that backend is not taken for this one
    assert load_calibration(tmp_path, "netns", "netem")["backend"] == "docker"
    assert load_calibration(tmp_path, "docker")["backend"] == "docker"       # fallback
    (tmp_path / "calibration-netns.json").write_text("{broken")
    assert load_calibration(tmp_path, "netns")["backend"] == "docker"


def test_cpu_per_datagram_from_each_agents_counters():
    from testbed.pipelines.calibrate import cpu_per_datagram
    counters = {"c1": {"process_cpu_s": 0.5, "packets_sent": 100, "packets_received": 150},
                "c0": {"process_cpu_s": 1.0, "packets_sent": 600, "packets_received": 400},
                "old": {"packets_sent": 5, "packets_received": 5},        # no CPU time
                "idle": {"process_cpu_s": 0.1, "packets_sent": 0}}        # no datagrams
    assert cpu_per_datagram(counters) == {"c0": 0.001, "c1": 0.002}
    # start-up before the flows is left out where the agent recorded it
    counters["c0"].update(process_cpu_at_go_s=0.4, packets_at_go=400)
    assert cpu_per_datagram(counters)["c0"] == pytest.approx(0.001)
    counters["c0"].update(process_cpu_at_go_s=0.7)
    assert cpu_per_datagram(counters)["c0"] == pytest.approx(0.0005)
