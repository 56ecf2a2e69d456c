"""Install order, rollouts and subchart use, checked on the rendered objects of every scenario."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, SCENARIOS, Helm, Renders, find, parse_docs, scenario_file, worker_deployments

PRE, RESOURCE, POST = 0, 1, 2


def _phase(doc: dict[str, Any]) -> int | None:
    """When Helm creates `doc` in `helm install --wait`: pre-install hooks, then the resources (and the wait for
    their readiness), then post-install hooks. None for objects an install never creates (test hooks)."""
    hooks = (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")
    if not hooks:
        return RESOURCE
    hooks = hooks.split(",")
    if "pre-install" in hooks:
        return PRE
    if "post-install" in hooks:
        return POST
    return None


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def _env_needs(
    c: dict[str, Any], docs: list[dict[str, Any]], by_name: dict[tuple[str, str], dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """What a container's environment refers to: Secrets it reads, StatefulSets its URLs connect to."""
    out: list[tuple[str, dict[str, Any]]] = []
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ("Secret", ref["name"]) in by_name:
            out.append((f"{c['name']} env {e['name']}", by_name[("Secret", ref["name"])]))
        value = e.get("value", "")
        for d in docs:
            if d["kind"] == "StatefulSet" and f"@{d['metadata']['name']}:" in value:
                out.append((f"{c['name']} connects to {d['metadata']['name']}", d))
    return out


