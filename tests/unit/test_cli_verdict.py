"""The verdict's commands and exit codes (python -m testbed compare /
power / false-alarms), on a small run made from simulated events so no
emulation is needed: 0 when nothing FAILs, 1 on a FAIL, 2 for a directory
that is not an emulated run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.cli import main
from testbed.spec.model import Flow, LinkSpec, Topology
from testbed.simulate.simulator import simulate_events
from testbed.spec.topology import topology_to_yaml

TOPO = Topology("tiny", ("a", "b"), LinkSpec(delay_s=0.01, loss=0.01),
                flows=(Flow("t", "a", "b", sizes=(64,), count=300, interval_s=0.01,
                            ensure=False, deadline_s=1.0),), seed=2)
CALIBRATION = {"host_cost_s": 1e-5, "hop_latency_s": 3e-4, "source": "test"}


def fake_run(root: Path, stretch: float = 1.0) -> Path:
    """An 'emulated' run: events of a simulation with another seed, with
    every latency multiplied by ``stretch``."""
    run = root / "tiny" / "run1"
    run.mkdir(parents=True)
    (run / "topology.yaml").write_text(topology_to_yaml(TOPO))
    (run / "meta.json").write_text(json.dumps({"kind": "emulated", "backend": "docker"}))
    (run / "calibration.json").write_text(json.dumps(CALIBRATION))
    events, _ = simulate_events(TOPO, 1e-5, seed=999, hop_latency_s=3e-4)
    sends = {e["msg"]: e["t"] for e in events if e["event"] == "send"}
    with open(run / "events-a.jsonl", "w") as fh:
        for e in events:
            if e["event"] == "deliver":
                e["t"] = sends[e["msg"]] + (e["t"] - sends[e["msg"]]) * stretch
            fh.write(json.dumps(e) + "\n")
    return run


def test_compare_exits_0_for_a_faithful_model_and_leads_the_report_with_the_verdict(
        tmp_path, capsys):
    run = fake_run(tmp_path)
    assert main(["--results", str(tmp_path), "compare", str(run)]) == 0
    out = capsys.readouterr().out
    assert "fidelity PASS" in out or "fidelity UNDETERMINED" in out
    report = (run / "report.md").read_text()
    assert report.splitlines()[2].startswith("## Fidelity: ")
    assert json.loads((run / "verdict.json").read_text())["counts"]["fail"] == 0


def test_compare_exits_1_on_a_fail_and_names_it(tmp_path, capsys):
    run = fake_run(tmp_path, stretch=1.5)
    assert main(["--results", str(tmp_path), "compare", str(run)]) == 1
    out = capsys.readouterr().out
    assert "fidelity FAIL" in out and "FAIL t: p50" in out


def test_compare_refuses_a_simulated_run_and_a_non_run_with_exit_2(tmp_path, capsys):
    run = fake_run(tmp_path)
    main(["--results", str(tmp_path), "compare", str(run)])
    capsys.readouterr()
    assert main(["--results", str(tmp_path), "compare", str(run / "sim")]) == 2
    assert "is a simulated run" in capsys.readouterr().err
    assert main(["--results", str(tmp_path), "compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cached_simulation_is_reused_only_for_the_same_model(tmp_path):
    run = fake_run(tmp_path)
    main(["--results", str(tmp_path), "compare", str(run)])
    first = (run / "sim" / "meta.json").stat().st_mtime_ns
    main(["--results", str(tmp_path), "compare", str(run)])
    assert (run / "sim" / "meta.json").stat().st_mtime_ns == first      # reused
    (run / "calibration.json").write_text(json.dumps({**CALIBRATION, "host_cost_s": 2e-5}))
    main(["--results", str(tmp_path), "compare", str(run)])
    meta = json.loads((run / "sim" / "meta.json").read_text())
    assert meta["host_model"]["host_cost_s"] == 2e-5                     # re-simulated


def test_power_and_false_alarms_commands_run_and_report(tmp_path, capsys):
    run = fake_run(tmp_path)
    code = main(["--results", str(tmp_path), "power", str(run), "--replications", "3"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("faithful")
    assert "delay x1.3" in out and "FAIL" in out
    assert "jitter x3" in out and "changes nothing" in out        # no jitter in TOPO
    # exit 1 when the faithful model FAILs or some mutation is not caught
    lines = [line.split() for line in out.splitlines() if "changes nothing" not in line]
    missed = [w for w in lines if w[0] != "faithful" and "FAIL" not in w]
    faithful_failed = lines[0][1] == "FAIL"
    assert code == int(bool(missed) or faithful_failed)
    topo_file = tmp_path / "tiny.yaml"
    topo_file.write_text(topology_to_yaml(TOPO))
    (tmp_path / "calibration.json").write_text(json.dumps(CALIBRATION))
    assert main(["--results", str(tmp_path), "false-alarms", str(topo_file),
                 "--trials", "2", "--replications", "5"]) == 0
    assert "tiny: 2 faithful runs: " in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "x"])
def test_simulate_rejects_a_negative_or_non_numeric_host_cost(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["simulate", "pair", "--host-cost", value])
    assert info.value.code == 2
