"""`fast_start: true` end to end on the netns backend: the agents' ttnet
sends small ensure=True messages as FAST datagrams through real sockets and
the NFQUEUE impairments (10 ms, 5% loss each way), every one arrives exactly
once, after about one one-way trip instead of three, and the simulator
predicts the same."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from testbed.analysis.stats import flow_stats, load_events
from testbed.emulate.run import run_emulation
from testbed.simulate.host import HostModel
from testbed.simulate.simulator import simulate_host
from testbed.spec.topology import load_topology

pytestmark = [pytest.mark.e2e]

FAST = """
name: fast
seed: 4
fast_start: true
ensembles: [a, b]
defaults: {delay: 10ms, loss: 5%}
flows:
  - {name: small, from: a, to: b, size: 200, count: 150, interval: 40ms, ensure: true, deadline: 10s}
  - {name: big, from: b, to: a, size: 3KB, count: 40, interval: 150ms, ensure: true, deadline: 10s}
"""


@pytest.mark.timeout(180)
def test_fast_start_run_delivers_once_after_one_trip_as_simulated(tmp_path: Path):
    path = tmp_path / "fast.yaml"
    path.write_text(textwrap.dedent(FAST))
    topo = load_topology(path)
    res = run_emulation(topo, "netns", tmp_path / "results")
    assert res.ok and res.ensure_failures == 0, res.meta.get("outcomes")
    emu = flow_stats(load_events(res.run_dir))
    assert emu["small"].delivered == 150 and emu["big"].delivered == 40
    assert emu["small"].duplicates == 0 and emu["big"].duplicates == 0
    sender = json.loads((res.run_dir / "counters-a.json").read_text())
    assert sender["fast_starts"] == 150 and sender["fast_sent"] > 150   # losses resent
    # One one-way trip (10 ms) plus the host, against three for 3 KB messages.
    assert 10.0 <= emu["small"].p50 * 1e3 < 16.0, emu["small"].p50
    assert emu["big"].p50 * 1e3 > 30.0
    sim = flow_stats(simulate_host(topo, HostModel.from_calibration(None), seed=topo.seed)[0])
    assert sim["small"].delivered == 150 and sim["small"].duplicates == 0
    print(f"small p50 emulated {emu['small'].p50 * 1e3:.2f} ms, simulated {sim['small'].p50 * 1e3:.2f} ms; big {emu['big'].p50 * 1e3:.2f} ms")
    assert abs(sim["small"].p50 - emu["small"].p50) < 0.005
