"""Worker pools (worker.pools): one Deployment, ScaledObject (or HPA) and PDB per pool, each taking and scaling on
its own queues only; worker.queues and keda.namedQueues for the single catch-all Deployment.

The Redis keys are the app's (src/taskproc/queue.py): queue `q`'s ready set is `arq:queue` for `default` and
`taskproc:queue:<q>` otherwise; its running set is `taskproc:running:<q>`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHART, Helm, Renders, container, find, parse_docs, scenario_file, worker_deployments

POOL_LABEL = "taskproc/pool"
# ci/pools-values.yaml
POOLS = {
    "fast": {"queues": ["default"], "concurrency": 32, "min": 1, "max": 8, "cooldown": 120},
    "reports": {"queues": ["reports", "exports"], "concurrency": 4, "min": 0, "max": 3, "cooldown": 600},
}
# A KEDA trigger name the formula can refer to: a queue name's "-" would read as a minus.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ready_key(queue: str) -> str:
    return "arq:queue" if queue == "default" else f"taskproc:queue:{queue}"


def pool_keys(queues: list[str]) -> set[str]:
    return {ready_key(q) for q in queues} | {f"taskproc:running:{q}" for q in queues}


def env_of(deployment: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(deployment, "worker")["env"]}


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def formula_terms(scaled_object: dict[str, Any]) -> list[str]:
    formula = scaled_object["spec"]["advanced"]["scalingModifiers"]["formula"]
    terms = [t.strip() for t in formula.split("+")]
    assert all(IDENTIFIER.match(t) for t in terms), formula
    return terms


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_one_deployment_scaled_object_and_pdb_per_pool(helm: Helm, renders: Renders) -> None:
    docs = renders.docs(helm, "pools")
    deployments = {d["metadata"]["name"]: d for d in worker_deployments(docs)}
    assert set(deployments) == {"taskproc-worker-fast", "taskproc-worker-reports"}, "no catch-all Deployment"
    scaled = by_name(docs, "ScaledObject")
    assert set(scaled) == set(deployments)
    pdbs = by_name(docs, "PodDisruptionBudget")
    pod_labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for pool, want in POOLS.items():
        name = f"taskproc-worker-{pool}"
        dep = deployments[name]
        assert dep["metadata"]["labels"][POOL_LABEL] == pool
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector[POOL_LABEL] == pool
        # each Deployment owns its own pods only
        assert [n for n, labels in pod_labels.items() if selects(selector, labels)] == [name]
        assert pod_labels[name]["app.kubernetes.io/component"] == "worker"
        env = env_of(dep)
        assert env["TASKPROC_WORKER_QUEUES"] == ",".join(want["queues"])  # type: ignore[arg-type]
        assert env["TASKPROC_WORKER_CONCURRENCY"] == str(want["concurrency"])
        names = [e["name"] for e in container(dep, "worker")["env"]]
        assert len(names) == len(set(names)), names
        assert "replicas" not in dep["spec"], "KEDA owns the replica count"
        # the worker's whole pod spec, as the catch-all Deployment has it
        spec = dep["spec"]["template"]["spec"]
        assert spec["initContainers"][0]["args"][:2] == ["migrate", "--wait-for-schema"]
        assert container(dep, "worker")["args"] == ["worker"]
        assert spec["terminationGracePeriodSeconds"] == 300 + 2 * 3 + 5

        so = scaled[name]["spec"]
        assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (so["minReplicaCount"], so["maxReplicaCount"]) == (want["min"], want["max"])
        assert so["cooldownPeriod"] == want["cooldown"]
        triggers = so["triggers"]
        keys = [t["metadata"]["listName"] for t in triggers]
        assert len(keys) == len(set(keys))
        assert set(keys) == pool_keys(want["queues"])  # type: ignore[arg-type]
        assert all(IDENTIFIER.match(t["name"]) for t in triggers)
        assert sorted(formula_terms(scaled[name])) == sorted(t["name"] for t in triggers), "the formula sums them all"
        mod = so["advanced"]["scalingModifiers"]
        assert mod["target"] == str(want["concurrency"])
        assert mod["metricType"] == "AverageValue"
        assert {t["metadata"]["listLength"] for t in triggers} == {str(want["concurrency"])}
        assert {t["authenticationRef"]["name"] for t in triggers} == {"taskproc-redis"}

        pdb = pdbs[name]["spec"]
        assert pdb["selector"]["matchLabels"] == selector
    assert "taskproc-worker" not in pdbs

    # the pool's own pod settings; the rest from worker.*
    reports, fast = deployments["taskproc-worker-reports"], deployments["taskproc-worker-fast"]
    assert container(reports, "worker")["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert container(fast, "worker")["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert reports["spec"]["template"]["spec"]["nodeSelector"] == {"workload": "reports"}
    assert "nodeSelector" not in fast["spec"]["template"]["spec"]
    assert reports["spec"]["template"]["metadata"]["labels"]["team"] == "analytics"
    assert "team" not in fast["spec"]["template"]["metadata"]["labels"]


def test_worker_service_and_network_policy_select_every_pool(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "pools")
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in worker_deployments(docs)]
    assert len(labels) == 2
    svc = find(docs, "Service", "-worker")["spec"]["selector"]
    np = find(docs, "NetworkPolicy", "-worker")["spec"]["podSelector"]["matchLabels"]
    for pod in labels:
        assert selects(svc, pod) and selects(np, pod)
    # the Redis and Postgres NetworkPolicies let every pool in
    for component in ("redis", "postgresql"):
        source = find(docs, "NetworkPolicy", f"-{component}")["spec"]["ingress"][0]["from"][0]["podSelector"]
        assert all(selects(source["matchLabels"], pod) for pod in labels)
    docs = parse_docs(helm4.template(sets=("monitoring.enabled=true", *POOL_SETS)).stdout)
    sm = find(docs, "ServiceMonitor", "-worker")["spec"]["selector"]["matchLabels"]
    assert selects(sm, find(docs, "Service", "-worker")["metadata"]["labels"])


# Two pools sharing a queue, set on the command line (the ci scenario has none).
POOL_SETS = (
    "worker.pools[0].name=a",
    "worker.pools[0].queues={default,bulk-mail}",
    "worker.pools[1].name=b",
    "worker.pools[1].queues={bulk-mail}",
)


def test_pools_may_share_a_queue_and_queue_names_may_hold_a_dash(helm4: Helm) -> None:
    docs = parse_docs(helm4.template(sets=POOL_SETS).stdout)
    scaled = by_name(docs, "ScaledObject")
    a = {t["name"]: t["metadata"]["listName"] for t in scaled["taskproc-worker-a"]["spec"]["triggers"]}
    b = {t["name"]: t["metadata"]["listName"] for t in scaled["taskproc-worker-b"]["spec"]["triggers"]}
    assert a == {
        "ready_0": "arq:queue",
        "running_0": "taskproc:running:default",
        "ready_1": "taskproc:queue:bulk-mail",
        "running_1": "taskproc:running:bulk-mail",
    }
    assert b == {"ready_0": "taskproc:queue:bulk-mail", "running_0": "taskproc:running:bulk-mail"}
    assert scaled["taskproc-worker-a"]["spec"]["advanced"]["scalingModifiers"]["formula"] == (
        "ready_0 + running_0 + ready_1 + running_1"
    )
    assert env_of(find(docs, "Deployment", "-worker-b"))["TASKPROC_WORKER_QUEUES"] == "bulk-mail"


def test_pool_keda_and_hpa_fall_back_to_the_global_values(helm4: Helm) -> None:
    sets = (*POOL_SETS, "keda.maxReplicaCount=7", "keda.listLength=5", "worker.pools[1].keda.listLength=2")
    scaled = by_name(parse_docs(helm4.template(sets=sets).stdout), "ScaledObject")
    assert scaled["taskproc-worker-a"]["spec"]["maxReplicaCount"] == 7
    assert scaled["taskproc-worker-a"]["spec"]["advanced"]["scalingModifiers"]["target"] == "5"
    assert scaled["taskproc-worker-b"]["spec"]["advanced"]["scalingModifiers"]["target"] == "2"
    # without KEDA: one CPU HPA per pool, or each pool's fixed replicaCount
    sets = (*POOL_SETS, "keda.enabled=false", "worker.hpa.enabled=true", "worker.pools[1].hpa.maxReplicas=3")
    docs = parse_docs(helm4.template(sets=sets).stdout)
    hpas = by_name(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"taskproc-worker-a", "taskproc-worker-b"}
    assert hpas["taskproc-worker-a"]["spec"]["maxReplicas"] == 10
    assert hpas["taskproc-worker-b"]["spec"]["maxReplicas"] == 3
    assert hpas["taskproc-worker-b"]["spec"]["scaleTargetRef"]["name"] == "taskproc-worker-b"
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    sets = (*POOL_SETS, "keda.enabled=false", "worker.replicaCount=2", "worker.pools[1].replicaCount=0")
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in worker_deployments(parse_docs(
        helm4.template(sets=sets).stdout))}  # fmt: skip
    assert replicas == {"taskproc-worker-a": 2, "taskproc-worker-b": 0}


def test_pool_shutdown_grace(helm4: Helm) -> None:
    """A pool of long tasks may wait longer on SIGTERM; its pods' grace follows, and a too short one is refused."""
    sets = (*POOL_SETS, "worker.pools[1].shutdownGraceSeconds=900")
    deployments = {d["metadata"]["name"]: d for d in worker_deployments(parse_docs(helm4.template(sets=sets).stdout))}
    for name, grace in (("taskproc-worker-a", 300), ("taskproc-worker-b", 900)):
        assert env_of(deployments[name])["TASKPROC_SHUTDOWN_GRACE_S"] == str(grace)
        assert deployments[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace + 2 * 3 + 5
    proc = helm4.template(sets=(*sets, "worker.pools[1].terminationGracePeriodSeconds=100"), check=False)
    assert proc.returncode != 0
    assert "worker.pools[b].terminationGracePeriodSeconds (100) must be at least" in proc.stderr, proc.stderr


def test_notes_list_the_pools(helm4: Helm, tmp_path: Path) -> None:
    proc = subprocess.run(
        [helm4.path, "install", "taskproc", str(CHART), "--namespace", "taskproc", "--dry-run=client",
         "--values", str(scenario_file("pools"))],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "taskproc-worker-fast: queues default, 32 tasks per pod" in notes
    assert "taskproc-worker-reports: queues reports, exports, 4 tasks per pod" in notes
    assert "with a fixed replicaCount per pool" in notes  # no KEDA in a client-only dry run


def test_postgres_budget_counts_every_pool(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "pools")
    args = container(find(docs, "StatefulSet", "-postgresql"), "postgresql")["args"]

    def worker(max_pods: int, concurrency: int, pool: int = 10) -> int:
        return (max_pods + 1) * (2 * min(pool, concurrency + 4) + 3)

    api = 3 * (2 * 10 + 1)
    assert args[1] == f"max_connections={api + worker(8, 32) + worker(3, 4) + 2 + 10}"


def test_catch_all_worker_queues(helm4: Helm) -> None:
    docs = parse_docs(helm4.template(sets=("worker.queues={reports,default}",)).stdout)
    (dep,) = worker_deployments(docs)
    assert dep["metadata"]["name"] == "taskproc-worker"
    assert POOL_LABEL not in dep["spec"]["selector"]["matchLabels"], "the catch-all keeps its selector"
    assert env_of(dep)["TASKPROC_WORKER_QUEUES"] == "reports,default"
    so = find(docs, "ScaledObject", "-worker")
    assert {t["metadata"]["listName"] for t in so["spec"]["triggers"]} == pool_keys(["reports", "default"])
    assert sorted(formula_terms(so)) == sorted(t["name"] for t in so["spec"]["triggers"])
    # worker.queues empty: every queue, no TASKPROC_WORKER_QUEUES
    docs = parse_docs(helm4.template().stdout)
    assert "TASKPROC_WORKER_QUEUES" not in env_of(find(docs, "Deployment", "-worker"))


def test_catch_all_scales_for_the_named_queues_it_is_told_about(helm4: Helm) -> None:
    docs = parse_docs(helm4.template(sets=("keda.namedQueues={reports,bulk-mail,default}",)).stdout)
    so = find(docs, "ScaledObject", "-worker")
    triggers = {t["name"]: t["metadata"]["listName"] for t in so["spec"]["triggers"]}
    # today's triggers, plus the ready set of each named queue (default is already counted by `ready`)
    assert triggers == {
        "ready": "arq:queue",
        "running": "taskproc:running",
        "ready_0": "taskproc:queue:reports",
        "ready_1": "taskproc:queue:bulk-mail",
    }
    assert so["spec"]["advanced"]["scalingModifiers"]["formula"] == "ready + running + ready_0 + ready_1"
    assert "TASKPROC_WORKER_QUEUES" not in env_of(find(docs, "Deployment", "-worker"))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("worker.pools[0].name=a", "worker.pools[1].name=a", "worker.pools[0].queues={x}",
          "worker.pools[1].queues={y}"), 'the pool name "a" is used twice'),
        (("worker.pools[0].name=a",), r"missing property 'queues'|queues is required"),
        (("worker.pools[0].name=a", "worker.pools[0].queues=null"), r"want array|Expected: array"),
        (("worker.pools[0].name=a", "worker.pools[0].queues={Reports}"), r"(?i)does not match pattern"),
        (("worker.pools[0].name=A_b", "worker.pools[0].queues={x}"), r"(?i)does not match pattern"),
        (("worker.pools[0].name=a", "worker.pools[0].queues={x}", "worker.pools[0].image=y"),
         r"'image' not allowed|property image is not allowed"),
        (("worker.pools[0].name=a", "worker.pools[0].queues={x}", "worker.pools[0].keda.enabled=false"),
         r"'enabled' not allowed|property enabled is not allowed"),
        (("worker.pools[0].name=" + "a" * 50, "worker.pools[0].queues={x}"), "longer than 63 characters"),
        (("worker.pools[0].name=a", "worker.pools[0].queues={x}", "worker.pools[0].keda.minReplicaCount=11"),
         r"worker\.pools\[a\]: keda\.minReplicaCount must not exceed"),
        (("worker.queues={bad name}",), r"(?i)does not match pattern"),
        (("keda.namedQueues={ok,Bad}",), r"(?i)does not match pattern"),
    ],
)  # fmt: skip
def test_refused_pool_values(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    """`message` is a regular expression: helm 3 and helm 4 word schema errors differently."""
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0, f"{sets} rendered"
    assert re.search(message, proc.stderr), proc.stderr
