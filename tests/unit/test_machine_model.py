"""The emulating machine in the simulator: the impairment emulator as one
shared server (``emulator_cost_s``), the machine's cores shared by every
host (``cores``), and the calibration that measures both directly."""
from __future__ import annotations

import os

import pytest

from testbed.analysis.stats import flow_stats
from testbed.pipelines.calibrate import calibration_topology, emulator_cost, fit
from testbed.pipelines.evaluate import load_notes
from testbed.simulate.host import HostModel
from testbed.simulate.simulator import simulate_events, simulate_host
from testbed.spec.model import Flow, LinkSpec, Topology


def _net(**kw):
    import simpy

    from ttnet import SimNetwork
    return SimNetwork(simpy.Environment(), **kw)


def _bulk(delay_s: float = 0.001, senders: int = 1) -> Topology:
    flows = tuple(Flow(f"bulk{i}", f"s{i}", "r", sizes=(100_000,), count=5, interval_s=0.2,
                       ensure=True, deadline_s=10.0) for i in range(senders))
    return Topology(name="bulk", ensembles=("r", *(f"s{i}" for i in range(senders))),
                    default_link=LinkSpec(delay_s=delay_s), flows=flows, seed=5)


def _p50(events, flow: str) -> float:
    return flow_stats(events)[flow].p50


def test_cores_fill_gaps_left_between_jobs_reserved_ahead():
    net = _net(cores=1)
    assert net._take_core(0.0, 1.0) == 0.0
    assert net._take_core(5.0, 1.0) == 5.0        # reserved ahead of time
    assert net._take_core(0.0, 1.0) == 1.0        # fits the gap [1, 5)
    assert net._take_core(1.5, 4.0) == 6.0        # [2, 5) is too short for 4
    two = _net(cores=2)
    assert two._take_core(0.0, 1.0) == 0.0 and two._take_core(0.0, 1.0) == 0.0
    assert two._take_core(0.0, 1.0) == 1.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_cores_are_refused(bad):
    with pytest.raises(ValueError):
        _net(cores=bad)


def test_negative_emulator_cost_is_refused():
    with pytest.raises(ValueError):
        _net(emulator_cost_s=-1e-6)
    with pytest.raises(ValueError):
        HostModel(emulator_cost_s=-1.0)


def test_the_emulator_serialises_every_impaired_packet():
    topo = _bulk()
    base = _p50(simulate_events(topo, 0.0)[0], "bulk0")
    slow = _p50(simulate_events(topo, 0.0, emulator_cost_s=50e-6)[0], "bulk0")
    # 84 DATA packets (and their ACKs) queue for 50 us each in the emulator
    assert slow - base >= 84 * 50e-6 * 0.9
    # a link without impairments does not pass through the emulator
    clean = _bulk(delay_s=0.0)
    assert simulate_events(clean, 0.0)[0] == simulate_events(clean, 0.0, emulator_cost_s=50e-6)[0]


def test_shared_cores_slow_concurrent_hosts_only_when_they_bind():
    topo = _bulk(senders=2)
    free, _ = simulate_events(topo, 30e-6, emulator_cost_s=20e-6)
    # more cores than hosts + emulator: never binds, the same events
    assert simulate_events(topo, 30e-6, emulator_cost_s=20e-6, cores=8)[0] == free
    one, _ = simulate_events(topo, 30e-6, emulator_cost_s=20e-6, cores=1)
    for flow in ("bulk0", "bulk1"):
        assert _p50(one, flow) > 1.5 * _p50(free, flow)


def test_emulator_cost_is_the_daemons_cpu_over_its_packets_during_the_flows():
    meta = {"impair_stats": {"daemon_at_start": {"cpu_s": 0.1, "packets": 10},
                             "daemon": {"cpu_s": 2.1, "packets": 100_010}}}
    assert emulator_cost(meta) == pytest.approx(2.0 / 100_000)
    assert emulator_cost({"impair_stats": {"daemon": {"cpu_s": 1, "packets": 5}}}) is None
    assert emulator_cost({}) is None
    same = {"cpu_s": 1.0, "packets": 7}
    assert emulator_cost({"impair_stats": {"daemon": same, "daemon_at_start": same}}) is None


