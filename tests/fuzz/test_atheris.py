"""Run the atheris harness for a bounded number of inputs (atheris is in
the test extras; a missing atheris is an error, not a skip)."""
import subprocess
import sys
from pathlib import Path

import pytest

import atheris  # noqa: F401  (fail loudly if the test extras are missing)

HARNESS = Path(__file__).with_name("fuzz_wire.py")


@pytest.mark.timeout(120)
def test_atheris_finds_no_crash_in_20000_inputs(tmp_path):
    proc = subprocess.run([sys.executable, str(HARNESS), "-runs=20000", "-seed=1",
                           f"-artifact_prefix={tmp_path}/"],
                          capture_output=True, text=True, timeout=110)
    tail = proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "Done 20000 runs" in proc.stderr, tail
