"""A non-editable install, as a user gets it from `pip install .`: the
console script runs, and the shipped topologies are found from any directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_install_has_console_script_and_topologies(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info into the source.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "build", "*.egg-info", "__pycache__", ".*_cache", "tests"))
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (target / "testbed" / "topologies" / "pair.yaml").is_file()
    assert (target / "ttnet" / "py.typed").is_file()
    script = target / "bin" / "ttnet-testbed"
    assert script.is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sys.executable, "-c", "import testbed; print(testbed.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    out = subprocess.run([sys.executable, str(script), "list"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pair" in out.stdout and "mesh-20" in out.stdout
    assert "usage: ttnet-testbed" in subprocess.run(
        [sys.executable, str(script), "--help"], cwd=elsewhere, env=env,
        capture_output=True, text=True).stdout
    sim = subprocess.run([sys.executable, str(script), "simulate", "pair", "--results",
                          str(tmp_path / "r")], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert list((tmp_path / "r" / "pair").glob("*-sim/events-sim.jsonl"))


def test_extras_split_simulation_from_emulation():
    """[sim] simulates and reports with pure-Python wheels (no root, Docker or C
    build); [emulate] adds the emulator's packages; the console script exists."""
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]

    def names(reqs):
        return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in reqs}
    sim = names(extras["sim"])
    assert {"simpy", "pyyaml", "matplotlib", "rich"} <= sim
    assert not sim & {"docker", "pyroute2", "netfilterqueue"}
    emulate = names(extras["emulate"])
    assert {"docker", "pyroute2", "netfilterqueue"} <= emulate and "ttnet" in emulate
    assert meta["dependencies"] == []                  # the core is stdlib-only
    assert meta["scripts"]["ttnet-testbed"] == "testbed.cli:main"
    assert meta["license"] == "MIT"