def test_fit_with_measured_costs_recovers_the_hop_latency():
    """Emulate the calibration with a known model (here: simulate it), then
    fit from its events given the measured CPU costs: the hop latency comes
    back, the measured parts are kept as given."""
    topo = calibration_topology(size=200_000, count=5)
    truth = HostModel(25e-6, 350e-6, (), "truth", emulator_cost_s=20e-6, cores=2)
    events, _ = simulate_host(topo, truth)
    got = fit(topo, events, emulator_cost_s=20e-6, host_cost_s=25e-6, cores=2)
    assert (got.host_cost_s, got.emulator_cost_s, got.cores) == (25e-6, 20e-6, 2)
    assert got.hop_latency_s == pytest.approx(350e-6, rel=0.05)


def test_host_model_reads_and_keys_the_machine_parts():
    info = {"host_cost_s": 3e-5, "hop_latency_s": 4e-4, "emulator_cost_s": 2.5e-5, "cores": 2}
    host = HostModel.from_calibration(info)
    assert (host.emulator_cost_s, host.cores) == (2.5e-5, 2)
    assert host.key()["emulator_cost_s"] == 2.5e-5 and host.key()["cores"] == 2
    # calibrations made before these were measured, or on netem (no daemon)
    old = HostModel.from_calibration({"host_cost_s": 3e-5, "emulator_cost_s": None})
    assert (old.emulator_cost_s, old.cores) == (0.0, None)


