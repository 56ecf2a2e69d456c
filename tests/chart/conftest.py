"""Chart-only fixtures: the helm binaries, rendered manifests per scenario (cached per session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "taskproc"
CRDS = ROOT.parent / "shared" / "crds"
IMAGE_VALUES = Path(__file__).resolve().parent / "image-values.yaml"
SCENARIOS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "taskproc"
NAMESPACE = "taskproc"
# The optional APIs the chart renders for when the cluster serves them (KEDA and prometheus-operator CRDs).
API_VERSIONS = (
    "keda.sh/v1alpha1/ScaledObject",
    "keda.sh/v1alpha1/TriggerAuthentication",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
KUBE_VERSION = "1.35.0"


def tool(name: str) -> str:
    """Path of helm (4), helm3 or kubectl as scripts/tools.sh resolves it; a missing tool fails the test."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools.sh"), "path", name], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"{name} not found ({proc.stderr.strip()}); run `make tools`", pytrace=False)
    return proc.stdout.strip()


def venv_tool(name: str) -> str:
    """A console script installed next to this Python (the dev venv), else on PATH; missing fails the test."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH; install the dev extras", pytrace=False)
    return found


@dataclass(frozen=True)
class Helm:
    name: str  # "helm4" | "helm3"
    path: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_NAMESPACE": NAMESPACE}
        proc = subprocess.run([self.path, *args], capture_output=True, text=True, env=env, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"{self.name} {' '.join(args)} failed:\n{proc.stderr}", pytrace=False)
        return proc

    def template(
        self,
        *values_files: Path,
        sets: tuple[str, ...] = (),
        api_versions: tuple[str, ...] = API_VERSIONS,
        check: bool = True,
        show_only: str | None = None,
        base_values: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        if base_values:  # the image repository the chart requires
            args += ["--values", str(IMAGE_VALUES)]
        for api in api_versions:
            args += ["--api-versions", api]
        for f in values_files:
            args += ["--values", str(f)]
        for s in sets:
            args += ["--set", s]
        if show_only:
            args += ["--show-only", show_only]
        return self.run(*args, check=check)


def parse_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def scenario_file(scenario: str) -> Path:
    return CHART / "ci" / f"{scenario}-values.yaml"


@pytest.fixture(scope="session")
def helm4() -> Helm:
    h = Helm("helm4", tool("helm"))
    version = h.run("version", "--template", "{{.Version}}").stdout
    assert version.startswith("v4."), f"{h.path} is {version}, not helm 4"
    return h


@pytest.fixture(scope="session")
def helm3() -> Helm:
    h = Helm("helm3", tool("helm3"))
    version = h.run("version", "--template", "{{.Version}}").stdout
    assert version.startswith("v3."), f"{h.path} is {version}, not helm 3"
    return h


@pytest.fixture(scope="session", params=["helm4", "helm3"])
def helm(request: pytest.FixtureRequest) -> Helm:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


class Renders:
    """`helm template` output per (helm, scenario), rendered once per session."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], str] = {}

    def text(self, helm: Helm, scenario: str) -> str:
        key = (helm.name, scenario)
        if key not in self._cache:
            self._cache[key] = helm.template(scenario_file(scenario)).stdout
        return self._cache[key]

    def docs(self, helm: Helm, scenario: str) -> list[dict[str, Any]]:
        return parse_docs(self.text(helm, scenario))


@pytest.fixture(scope="session")
def renders() -> Renders:
    return Renders()


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory, renders: Renders, helm4: Helm) -> Path:
    """Every scenario rendered by helm 4 into <dir>/<scenario>.yaml (for tools that scan files)."""
    out = tmp_path_factory.mktemp("rendered")
    for scenario in SCENARIOS:
        (out / f"{scenario}.yaml").write_text(renders.text(helm4, scenario), encoding="utf-8")
    return out


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The one object of `kind` whose name ends with name_suffix."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def worker_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every worker Deployment: the catch-all `<fullname>-worker`, or one `<fullname>-worker-<pool>` per pool."""
    return [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] != "Pod" else obj["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)
