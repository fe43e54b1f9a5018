"""The scale benchmark (``python -m benchmarks.scale``) through its command
line: a real, small run on netns with its rows and JSON, and its errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def scale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.scale", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_scale_measures_up_down_and_memory_of_real_hosts(tmp_path):
    out = scale("--count", "2", "4", "--backend", "netns", "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["backend"], r["count"]) for r in rows] == [("netns", 2), ("netns", 4)]
    for r in rows:
        assert r["exit_codes_ok"] and r["up_s"] > 0 and r["down_s"] > 0
        assert r["loaded"] == r["count"]         # measured with every host loaded
        # a python3 with ttnet and the agent module loaded: megabytes, not 0
        assert 5 < r["rss_mb_median"] < 200, r
        assert r["verdict"] == "-"            # the target is judged at 100 ensembles
    assert "target: 100 up < 60 s" in out.stdout
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for r in rows:                            # each run's namespaces are gone
        assert f"ttnet-{r['run_id']}-" not in ns, ns


def test_scale_refuses_bad_arguments():
    out = scale("--count", "0", "--backend", "netns")
    assert out.returncode == 2 and "positive" in out.stderr
    out = scale("--count", "2", "--backend", "nope")
    assert out.returncode == 2 and "unknown backend 'nope'" in out.stdout + out.stderr
