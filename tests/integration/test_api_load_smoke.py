"""`python -m bench.api_load` keeps working: both APIs (taskproc's and bench/minimal_api.py) take submits, and
the comparison reports requests/s, CPU per request and open-loop latency for each. No speed is asserted (a
shared machine is too noisy); the figures come from running it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_api_load_compares_both_apis(tmp_path: Path) -> None:
    out = tmp_path / "api_load.json"
    argv = [sys.executable, "-m", "bench.api_load", "--seconds", "1", "--rounds", "1", "--rate", "20"]
    proc = subprocess.run([*argv, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    for name in ("taskproc", "minimal"):
        summary = result["summary"][name]
        assert summary["errors"] == 0, result["rounds"][name]
        assert summary["requests_per_s"] > 0
        assert summary["api_cpu_ms_per_request"] > 0
        assert result["rounds"][name][0]["paced"]["count"] == 20
    assert result["ratio_taskproc_over_minimal"]["cpu_per_request"] > 0
    assert "| taskproc |" in proc.stdout and "| minimal |" in proc.stdout
