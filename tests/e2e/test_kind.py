"""End to end on a kind cluster prepared by `make e2e`: the release installed from charts/taskproc with KEDA and
the prometheus-operator CRDs. Runs in file order: later tests change the release (helm upgrade)."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest

from .conftest import CHART, Cluster, api_client, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def submit(api: httpx.Client, body: dict[str, Any]) -> str:
    resp = api.post("/api/v1/tasks", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def wait_done(api: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = api.get(f"/api/v1/tasks/{task_id}").json()
        return task if task["status"] in ("completed", "failed", "canceled") else None

    task = poll(done, timeout=timeout, what=f"task {task_id} to finish")
    assert task["status"] == "completed", task
    return task


def worker_replicas(cluster: Cluster) -> int:
    return int(cluster.deployment("worker").spec.replicas or 0)


def test_release_is_ready(cluster: Cluster) -> None:
    for component in ("api",):
        dep = cluster.deployment(component)
        assert (dep.status.ready_replicas or 0) == dep.spec.replicas
    for component in ("redis", "postgresql"):
        sts = cluster.apps.read_namespaced_stateful_set(f"{cluster.release}-{component}", cluster.namespace)
        assert sts.status.ready_replicas == 1
    so = cluster.custom.get_namespaced_custom_object(
        "keda.sh", "v1alpha1", cluster.namespace, "scaledobjects", f"{cluster.release}-worker"
    )

    def ready() -> bool:
        so = cluster.custom.get_namespaced_custom_object(
            "keda.sh", "v1alpha1", cluster.namespace, "scaledobjects", f"{cluster.release}-worker"
        )
        conditions = {c["type"]: c["status"] for c in so.get("status", {}).get("conditions", [])}
        return conditions.get("Ready") == "True"

    poll(ready, timeout=120, what="the ScaledObject to be Ready (KEDA can read Redis)")
    assert {t["metadata"]["listName"] for t in so["spec"]["triggers"]} == {
        "arq:queue",
        "taskproc:running",
        "taskproc:deferred",
    }
    for kind in ("servicemonitors", "prometheusrules"):
        items = cluster.custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", cluster.namespace, kind)
        assert items["items"], f"no {kind}"


def test_tasks_complete(api: httpx.Client) -> None:
    task = wait_done(api, submit(api, {"type": "add", "payload": {"a": 1, "b": 2}}), timeout=300)
    assert task["result"] == {"sum": 3}
    resp = api.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"type": "text_stats", "payload": {"text": f"task {i} of ten"}} for i in range(10)]},
    )
    assert resp.status_code == 201, resp.text
    for item in resp.json()["items"]:
        wait_done(api, item["id"], timeout=300)


def test_workers_scale_from_zero_on_backlog_and_back(cluster: Cluster, api: httpx.Client) -> None:
    poll(lambda: worker_replicas(cluster) == 0, timeout=300, what="KEDA to scale the idle workers to 0")
    # 32 x 6 s at concurrency 4 is ~50 s for one worker: long enough for the HPA (15 s sync) to add more
    resp = api.post("/api/v1/tasks/batch", json={"tasks": [{"type": "sleep", "payload": {"duration_ms": 6000}}] * 32})
    assert resp.status_code == 201, resp.text
    ids = [item["id"] for item in resp.json()["items"]]
    poll(lambda: worker_replicas(cluster) >= 1, timeout=120, what="KEDA to scale the workers up from 0")
    seen = 0

    def all_done() -> bool:
        nonlocal seen
        seen = max(seen, worker_replicas(cluster))
        statuses = [api.get(f"/api/v1/tasks/{i}").json()["status"] for i in ids]
        assert "failed" not in statuses
        return all(s == "completed" for s in statuses)

    poll(all_done, timeout=600, what="the backlog to be worked off")
    assert seen >= 2, "32 tasks with listLength 4 should need more than one worker"
    poll(lambda: worker_replicas(cluster) == 0, timeout=300, what="KEDA to scale the workers back to 0")


def test_delayed_task_wakes_the_workers(cluster: Cluster, api: httpx.Client) -> None:
    poll(lambda: worker_replicas(cluster) == 0, timeout=300, what="idle workers at 0")
    task_id = submit(api, {"type": "add", "payload": {"a": 2, "b": 2}, "delay_s": 10})
    poll(lambda: worker_replicas(cluster) >= 1, timeout=120, what="a worker for the deferred task")
    assert wait_done(api, task_id, timeout=300)["result"] == {"sum": 4}


def test_worker_killed_mid_task_does_not_lose_it(cluster: Cluster, api: httpx.Client) -> None:
    task_id = submit(api, {"type": "sleep", "payload": {"duration_ms": 20000}})
    poll(
        lambda: api.get(f"/api/v1/tasks/{task_id}").json()["status"] == "running",
        timeout=300,
        what="the task to start running",
    )
    victims = [p.metadata.name for p in cluster.pods("worker") if p.status.phase == "Running"]
    assert victims
    for name in victims:  # SIGKILL: no graceful requeue, the lease must expire and the task run again
        cluster.core.delete_namespaced_pod(name, cluster.namespace, grace_period_seconds=0)
    task = wait_done(api, task_id, timeout=600)
    assert task["attempts"] >= 2, task


def test_helm_upgrade_keeps_the_data(cluster: Cluster) -> None:
    with api_client(cluster) as api:
        before = wait_done(api, submit(api, {"type": "add", "payload": {"a": 20, "b": 22}}), timeout=300)
    # new resource requests restart Redis, Postgres, the API and the workers; the pre-upgrade hook migrates
    proc = cluster.helm_cmd(
        "upgrade",
        cluster.release,
        str(CHART),
        "--reuse-values",
        "--set",
        "postgresql.resources.requests.cpu=110m",
        "--set",
        "redis.resources.requests.cpu=60m",
        "--set",
        "api.resources.requests.cpu=60m",
        "--wait",
        "--timeout",
        "10m",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for sts in ("postgresql", "redis"):
        subprocess.run(
            [
                cluster.kubectl,
                "--context",
                cluster.context,
                "-n",
                cluster.namespace,
                "rollout",
                "status",
                f"statefulset/{cluster.release}-{sts}",
                "--timeout",
                "300s",
            ],
            check=True,
            capture_output=True,
        )
    with api_client(cluster) as api:
        after = api.get(f"/api/v1/tasks/{before['id']}").json()
        assert after["status"] == "completed"
        assert after["result"] == {"sum": 42}
        wait_done(api, submit(api, {"type": "add", "payload": {"a": 1, "b": 1}}), timeout=300)


def test_helm_test_passes(cluster: Cluster) -> None:
    proc = cluster.helm_cmd("test", cluster.release, "--logs", "--timeout", "10m")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: task" in proc.stdout
    assert "completed" in proc.stdout