def _meta(daemon_cpu_s: float, run_s: float = 10.0, seen: int = 50_000) -> dict:
    return {"run_s": run_s, "impair_stats": {
        "links": {"a->10.0.0.2": {"seen": seen}, "b->10.0.0.1": {"seen": seen // 2}},
        "daemon_at_start": {"cpu_s": 0.5, "packets": 0},
        "daemon": {"cpu_s": 0.5 + daemon_cpu_s, "packets": seen * 3 // 2}}}


def test_report_states_the_emulators_capacity_and_warns_near_it():
    cal = {"emulator_capacity_pps": 40_000.0, "capacity_pps": 20_000.0}
    (quiet,) = load_notes(_meta(daemon_cpu_s=2.0), cal)
    assert "measured capacity 40000 datagrams/s (19% of it)" in quiet
    assert "daemon was busy 20% of the run" in quiet and "WARNING" not in quiet
    (busy,) = load_notes(_meta(daemon_cpu_s=6.0), cal)        # daemon 60% busy
    assert "busy 60%" in busy and "WARNING" in busy
    (old,) = load_notes(_meta(2.0), {"capacity_pps": 20_000.0})   # older calibration
    assert "20000 datagrams/s (38% of it)" in old
    assert "recalibrate" in load_notes(_meta(2.0), None)[0]
    # the agents' CPU over the flows: a machine more than half busy warns
    meta = _meta(daemon_cpu_s=2.0)
    meta["counters"] = {"a": {"process_cpu_s": 6.0, "process_cpu_at_go_s": 1.0},
                        "b": {"process_cpu_s": 3.0}}           # recorded no start: left out
    (crowded,) = load_notes(meta, {**cal, "cores": 2})
    assert "agents and daemon used 0.70 cores of 2" in crowded and "WARNING" not in crowded
    meta["counters"]["b"].update(process_cpu_s=9.0, process_cpu_at_go_s=1.0)   # 1.5 cores
    assert "WARNING" in load_notes(meta, {**cal, "cores": 2})[0]
    assert load_notes({"run_s": 0}, cal) == []



def test_the_daemon_counts_its_packets_and_reports_its_cpu():
    from types import SimpleNamespace

    from testbed.emulate.impair.nfqueue import Daemon, NamespaceQueue
    d = Daemon(seed=1, dup_mark=0x7474)
    q = NamespaceQueue.__new__(NamespaceQueue)      # no kernel queue needed
    q.daemon, q.links, q.netns = d, {}, "/run/netns/x"
    accepted = []
    pkt = SimpleNamespace(get_payload=lambda: bytes(20), accept=lambda: accepted.append(1))
    for _ in range(3):
        q.on_packet(pkt)          # to a destination without a link: accepted as is
    reply = d.handle({"op": "stats"})
    assert reply["daemon"]["packets"] == 3 and len(accepted) == 3
    assert reply["daemon"]["cpu_s"] > 0


def test_machine_cpu_reads_proc_stat(tmp_path):
    from testbed.emulate.run import machine_cpu
    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  {hz * 3} {hz} {hz * 2} {hz * 10} {hz} 0 {hz} {hz // 2} 0 0\n"
                    "cpu0 1 2 3 4 5 6 7 8 9 10\n")
    snap = machine_cpu(stat)
    assert (snap["busy"], snap["steal"], snap["idle"]) == (7.0, 0.5, 11.0)
    assert machine_cpu(tmp_path / "missing") is None
    stat.write_text("cpu 1 2\n")
    assert machine_cpu(stat) is None
    real = machine_cpu()                                  # this Linux machine
    assert real is not None and real["busy"] > 0


def test_report_states_the_machines_load_and_warns_of_other_work():
    cal = {"emulator_capacity_pps": 40_000.0, "cores": 2}
    meta = _meta(daemon_cpu_s=2.0)
    meta["counters"] = {"a": {"process_cpu_s": 6.0, "process_cpu_at_go_s": 1.0}}   # 0.7 cores
    meta["machine_cpu"] = {"cores": 2,
                           "at_start": {"t": 100.0, "busy": 50.0, "steal": 1.0, "idle": 0.0},
                           "at_end": {"t": 110.0, "busy": 59.0, "steal": 1.0, "idle": 0.0}}
    _, quiet = load_notes(meta, cal)
    assert quiet.startswith("machine load: this machine was busy 0.90 cores of 2")
    assert "0.20 of them outside this run's agents and daemon" in quiet
    assert "WARNING" not in quiet and "steal" not in quiet
    meta["machine_cpu"]["at_end"].update(busy=65.0, steal=1.5)    # 1.5 busy, 0.05 stolen
    _, loaded = load_notes(meta, cal)
    assert "0.80 of them outside" in loaded and "took another 0.05 cores (steal)" in loaded
    assert "WARNING: other work on this machine" in loaded
    # a tenth of a core of steal warns on its own: a vCPU not running holds packets
    meta["machine_cpu"]["at_end"].update(busy=59.0, steal=2.0)    # 0.9 busy, 0.1 stolen
    _, stolen = load_notes(meta, cal)
    assert "WARNING: the hypervisor took 0.10 cores" in stolen and "other work" not in stolen
    meta["machine_cpu"]["at_end"].update(steal=1.9)               # 0.09: no warning
    assert "WARNING" not in load_notes(meta, cal)[1]
    # the calibration's own machine record is stated beside the run's
    cal_then = {**cal, "machine": {"busy_cores": 1.2, "steal_cores": 0.03, "cores": 2}}
    assert "(at calibration: busy 1.20 cores, steal 0.03)" in load_notes(meta, cal_then)[1]
    meta["machine_cpu"]["at_end"].update(busy=65.0, steal=1.0)
    # without an impairment daemon (netem, clean links) the machine is still reported
    bare = {"run_s": 10.0, "machine_cpu": meta["machine_cpu"], "counters": meta["counters"]}
    (only,) = load_notes(bare, cal)
    assert only.startswith("machine load:") and "1.00 of them outside" in only
    del meta["machine_cpu"]                                       # older runs: no note
    assert len(load_notes(meta, cal)) == 1


def test_cores_between_two_snapshots():
    from testbed.emulate.run import cores_between
    a = {"t": 10.0, "busy": 5.0, "steal": 1.0, "idle": 0.0}
    b = {"t": 14.0, "busy": 11.0, "steal": 2.0, "idle": 0.0}
    assert cores_between(a, b) == {"wall_s": 4.0, "busy_cores": 1.5, "steal_cores": 0.25}
    assert cores_between(b, a) is None and cores_between(a, a) is None
    assert cores_between(None, b) is None and cores_between(a, {}) is None


def test_the_runs_own_core_count_wins_over_the_calibrations():
    meta = _meta(daemon_cpu_s=2.0)
    meta["counters"] = {"a": {"process_cpu_s": 6.0, "process_cpu_at_go_s": 1.0}}
    meta["machine_cpu"] = {"cores": 4,
                           "at_start": {"t": 0.0, "busy": 0.0, "steal": 0.0, "idle": 0.0},
                           "at_end": {"t": 10.0, "busy": 9.0, "steal": 0.0, "idle": 0.0}}
    emulator, machine = load_notes(meta, {"emulator_capacity_pps": 40_000.0, "cores": 2})
    assert "used 0.70 cores of 4" in emulator and "0.90 cores of 4" in machine
    del meta["machine_cpu"]                 # runs recorded before: the calibration's
    assert "used 0.70 cores of 2" in load_notes(meta, {"cores": 2})[0]


def test_agents_work_counts_from_the_flows_start_and_can_leave_out_older_agents():
    from testbed.pipelines.calibrate import agents_work
    counters = {"a": {"process_cpu_s": 6.0, "process_cpu_at_go_s": 1.0,
                      "packets_sent": 70, "packets_received": 40, "packets_at_go": 10},
                "b": {"process_cpu_s": 3.0, "packets_sent": 5},
                "c": {"packets_sent": 9}}                       # no CPU time: left out
    assert agents_work(counters) == {"a": (5.0, 100), "b": (3.0, 5)}
    assert agents_work(counters, flows_only=True) == {"a": (5.0, 100)}


def _clock_reader(busy_per_s: list[float]):
    """A fake /proc/stat reader whose machine uses busy_per_s[i] cores over
    the i-th one-second sample (steal counted with busy)."""
    state = {"t": 0.0, "busy": 0.0, "i": 0}

    def read():
        return {"t": state["t"], "busy": state["busy"], "steal": 0.0, "idle": 0.0}

    def sleep(s):
        i = min(state["i"], len(busy_per_s) - 1)
        state["busy"] += busy_per_s[i] * s
        state["t"] += s
        state["i"] += 1
    return read, sleep


def test_wait_for_quiet_waits_until_the_machine_is_quiet_and_no_longer():
    from testbed.emulate.run import wait_for_quiet
    read, sleep = _clock_reader([1.2, 0.9, 0.1, 0.0])          # a teardown finishing
    seen = wait_for_quiet(max_s=60, busy_cores=0.3, sample_s=1.0, read=read, sleep=sleep)
    assert seen["quiet"] and seen["busy_cores"] == 0.1
    read, sleep = _clock_reader([0.0])                           # already quiet: one sample
    assert wait_for_quiet(max_s=60, busy_cores=0.3, sample_s=0.01, read=read,
                          sleep=sleep)["busy_cores"] == 0.0
    # busy for good: bounded by max_s (real time here), reported not quiet
    import time as _time
    read, sleep = _clock_reader([1.5])
    t0 = _time.monotonic()
    seen = wait_for_quiet(max_s=0.2, busy_cores=0.3, sample_s=0.05, read=read,
                          sleep=lambda s: (sleep(s), _time.sleep(s)))
    assert not seen["quiet"] and seen["busy_cores"] == 1.5
    assert 0.2 <= _time.monotonic() - t0 < 2.0
    # no /proc/stat: no wait, nothing known
    assert wait_for_quiet(read=lambda: None) == {"waited_s": 0.0, "busy_cores": None,
                                                 "quiet": False}
