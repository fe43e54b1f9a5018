"""The app API (testbed.spec.app) on the simulator: the same file a topology
names with ``app:`` runs on simulated time, its messages and records are
logged in the event schema, and its mistakes are counted, not fatal."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.analysis.compare import record_comparison
from testbed.analysis.stats import flow_stats
from testbed.simulate.simulator import simulate_events
from testbed.spec.app import AppError, decode_header, encode, load_app, pack_apps
from testbed.spec.topology import load_topology, load_topology_text

pytest.importorskip("simpy")

APPS = Path(__file__).resolve().parents[1] / "data" / "apps"


def topo(ensembles: str, extra: str = "", duration: str = "10s"):
    text = f"""
name: apps
ensembles:
{ensembles}
duration: {duration}
defaults: {{delay: 10ms}}
{extra}
"""
    return load_topology_text(text, "apps.yaml", base_dir=APPS)


PINGPONG = "  ping: {app: echo.py:ping}\n  pong: {app: echo.py:pong}"


def test_ping_pong_runs_on_simulated_time_and_logs_the_event_schema():
    events, counters = simulate_events(topo(PINGPONG))
    stats = flow_stats(events)
    assert set(stats) == {"app:ping-pong", "echo:pong-ping"}
    out, back = stats["app:ping-pong"], stats["echo:pong-ping"]
    assert out.sent == out.delivered == 50 and back.sent == back.delivered == 50
    assert out.src == "ping" and out.dst == "pong"
    # ensure alternates: the send records carry it
    sends = [e for e in events if e["event"] == "send" and e["flow"] == "app:ping-pong"]
    assert [e["ensure"] for e in sends[:4]] == [True, False, True, False]
    # one-way 10 ms link (+ host cost): a small best-effort message needs
    # REQ, ACK_START, DATA = 3 crossings
    assert 0.029 < out.p50 < 0.035
    rtts = [e for e in events if e["event"] == "record" and e["name"] == "rtt_s"]
    assert len(rtts) == 50 and sorted(r["n"] for r in rtts) == list(range(50))
    assert all(0.058 < r["value"] < 0.08 for r in rtts)
    assert counters["ping"]["app_errors"] == 0


def test_same_seed_same_events_other_seed_other_draws():
    t = topo(PINGPONG, "links: {ping<->pong: {delay: 10ms, loss: 20%}}")
    a, _ = simulate_events(t, seed=3)
    b, _ = simulate_events(t, seed=3)
    c, _ = simulate_events(t, seed=4)
    assert a == b and a != c


def test_an_app_that_raises_is_counted_and_carries_on():
    events, counters = simulate_events(topo("  a: {app: echo.py:crash}\n  b: {}"))
    assert counters["a"]["app_errors"] == 1
    assert [e["name"] for e in events if e["event"] == "record"] == ["still_alive"]


def test_no_callbacks_after_duration_or_stop():
    events, _ = simulate_events(topo("  a: {app: echo.py:forever}\n  b: {app: echo.py:stopper}",
                                     duration="5s"))
    ticks = [e["value"] for e in events if e.get("name") == "tick"]
    assert ticks == [0.0, 1.0, 2.0, 3.0, 4.0]
    names = [e["name"] for e in events if e["event"] == "record" and e["ensemble"] == "b"]
    assert names == ["before_stop"]


def test_apps_mix_with_synthetic_flows():
    t = topo(PINGPONG, "flows:\n  - {name: bulk, from: ping, to: pong, size: 5000, count: 20,"
                       " interval: 100ms, ensure: true}")
    stats = flow_stats(simulate_events(t)[0])
    assert stats["bulk"].delivered == 20 and stats["app:ping-pong"].delivered == 50


def test_record_comparison_counts_per_run_and_quantiles():
    emu = [{"event": "record", "name": "x", "value": v} for v in (1, 2, 3, 4)]
    sim = [{"event": "record", "name": "x", "value": v, "replication": r}
           for r in range(2) for v in (2, 4)] + [{"event": "record", "name": "y", "value": 1}]
    rows = {r.name: r for r in record_comparison(emu, sim, replications=2)}
    assert rows["x"].emu_count == 4 and rows["x"].sim_count == 2.0
    assert rows["x"].emu_p50 == 2.5 and rows["x"].sim_p50 == 3.0
    assert rows["y"].emu_count == 0 and rows["y"].emu_p50 is None


def test_envelope_round_trip_and_foreign_payloads():
    data = encode("app:a-b", 7, {"v": [1, 2.5, "x"]})
    flow, msg, at = decode_header(data)
    assert (flow, msg) == ("app:a-b", 7)
    assert decode_header(b"TB\x00\x00hello") is None and decode_header(b"") is None
    assert decode_header(data[:9]) is None


def test_sending_to_an_unknown_peer_is_an_error_in_the_app(tmp_path):
    (tmp_path / "bad.py").write_text("def main(ens):\n    ens.send('nobody', 1)\n")
    t = load_topology_text("ensembles: {a: {app: bad.py}, b: {}}\nduration: 1s\n",
                           "bad.yaml", base_dir=tmp_path)
    _, counters = simulate_events(t)
    assert counters["a"]["app_errors"] == 1


def test_load_app_errors_say_what_is_wrong(tmp_path):
    (tmp_path / "x.py").write_text("def main(ens):\n    pass\n")
    (tmp_path / "boom.py").write_text("raise RuntimeError('at import')\n")
    with pytest.raises(AppError, match="not found"):
        load_app(tmp_path, "missing.py")
    with pytest.raises(AppError, match="no function other"):
        load_app(tmp_path, "x.py", "other")
    with pytest.raises(AppError, match="RuntimeError: at import"):
        load_app(tmp_path, "boom.py")


def test_pack_apps_copies_the_files_and_rewrites_the_paths(tmp_path):
    t = load_topology(Path(__file__).resolve().parents[2] / "examples/pipeline/pipeline.yaml")
    packed = pack_apps(t, tmp_path)
    assert (tmp_path / "apps" / "pipeline.py").read_text() == \
        (Path(t.base_dir) / "pipeline.py").read_text()
    assert packed.settings["edge"].app == "apps/pipeline.py:edge"
    assert packed.base_dir == str(tmp_path.resolve())
    # the run directory alone simulates it again
    events, _ = simulate_events(packed)
    assert any(e["event"] == "record" and e["name"] == "e2e_latency_s" for e in events)


def test_simulate_command_prints_the_apps_measurements(tmp_path, capsys):
    from testbed.cli import main
    (tmp_path / "echo.py").write_text((APPS / "echo.py").read_text())
    path = tmp_path / "apps.yaml"
    path.write_text(f"name: apps\nensembles:\n{PINGPONG}\nduration: 10s\n"
                    "defaults: {delay: 10ms}\n")
    assert main(["--results", str(tmp_path / "results"), "simulate", str(path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("apps: app measurements, simulated"):]
    # rtt_s: 50 records per replication, p50 ~ 2 x (10 ms + host cost)
    cells = next(line for line in table.splitlines() if line.startswith("rtt_s")).split()
    assert cells[2] == "50.0" and 0.058 < float(cells[4]) < 0.08, cells
