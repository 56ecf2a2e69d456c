"""Cluster operations only a real cluster shows (after test_kind.py, on the same release): `helm install --wait`
of a second release with fixed workers, a scale-down that keeps the busy worker (pod deletion cost), and Redis
emptied while the workers are at 0."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import httpx
import pytest

from .conftest import CHART, Cluster, poll
from .test_kind import submit, wait_done, worker_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
COST = "controller.kubernetes.io/pod-deletion-cost"


def _image(cluster: Cluster) -> tuple[str, str]:
    image = cluster.deployment("api").spec.template.spec.containers[0].image
    repo, _, tag = image.rpartition(":")
    return repo, tag


def _kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [cluster.kubectl, "--context", cluster.context, "--namespace", cluster.namespace, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_install_wait_with_fixed_workers(cluster: Cluster) -> None:
    """The old chart deadlocked here: workers from the first moment, migrations in a post-install hook."""
    repo, tag = _image(cluster)
    namespace = f"taskproc-wait-{uuid.uuid4().hex[:6]}"
    base = [cluster.helm, "--kube-context", cluster.context, "--namespace", namespace]
    try:
        proc = subprocess.run(
            [*base, "install", "wait-test", str(CHART), "--create-namespace", "--wait", "--timeout", "8m",
             "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
             "--set", "keda.enabled=false", "--set", "worker.replicaCount=1", "--set", "api.replicaCount=1",
             "--set", "postgresql.persistence.enabled=false", "--set", "redis.persistence.enabled=false"],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        subprocess.run([*base, "uninstall", "wait-test", "--wait"], capture_output=True, timeout=600, check=False)
        subprocess.run(
            [cluster.kubectl, "--context", cluster.context, "delete", "namespace", namespace, "--wait=false"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def _costs(cluster: Cluster) -> dict[str, int]:
    out = {}
    for pod in cluster.pods("worker"):
        if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
            out[pod.metadata.name] = int((pod.metadata.annotations or {}).get(COST, "0"))
    return out


def test_scale_down_keeps_the_busy_worker(cluster: Cluster, api: httpx.Client) -> None:
    """With worker.podDeletionCost (tests/e2e/values.yaml), the busy worker marks its pod; when the backlog
    drains and KEDA scales down, Kubernetes removes the idle pods and the long task runs to its end."""
    long_id = submit(api, {"type": "sleep", "payload": {"duration_ms": 120_000}})
    short = [submit(api, {"type": "sleep", "payload": {"duration_ms": 2_000}}) for _ in range(12)]
    poll(lambda: worker_replicas(cluster) >= 2, timeout=300, what="KEDA to scale to 2+ workers")
    long_task: dict[str, Any] = poll(
        lambda: (t := api.get(f"/api/v1/tasks/{long_id}").json())["status"] == "running" and t,
        timeout=300,
        what="the long task to run",
    )
    for task_id in short:
        wait_done(api, task_id, timeout=300)
    busy = poll(
        lambda: [name for name, cost in _costs(cluster).items() if cost > 0],
        timeout=120,
        what="the busy worker to raise its pod-deletion-cost",
    )
    assert len(busy) == 1, _costs(cluster)
    poll(lambda: worker_replicas(cluster) == 1, timeout=300, what="KEDA to scale down to the long task's pod")
    poll(lambda: list(_costs(cluster)) == busy, timeout=120, what="only the busy pod to remain")
    done = wait_done(api, long_id, timeout=300)
    assert done["attempts"] == long_task["attempts"] == 1, done


def test_tasks_survive_redis_emptied_at_zero_workers(cluster: Cluster, api: httpx.Client) -> None:
    """Workers held at 0 (KEDA paused), a task accepted, Redis flushed (as a restart without its data would):
    the API's maintenance puts the task back where KEDA looks, and it completes once workers may start."""
    so = f"{cluster.release}-worker"
    poll(lambda: worker_replicas(cluster) == 0, timeout=300, what="idle workers at 0")
    _kubectl(cluster, "annotate", "scaledobject", so, "autoscaling.keda.sh/paused-replicas=0", "--overwrite")
    try:
        task_id = submit(api, {"type": "add", "payload": {"a": 5, "b": 6}})
        redis_pod = cluster.pods("redis")[0].metadata.name
        _kubectl(cluster, "exec", redis_pod, "-c", "redis", "--", "sh", "-c", "redis-cli -h 127.0.0.1 FLUSHALL")
        assert api.get(f"/api/v1/tasks/{task_id}").json()["status"] == "pending"
    finally:
        _kubectl(cluster, "annotate", "scaledobject", so, "autoscaling.keda.sh/paused-replicas-")
    assert wait_done(api, task_id, timeout=600)["result"] == {"sum": 11}