def _needs(doc: dict[str, Any], docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(reason, object) pairs this workload cannot start or become ready without."""
    spec = _pod_spec(doc)
    if spec is None:
        return []
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    out: list[tuple[str, dict[str, Any]]] = []
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        out += _env_needs(c, docs, by_name)
    sa = spec.get("serviceAccountName")
    if sa and ("ServiceAccount", sa) in by_name:
        out.append(("serviceAccountName", by_name[("ServiceAccount", sa)]))
    # API and worker pods need the schema (their init container waits for it; before that, the app itself did)
    args = [a for c in spec["containers"] for a in c.get("args", [])]
    if args[:1] in (["api"], ["worker"]):
        for d in docs:
            jspec = _pod_spec(d)
            if d["kind"] == "Job" and jspec and jspec["containers"][0].get("args", [])[:1] == ["migrate"]:
                out.append(("the schema", d))
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_install_wait_cannot_deadlock(helm4: Helm, renders: Renders, scenario: str) -> None:
    """Nothing `helm install --wait` waits for (the resources) needs an object that only a post-install hook
    creates, and no pre-install hook needs a resource (Helm runs pre-install hooks to completion first)."""
    docs = renders.docs(helm4, scenario)
    problems = []
    for doc in docs:
        phase = _phase(doc)
        if phase is None:
            continue
        for reason, dep in _needs(doc, docs):
            dep_phase = _phase(dep)
            if dep_phase is None or dep_phase > phase:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} ({reason}) needs "
                                f"{dep['kind']}/{dep['metadata']['name']}, created later")  # fmt: skip
    assert not problems, "\n".join(problems)
    workers = worker_deployments(docs)
    assert workers, "no worker Deployment"
    for deployment in [find(docs, "Deployment", "-api"), *workers]:
        init = deployment["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["args"][:2] == ["migrate", "--wait-for-schema"], deployment["metadata"]["name"]


def test_deadlock_check_catches_a_post_install_migration(helm4: Helm, renders: Renders) -> None:
    """The old chart's order: the migration as a post-install hook while the pods need the schema."""
    docs = [dict(d) for d in renders.docs(helm4, "keda-off")]
    job = next(d for d in docs if d["kind"] == "Job")
    job["metadata"] = {**job["metadata"], "annotations": {"helm.sh/hook": "post-install,pre-upgrade"}}
    worker = find(docs, "Deployment", "-worker")
    assert [dep for _, dep in _needs(worker, docs) if dep is job]
    assert _phase(job) == POST > _phase(worker)  # type: ignore[operator]


def test_migration_job_is_an_ordinary_resource_named_after_its_image(helm4: Helm) -> None:
    def job(*sets: str) -> dict[str, Any]:
        return find(parse_docs(helm4.template(sets=sets).stdout), "Job")

    default = job()
    assert "helm.sh/hook" not in (default["metadata"].get("annotations") or {})
    assert default["spec"]["ttlSecondsAfterFinished"] == 86400
    assert default["spec"]["backoffLimit"] == 6
    assert default["metadata"]["name"] == job()["metadata"]["name"], "an unchanged render keeps the Job"
    assert job("image.tag=0.2.0")["metadata"]["name"] != default["metadata"]["name"]
    argo = job("migrations.hook=argocd")["metadata"]["annotations"]
    assert argo["argocd.argoproj.io/hook"] == "Sync"
    assert "helm.sh/hook" not in argo


def test_helm_hook_mode_refused_with_the_bundled_postgres(helm4: Helm) -> None:
    proc = helm4.template(sets=("migrations.hook=helm",), check=False)
    assert proc.returncode != 0
    assert "migrations.hook=helm needs an external database" in proc.stderr


def _pod_template(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return find(docs, kind, suffix)["spec"]["template"]  # type: ignore[no-any-return]


def test_secret_and_config_changes_roll_the_pods(helm4: Helm) -> None:
    base = parse_docs(helm4.template(sets=("auth.enabled=true", "auth.apiKey=a")).stdout)
    key = parse_docs(helm4.template(sets=("auth.enabled=true", "auth.apiKey=b")).stdout)
    for name in ("-api", "-worker"):
        before = _pod_template(base, "Deployment", name)["metadata"]["annotations"]
        after = _pod_template(key, "Deployment", name)["metadata"]["annotations"]
        assert before["checksum/secret"] != after["checksum/secret"], name
        assert before["checksum/config"] == after["checksum/config"]


def test_chart_bump_does_not_restart_redis_or_postgres(helm4: Helm, tmp_path: Path) -> None:
    bumped = tmp_path / "taskproc"
    shutil.copytree(CHART, bumped)
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.9.9", "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    old = parse_docs(helm4.template(sets=("image.tag=0.1.0",)).stdout)
    args = [
        "template",
        "taskproc",
        str(bumped),
        "--namespace",
        "taskproc",
        "--set",
        "image.tag=0.1.0",
        "--set",
        "image.repository=taskproc",
    ]
    new = parse_docs(helm4.run(*args).stdout)
    for suffix in ("-redis", "-postgresql"):
        assert _pod_template(old, "StatefulSet", suffix) == _pod_template(new, "StatefulSet", suffix), suffix
    for d in old:
        if _pod_spec(d) is not None and d["kind"] != "Pod":
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels, d["metadata"]


def test_renders_as_a_subchart(helm: Helm, tmp_path: Path) -> None:
    """An umbrella chart with a file:// dependency, `global` values and a `condition: taskproc.enabled`."""
    umbrella = tmp_path / "umbrella"
    umbrella.mkdir()
    dependency = {"name": "taskproc", "version": "*", "repository": f"file://{CHART}", "condition": "taskproc.enabled"}
    meta = {"apiVersion": "v2", "name": "umbrella", "version": "1.0.0", "dependencies": [dependency]}
    (umbrella / "Chart.yaml").write_text(yaml.safe_dump(meta))
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {"imageRegistry": "registry.example"},
                "taskproc": {"enabled": True, "image": {"repository": "taskproc"}},
            }
        )
    )
    helm.run("dependency", "build", str(umbrella))
    docs = parse_docs(helm.run("template", "app", str(umbrella), "--namespace", "taskproc").stdout)
    assert find(docs, "Deployment", "-api")["metadata"]["name"] == "app-taskproc-api"
    off = helm.run("template", "app", str(umbrella), "--set", "taskproc.enabled=false").stdout
    assert not parse_docs(off)


def test_gitops_renders_are_identical(helm: Helm, renders: Renders) -> None:
    """Argo CD renders with `helm template` on every sync: in the GitOps mode two renders are byte-identical
    (nothing generated), and no Helm hook is left for Argo CD to run before Postgres exists."""
    first = helm.template(scenario_file("gitops")).stdout
    assert first == helm.template(scenario_file("gitops")).stdout
    docs = parse_docs(first)
    assert not [d for d in docs if d["kind"] == "Secret"], "credentials come from existing Secrets"
    for d in docs:
        hooks = (d["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
        assert hooks in ("", "test"), f"{d['kind']}/{d['metadata']['name']}: {hooks}"
    job = find(docs, "Job")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    # the default mode generates passwords, so it is not render-stable (the check above can fail)
    assert helm.template().stdout != helm.template().stdout


def test_render_without_an_image_repository_fails_clearly(helm: Helm) -> None:
    """The old default `taskproc` resolved to docker.io/library/taskproc, which does not exist."""
    proc = helm.template(base_values=False, check=False)
    assert proc.returncode != 0
    assert "image.repository is empty" in proc.stderr
    assert "make image" in proc.stderr and "kind load docker-image" in proc.stderr
