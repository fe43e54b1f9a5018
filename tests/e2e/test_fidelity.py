"""Every shipped topology end to end: calibrate on this machine, emulate on
Docker, simulate, judge (testbed.analysis.fidelity) and report.

What this suite asserts is what holds on every run: every ensure=True
message arrived (the agents' exit codes), the impairments were applied (no
structural failure: no latency under the configured delay, no flow missing
on one side), the verdict and report were written and lead with the
outcome, and the model is not grossly off (no judged p50 whose confidence interval
lies wholly outside 25% of the simulated one).

The fidelity target itself (p50 within 5%, p95 within 10%, at a 0.1%
false-alarm rate) is the exit code of `make testbed`, not asserted here: on
this 2-core VM the host's own added latency moves by several milliseconds
from one run to the next (star's p50 +0% in one run, +7% in the next), more
than the model's calibrated spread, so the verdict FAILs some runs of a
faithful model. docs/simulation.md has the numbers. That the verdict fails
wrong models and passes a faithful one is pinned on recorded data by
tests/unit/test_fidelity_power.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.pipelines.calibrate import calibrate
from testbed.analysis.compare import format_table
from testbed.pipelines.evaluate import FIDELITY_MIN_DELAY_S, compare_run, load_notes
from testbed.emulate.run import run_emulation
from testbed.spec.topology import list_topologies, load_topology

pytestmark = [pytest.mark.e2e]

TOPO_DIR = Path(__file__).resolve().parents[2] / "testbed" / "topologies"
#: A model this far off on a median is broken, not noisy: the host adds a
#: few milliseconds to latencies of 8 ms and up.
GROSS_P50 = 0.25


def _in_target(name: str) -> bool:
    t = load_topology(TOPO_DIR / f"{name}.yaml")
    return any(min(t.link(f.src, f.dst).delay_s, t.link(f.dst, f.src).delay_s)
               >= FIDELITY_MIN_DELAY_S for f in t.flows)


#: `devices` (CPU-limited ensembles) is left out. The simulator now models
#: Docker's CPU limit as a quota per 100 ms period (its pis stay under it,
#: so both run them at full speed), but on the shared 2-core VM it was
#: measured on, its verdict FAILed 6 of 9 docker runs, and the same
#: topology without limits FAILed 3 of 6 (docs/topologies.md): the host's
#: noise, not the CPU model. Judged here once it passes reliably.
NOT_JUDGED_HERE = {"devices"}
TARGET = [n for n in list_topologies(TOPO_DIR) if _in_target(n) and n not in NOT_JUDGED_HERE]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    info = calibrate("docker", root)
    print(f"\ncalibration: { {k: v for k, v in info.items() if k != 'hop_noise_s'} }")
    return root, info


def test_target_covers_the_shipped_topologies():
    assert {"pair", "star", "edge-cloud", "lossy", "mesh-20"} <= set(TARGET)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", TARGET)
def test_simulation_matches_emulation(calibrated, name):
    root, info = calibrated
    res = run_emulation(load_topology(TOPO_DIR / f"{name}.yaml"), "docker", results_root=root)
    assert res.ok, (res.meta.get("exit_codes"), res.meta.get("outcomes"))
    assert res.ensure_failures == 0
    rows, verdict, report = compare_run(res.run_dir, calibration=info)
    print(f"\n{name}:\n{format_table(rows)}\nfidelity {verdict.outcome}: {verdict.counts()}")
    for j in verdict.undetermined:
        print("  UNDETERMINED", j.describe())
    for j in verdict.failed:
        print("  FAIL", j.describe())
    # how busy the emulator and the machine were: a gross failure on a
    # machine that other work kept busy says so in CI's log
    load = "\n".join(load_notes(res.meta, info))
    print(load)
    assert not verdict.structural, verdict.structural
    # judged like the verdict, with the interval, at a 25% band: a noisy
    # median (lossy's 64 KB flow from 100 messages) is not a broken model
    gross = [j.describe() for j in verdict.judgements if j.quantity == "p50" and (
        (j.emu_lo is not None and j.emu_lo > j.sim * (1 + GROSS_P50))
        or (j.emu_hi is not None and j.emu_hi < j.sim * (1 - GROSS_P50)))]
    assert not gross, "\n".join(gross) + f"\n{load}\nreport: {report}"
    assert report.read_text().startswith(f"# {name}: emulated vs simulated\n\n## Fidelity: ")
    assert list(res.run_dir.glob("*.png")) and (res.run_dir / "verdict.json").exists()
