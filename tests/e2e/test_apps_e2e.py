"""User programs (`run:`) and apps (`app:`) in real hosts, end to end.

A program written here, using only the documented environment (TTNET_*)
and ttnet, runs in every ensemble's host on both backends: it must reach
its peers through the emulated links, write into TTNET_RUN_DIR (which ends
up in the run directory), and have its exit code reported; a program still
running at the duration is stopped. The shipped example app runs emulated
and simulated and gets a verdict."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from testbed.emulate.run import run_emulation
from testbed.pipelines.evaluate import compare_run
from testbed.spec.topology import load_topology

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import json, os, sys, threading, time
    from ttnet import TTNetwork, TTNetworkInterfaceType

    name = os.environ["TTNET_ENSEMBLE"]
    ip, port = os.environ["TTNET_BIND"].rsplit(":", 1)
    routes = json.loads(os.environ["TTNET_ROUTES"])
    out = os.environ["TTNET_RUN_DIR"]
    duration = float(os.environ["TTNET_DURATION"])
    role = sys.argv[1]
    got, lock = [], threading.Lock()

    def on_message(msg):
        with lock:
            got.append(net.decode(msg))

    net = TTNetwork(name, TTNetworkInterfaceType.UDP_IP, ip_addr=ip, port=int(port),
                    receiver_function=on_message)
    for peer, addr in routes.items():
        net.add_route(peer, addr)
    info = {"name": name, "bind": os.environ["TTNET_BIND"], "routes": routes,
            "duration": duration, "cwd": os.getcwd(),
            "cwd_writable": os.access(os.getcwd(), os.W_OK),
            "topology_file_here": os.path.exists("programs.yaml")}
    if role == "send":
        handles = [net.send_message(net.create_message("b", {"k": k, "from": name}),
                                    ensure=True) for k in range(5)]
        info["delivered"] = [h.wait(20) for h in handles]
    elif role == "receive":
        end = time.monotonic() + duration + 30       # stopped at the duration
        while time.monotonic() < end:
            with lock:
                info["got"] = list(got)
            # atomically: SIGTERM at the duration may land mid-write
            with open(os.path.join(out, "got.tmp"), "w") as f:
                json.dump(info, f)
            os.replace(os.path.join(out, "got.tmp"), os.path.join(out, "got.json"))
            time.sleep(0.1)
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f)
    net.close()
    sys.exit(3 if role == "fail" else 0)
""")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["docker", "netns"])
def test_run_programs_get_their_environment_peers_and_run_dir(tmp_path, backend):
    topo_dir = tmp_path / "topo"
    topo_dir.mkdir()
    (topo_dir / "prog.py").write_text(PROGRAM)
    (topo_dir / "programs.yaml").write_text(textwrap.dedent("""
        name: programs
        ensembles:
          a: {run: python3 prog.py send}
          b: {run: python3 prog.py receive}
          c: {run: python3 prog.py fail}
        duration: 6s
        defaults: {delay: 10ms}
    """))
    topo = load_topology(topo_dir / "programs.yaml")
    res = run_emulation(topo, backend, results_root=tmp_path / "results")
    run = res.run_dir
    assert res.meta["exit_codes"] == {"a": 0, "b": 0, "c": 4}, res.meta["outcomes"]
    progs = {n: o["program"] for n, o in res.meta["outcomes"].items()}
    assert progs["a"]["exit_code"] == 0 and not progs["a"]["stopped_at_duration"]
    assert progs["b"]["stopped_at_duration"] and 5 < progs["b"]["ran_s"] < 12
    assert progs["c"]["exit_code"] == 3 and not progs["c"]["stopped_at_duration"]
    a = json.loads((run / "a" / "info.json").read_text())
    b = json.loads((run / "b" / "got.json").read_text())
    hosts = res.meta["hosts"]
    assert a["bind"] == f"{hosts['a']}:8226" and a["duration"] == 6.0
    assert a["routes"] == {"b": f"{hosts['b']}:8226", "c": f"{hosts['c']}:8226"}
    assert a["delivered"] == [True] * 5
    assert sorted(m["k"] for m in b["got"]) == list(range(5))
    assert a["topology_file_here"]                # started in the topology's directory
    if backend == "docker":
        assert a["cwd"] == "/topology" and not a["cwd_writable"]
    else:
        assert Path(a["cwd"]) == topo_dir.resolve()
    assert (run / "logs" / "program-c.log").exists()


@pytest.mark.timeout(400)
def test_example_pipeline_emulated_and_simulated_gets_a_verdict(tmp_path):
    topo = load_topology(REPO / "examples" / "pipeline" / "pipeline.yaml")
    res = run_emulation(topo, "netns", results_root=tmp_path)
    assert res.ok, (res.meta.get("exit_codes"), res.meta.get("outcomes"))
    assert res.ensure_failures == 0
    assert all(o["app"]["errors"] == 0 for o in res.meta["outcomes"].values())
    rows, verdict, report = compare_run(res.run_dir, replications=5)
    flows = {r.flow for r in rows}
    assert {"readings:s1-edge", "aggregates:edge-cloud", "control:cloud-s1"} <= flows
    assert verdict is not None and not verdict.structural
    judged = {j.flow for j in verdict.judgements}
    assert "aggregates:edge-cloud" in judged
    text = report.read_text()
    assert "## App measurements" in text and "e2e_latency_s" in text
    # the app ran on both sides, with the same number of windows
    from testbed.analysis.compare import record_comparison
    from testbed.spec.events import load_events
    recs = {r.name: r for r in record_comparison(load_events(res.run_dir),
                                                   load_events(res.run_dir / "sim"), 5)}
    e2e = recs["e2e_latency_s"]
    assert abs(e2e.emu_count - e2e.sim_count) <= 3
    assert e2e.emu_p50 == pytest.approx(e2e.sim_p50, rel=0.25)
