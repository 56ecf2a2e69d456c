"""checkov (own venv: .tools/checkov-venv) finds no failed check, on the rendered manifests of every scenario
(--framework kubernetes) and on the chart itself (--framework helm, which runs `helm` 3 from PATH). The only
exceptions are checks skipped in the chart with checkov.io/skipN annotations that give a reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHART, NAMESPACE, ROOT, SCENARIOS, Helm, Renders, scenario_file

CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"))
HELM3_DIR = ROOT / ".tools" / "helm3"
SKIP = re.compile(r"^checkov\.io/skip\d+$")
REASONED = re.compile(r"^CKV2?_K8S_\d+=\S.{30,}$")


def checkov(*args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} not found; run `make checkov` (it creates .tools/checkov-venv)", pytrace=False)
    proc = subprocess.run(
        [str(CHECKOV), *args, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    reports = result if isinstance(result, list) else [result]
    return [r for r in reports if isinstance(r, dict) and "results" in r]


def describe_failures(reports: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    )


@pytest.mark.slow
def test_checkov_kubernetes_on_rendered_manifests(rendered_dir: Path) -> None:
    reports = checkov("--directory", str(rendered_dir), "--framework", "kubernetes")
    assert len(reports) == 1
    assert reports[0]["check_type"] == "kubernetes"
    summary = reports[0]["summary"]
    assert summary["failed"] == 0, describe_failures(reports)
    assert summary["parsing_errors"] == 0
    scanned = {Path(c["file_path"]).stem for c in reports[0]["results"]["passed_checks"]}
    assert scanned == set(SCENARIOS), f"checkov did not scan every scenario: {scanned}"
    kinds = {c["resource"].split(".")[0] for c in reports[0]["results"]["passed_checks"]}
    assert {"Deployment", "StatefulSet", "Job", "Pod", "Secret", "Service"} <= kinds


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov_helm_on_chart(helm3: Helm, scenario: str) -> None:
    helm_on_path = HELM3_DIR / "helm"
    if not helm_on_path.exists():
        pytest.fail(f"{helm_on_path} missing; run `make tools`", pytrace=False)
    version = subprocess.run([str(helm_on_path), "version", "--short"], capture_output=True, text=True, check=False)
    assert version.stdout.startswith("v3."), f"{helm_on_path} must be helm 3: {version.stdout}{version.stderr}"
    env = {"PATH": f"{HELM3_DIR}{os.pathsep}{os.environ['PATH']}", "HELM_NAMESPACE": NAMESPACE}
    args = ["--directory", str(CHART), "--framework", "helm", "--var-file", str(scenario_file(scenario))]
    reports = checkov(*args, env=env)
    assert [r["check_type"] for r in reports] == ["helm"], reports
    summary = reports[0]["summary"]
    assert summary["failed"] == 0, describe_failures(reports)
    # checkov silently scans nothing when `helm template` writes to stderr: make sure the workloads were seen
    resources = {c["resource"].split(".")[0] for c in reports[0]["results"]["passed_checks"]}
    assert {"Deployment", "Job", "Pod"} <= resources, resources


def test_every_checkov_skip_has_a_reason(helm4: Helm, renders: Renders) -> None:
    seen = set()
    for scenario in SCENARIOS:
        for d in renders.docs(helm4, scenario):
            for key, value in (d["metadata"].get("annotations") or {}).items():
                if SKIP.match(key):
                    assert REASONED.match(value), f"{d['kind']}/{d['metadata']['name']} {key}: {value!r}"
                    seen.add(value.split("=", 1)[0])
    # the skips the chart needs, and no more (see templates/_helpers.tpl)
    assert seen == {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38"}
