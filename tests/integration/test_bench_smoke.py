"""`python -m bench --smoke` keeps working: it runs, measures something, and writes its JSON.

How fast anything is, is not asserted here (shared CI machines are too noisy for that); `make bench` is where
the numbers come from.
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
def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    [path] = list(tmp_path.glob("*-smoke.json"))
    results = json.loads(path.read_text())

    assert set(results) >= {"meta", "taskproc", "peers", "memory", "targets", "duration_s"}
    assert "errors" not in results
    n = results["meta"]["args"]["n"]
    tp = results["taskproc"]
    assert set(tp) >= {"submit_single", "submit_paced", "drain", "end_to_end", "end_to_end_limited", "pickup"}
    assert tp["submit_single"]["count"] > 0
    assert tp["submit_paced"]["count"] > 0
    assert tp["drain"]["batch_submit"]["tasks_per_s"] > 0
    assert tp["end_to_end_limited"]["keys"] == 10
    for phase in ("drain", "end_to_end", "end_to_end_limited"):
        assert tp[phase]["completed"] == n
        assert tp[phase]["tasks_per_s"] > 0
    assert tp["pickup"]["pickup"]["count"] > 0
    for peer in ("arq-defaults", "arq-tuned"):
        assert results["peers"][peer]["completed"] == n
        assert results["peers"][peer]["tasks_per_s"] > 0
    assert results["memory"]["api_mb"] > 0
    assert results["memory"]["worker_mb"] > 0
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "SKIPPED"}
    # The markdown report was printed.
    assert "**Targets**" in proc.stdout
    assert "per-key limits" in proc.stdout
