"""k8s/ holds plain manifests rendered from the chart by `make k8s-manifests`; they must be up to date, build
with kustomize and be valid Kubernetes 1.35 objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, parse_docs, tool, venv_tool

K8S = ROOT / "k8s"


def test_k8s_manifests_are_up_to_date(tmp_path: Path) -> None:
    make = shutil.which("make")
    if not make:
        pytest.fail("make not found", pytrace=False)
    proc = subprocess.run(
        [make, "--no-print-directory", "-f", "mk/k8s.mk", "k8s-manifests", f"K8S_DIR={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fresh = (tmp_path / "taskproc.yaml").read_text(encoding="utf-8")
    committed = (K8S / "taskproc.yaml").read_text(encoding="utf-8")
    assert committed == fresh, "k8s/taskproc.yaml is out of date with the chart: run `make k8s-manifests`"


def test_kustomize_build(tmp_path: Path) -> None:
    proc = subprocess.run([tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    built = parse_docs(proc.stdout)
    generated = parse_docs((K8S / "taskproc.yaml").read_text(encoding="utf-8"))
    assert {(d["kind"], d["metadata"]["name"]) for d in built} == {
        (d["kind"], d["metadata"]["name"]) for d in generated
    } | {("Namespace", "taskproc")}
    kinds = {d["kind"] for d in built}
    assert {"Deployment", "StatefulSet", "Service", "Job", "NetworkPolicy"} <= kinds
    assert not kinds & {"Secret", "Pod", "ScaledObject", "ServiceMonitor"}, "no secrets, test pods or CRDs"
    for d in built:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "taskproc"
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
    refs = {
        ref["secretKeyRef"]["name"]
        for d in built
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        for ref in [e.get("valueFrom") or {}]
        if "secretKeyRef" in ref
    }
    assert refs == {"taskproc-credentials"}, "the plain manifests read passwords from the user's Secret only"

    out = tmp_path / "built.yaml"
    out.write_text(yaml.safe_dump_all(built), encoding="utf-8")
    check = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.35.0", "--quiet", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
