"""`podman kube play` of the rendered API and worker Deployments: they start, serve and run a task.

podman 4.3's kube play is not a kubelet; the rendered YAML is changed only where it falls short (measured):
- Jobs, StatefulSets and Services are not supported: the migrate Job runs as a plain container (harness.Runner),
  Postgres and Redis are the session's servers, and nothing needs a Service (host network).
- Secrets it creates are unreadable by secretKeyRef: each rendered Secret is created with `podman secret create`
  holding the JSON of its `data` map (what kube play's secretKeyRef reads), under a per-test name.
- Annotation values over 63 characters are rejected: those (checkov skip notes) are dropped.
- `$(VAR)` in env and args is not expanded: expanded here as the kubelet would.
- Init containers: kube play removes a finished init container while the pod comes up and fails on one that is
  still exiting ("cannot remove container ... as it is running", measured; its "always" annotation did not
  help). The test runs each Deployment's init containers (`migrate --wait-for-schema`) as plain containers from
  the same rendered spec first, and plays the Deployments without them.
- The database and Redis URLs point at the session's servers, on the host network (hostNetwork: true), so a
  Deployment runs one replica (two would share the host's ports), and the containers' `ports` are dropped
  (kube play turns them into port mappings, which it refuses on the host network).
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .harness import (
    FAST_VALUES,
    Doc,
    Runner,
    Target,
    _expand,
    component,
    podman,
    render,
    resolve_env,
    submit,
    wait_status,
)
from support import wait_for

pytestmark = pytest.mark.slow
MAX_ANNOTATION = 63


def _short_annotations(meta: dict[str, Any]) -> None:
    notes = meta.get("annotations") or {}
    meta["annotations"] = {k: v for k, v in notes.items() if len(str(v)) <= MAX_ANNOTATION}


def for_kube_play(docs: list[Doc], deployment: Doc, *, image: str, target: Target, suffix: str) -> Doc:
    """The rendered Deployment with only the changes podman 4.3's kube play needs (module docstring)."""
    out = copy.deepcopy(deployment)
    out["metadata"]["name"] += suffix
    out["spec"]["replicas"] = 1
    _short_annotations(out["metadata"])
    template = out["spec"]["template"]
    _short_annotations(template["metadata"])
    spec = template["spec"]
    # Run by the test as plain containers before the play (module docstring).
    spec.pop("initContainers", None)
    spec["hostNetwork"] = True
    for c in spec.get("initContainers", []) + spec["containers"]:
        c["image"] = image
        c.pop("ports", None)
        resolved = target.point(resolve_env(docs, c, pod_name=out["metadata"]["name"]))
        for item in c.get("env", []):
            if "value" in item:
                item["value"] = resolved[item["name"]]
            elif "secretKeyRef" in item["valueFrom"]:
                item["valueFrom"]["secretKeyRef"]["name"] += suffix
        c["args"] = [_expand(a, resolved) for a in c.get("args", [])]
    return out


@pytest.fixture
def played(target: Target, image: str, tmp_path: Path) -> Iterator[tuple[Runner, Path]]:
    docs = render(*FAST_VALUES)
    suffix = f"-kp{os.getpid()}"
    runner = Runner(docs, target, image)
    secrets = []
    for d in docs:
        if d["kind"] == "Secret":
            data = dict(d.get("data", {}))
            data |= {k: base64.b64encode(str(v).encode()).decode() for k, v in d.get("stringData", {}).items()}
            path = tmp_path / f"{d['metadata']['name']}.json"
            path.write_text(json.dumps(data))
            name = d["metadata"]["name"] + suffix
            podman("secret", "rm", name, check=False)
            podman("secret", "create", name, str(path))
            secrets.append(name)
    manifest = tmp_path / "kube.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                for_kube_play(docs, component(docs, "Deployment", role), image=image, target=target, suffix=suffix)
                for role in ("api", "worker")
            ]
        )
    )
    try:
        yield runner, manifest
    finally:
        for line in podman(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={suffix}", check=False
        ).stdout.split():
            print(f"--- {line} ---\n{podman('logs', '--tail', '40', line, check=False).stderr}")
        podman("kube", "down", str(manifest), check=False)
        for name in secrets:
            podman("secret", "rm", name, check=False)
        print(runner.logs())
        runner.close()


def test_kube_play_runs_the_rendered_deployments(played: tuple[Runner, Path]) -> None:
    runner, manifest = played
    migrate = runner.start(component(runner.docs, "Job", "migrate"))
    assert migrate.wait_exit(90) == 0, migrate.logs()
    for role in ("api", "worker"):
        deployment = component(runner.docs, "Deployment", role)
        for index, _ in enumerate(deployment["spec"]["template"]["spec"].get("initContainers", [])):
            init = runner.start(deployment, init=index)
            assert init.wait_exit(60) == 0, init.logs()
    podman("kube", "play", str(manifest), timeout=180)
    api_spec = component(runner.docs, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
    worker_spec = component(runner.docs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    api_port = next(p["containerPort"] for p in api_spec["ports"] if p["name"] == "http")
    metrics_port = next(p["containerPort"] for p in worker_spec["ports"] if p["name"] == "metrics")

    def answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(lambda: answers(f"http://127.0.0.1:{api_port}/readyz"), timeout=90, what="played API /readyz")
    wait_for(lambda: answers(f"http://127.0.0.1:{metrics_port}/healthz"), timeout=90, what="played worker /healthz")
    # kube play applied the chart's securityContext itself.
    for line in podman("ps", "--format", "{{.Names}}", "--filter", f"name=-kp{os.getpid()}").stdout.split():
        if "infra" in line:
            continue
        fmt = "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}"
        assert podman("inspect", "--format", fmt, line).stdout.split() == ["true", "10001:10001"], line

    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        task_id = submit(client, "add", {"a": 20, "b": 22})
        assert wait_status(client, task_id, "completed")["result"] == {"sum": 42}
