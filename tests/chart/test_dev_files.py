"""skaffold.yaml, kind-config.yaml, the e2e workflow and values, and the scripts behind `make tools` / `make e2e`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .conftest import CHART, ROOT, Helm, find, parse_docs, venv_tool

WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"
E2E_VALUES = ROOT / "tests" / "e2e" / "values.yaml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_workflow_matches_github_schema() -> None:
    proc = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = load(WORKFLOW)["jobs"]["kind"]["steps"]
    assert any(step.get("run") == "make e2e" for step in steps)


def test_check_jsonschema_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n", encoding="utf-8")
    proc = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0


def test_kind_config() -> None:
    cfg = load(ROOT / "kind-config.yaml")
    assert cfg["kind"] == "Cluster"
    assert cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]
    for node in cfg["nodes"]:
        assert node["image"].startswith("kindest/node:v1.35.")
        assert "@sha256:" in node["image"]


def test_skaffold(helm4: Helm) -> None:
    cfg = load(ROOT / "skaffold.yaml")
    assert cfg["apiVersion"] == "skaffold/v4beta14"
    assert cfg["kind"] == "Config"
    (artifact,) = cfg["build"]["artifacts"]
    assert artifact["image"] == "taskproc"
    assert (ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()
    assert cfg["build"]["local"]["push"] is False
    profiles = {p["name"]: p for p in cfg["profiles"]}
    assert profiles["kind"]["deploy"]["kubeContext"] == "kind-taskproc"
    for deploy in (cfg["deploy"], profiles["kind"]["deploy"]):
        (release,) = deploy["helm"]["releases"]
        assert (ROOT / release["chartPath"]).resolve() == CHART
        assert release["setValueTemplates"] == {
            "image.repository": "{{.IMAGE_REPO_taskproc}}",
            "image.tag": "{{.IMAGE_TAG_taskproc}}",
        }
        # the values skaffold sets exist in the chart: render exactly what skaffold would install
        sets = tuple(f"{k}={v}" for k, v in release.get("setValues", {}).items())
        sets += ("image.repository=localhost/taskproc", "image.tag=abc123")
        proc = helm4.run(
            "template", release["name"], str(CHART), "--namespace", release["namespace"],
            *(arg for s in sets for arg in ("--set", s)),
        )  # fmt: skip
        docs = parse_docs(proc.stdout)
        svc = find(docs, "Service", "-api")
        assert find(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "localhost/taskproc:abc123"
        )
        (forward,) = cfg["portForward"]
        assert forward["resourceType"] == "service"
        assert forward["resourceName"] == svc["metadata"]["name"]
        assert forward["namespace"] == release["namespace"]
        assert forward["port"] == svc["spec"]["ports"][0]["port"] == 8000
        assert forward["localPort"] == 8000
        assert forward["address"] == "127.0.0.1"


def test_e2e_values_render(helm: Helm) -> None:
    proc = helm.template(E2E_VALUES, sets=("image.repository=taskproc", "image.tag=e2e"))
    docs = parse_docs(proc.stdout)
    so = find(docs, "ScaledObject", "-worker")["spec"]
    assert so["minReplicaCount"] == 0
    assert so["cooldownPeriod"] <= 30, "e2e waits for the scale-down to 0"
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PrometheusRule"}
    assert find(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_scripts_are_executable_bash() -> None:
    for script in ("scripts/tools.sh", "scripts/e2e.sh"):
        path = ROOT / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr


def test_tools_resolution(tmp_path: Path) -> None:
    tools = str(ROOT / "scripts" / "tools.sh")
    env = {**os.environ, "HELM": "/opt/custom/helm"}
    out = subprocess.run(["bash", tools, "path", "helm"], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "/opt/custom/helm"
    lines = subprocess.run(["bash", tools, "env"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["HELM", "HELM3", "KUBECTL"]
    bad = subprocess.run(["bash", tools, "path", "nonsense"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    assert "unknown tool" in bad.stderr


def fake_docker(tmp_path: Path, *, engine: bool) -> dict[str, str]:
    """A PATH whose `docker` answers `docker info` as an engine would (or not): nothing real is started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nexit {0 if engine else 1}\n", encoding="utf-8")
    docker.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PY": sys.executable}


def test_e2e_script_stops_clearly_without_docker(tmp_path: Path) -> None:
    env = fake_docker(tmp_path, engine=False)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "e2e.sh")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode != 0
    assert "e2e: ERROR: no Docker engine reachable" in proc.stderr


def test_e2e_script_stops_clearly_without_kind(tmp_path: Path) -> None:
    env = {**fake_docker(tmp_path, engine=True), "KIND": str(tmp_path / "no-kind-here")}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "e2e.sh")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode != 0
    assert "is not an executable kind binary" in proc.stderr
