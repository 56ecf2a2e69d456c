"""Scale-down and rollout settings of the rendered pods: grace periods, Redis memory, preStop, spread, PDBs."""

from __future__ import annotations

import base64
from typing import Any

from redis.connection import parse_url

from .conftest import Helm, Renders, container, find, parse_docs


def _docs(helm: Helm, *sets: str) -> list[dict[str, Any]]:
    return parse_docs(helm.template(sets=sets).stdout)


def _worker(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str | None]]:
    spec = find(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(find(docs, "Deployment", "-worker"), "worker")["env"]}
    return spec, env


def test_grace_follows_the_task_timeout(helm4: Helm) -> None:
    spec, env = _worker(_docs(helm4, "config.task_timeout_s=600", "config.db_timeout_s=5"))
    assert env["TASKPROC_SHUTDOWN_GRACE_S"] == "600"
    assert spec["terminationGracePeriodSeconds"] == 600 + 2 * 5 + 5
    spec, env = _worker(_docs(helm4, "worker.shutdownGraceSeconds=20"))
    assert env["TASKPROC_SHUTDOWN_GRACE_S"] == "20"
    assert spec["terminationGracePeriodSeconds"] == 20 + 11
    spec, _ = _worker(_docs(helm4, "worker.shutdownGraceSeconds=20", "worker.terminationGracePeriodSeconds=31"))
    assert spec["terminationGracePeriodSeconds"] == 31  # exactly the room: accepted
    _, env = _worker(_docs(helm4, "config.maxShutdownRequeues=5"))
    assert env["TASKPROC_MAX_SHUTDOWN_REQUEUES"] == "5"
    assert "TASKPROC_MAXSHUTDOWNREQUEUES" not in env


def test_redis_never_evicts(helm4: Helm) -> None:
    def args(*sets: str) -> list[str]:
        return container(find(_docs(helm4, *sets), "StatefulSet", "-redis"), "redis")["args"]  # type: ignore[no-any-return]

    a = args()
    assert a[a.index("--maxmemory-policy") + 1] == "noeviction"
    assert a[a.index("--maxmemory") + 1] == str(int(512 * 1024 * 1024 * 0.8))
    a = args("redis.resources.limits.memory=2G", "redis.maxmemoryPercent=50")
    assert a[a.index("--maxmemory") + 1] == "1000000000"
    a = args("redis.maxmemory=300mb")
    assert a[a.index("--maxmemory") + 1] == "300mb"


def test_api_drains_before_sigterm_and_spreads(helm4: Helm) -> None:
    docs = _docs(helm4)
    api = find(docs, "Deployment", "-api")
    spec = api["spec"]["template"]["spec"]
    c = container(api, "api")
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] >= 5 + 10
    (tsc,) = spec["topologySpreadConstraints"]
    assert tsc["topologyKey"] == "kubernetes.io/hostname"
    assert tsc["whenUnsatisfiable"] == "ScheduleAnyway"
    assert tsc["labelSelector"]["matchLabels"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert "lifecycle" not in container(find(_docs(helm4, "api.preStopSleepSeconds=0"), "Deployment", "-api"), "api")


def test_optional_worker_pdb(helm4: Helm) -> None:
    assert not [
        d for d in _docs(helm4) if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-worker")
    ]
    pdb = find(_docs(helm4, "worker.pdb.enabled=true"), "PodDisruptionBudget", "-worker")["spec"]
    assert pdb["maxUnavailable"] == 1


def test_ingress_exposes_only_the_api_and_the_dashboard(helm4: Helm, renders: Renders) -> None:
    ing = find(renders.docs(helm4, "auth"), "Ingress", "-api")
    paths = {(p["path"], p["pathType"]) for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {("/api/", "Prefix"), ("/", "Exact"), ("/static/", "Prefix"), ("/favicon.ico", "Exact")}

    def routed(url: str) -> bool:
        return any(url == p if kind == "Exact" else url.startswith(p) for p, kind in paths)

    for public in ("/", "/api/v1/tasks", "/static/app.js", "/favicon.ico"):
        assert routed(public), public
    for internal in ("/metrics", "/docs", "/openapi.json", "/healthz", "/readyz"):
        assert not routed(internal), internal


def test_public_ingress_without_api_keys_needs_an_explicit_value(helm: Helm) -> None:
    sets = ("api.ingress.enabled=true", "api.ingress.hosts[0]=taskproc.example.com")
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0
    assert "api.ingress.allowUnauthenticated=true" in proc.stderr
    ok = helm.template(sets=(*sets, "api.ingress.allowUnauthenticated=true"))
    assert find(parse_docs(ok.stdout), "Ingress", "-api")


def test_pod_deletion_cost(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "pod-deletion-cost")
    worker = find(docs, "Deployment", "-worker")
    spec = worker["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container(worker, "worker")["env"]}
    assert env["TASKPROC_POD_DELETION_COST"]["value"] == "true"
    assert env["TASKPROC_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TASKPROC_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert spec["automountServiceAccountToken"] is True
    sa = find(docs, "ServiceAccount", "-worker")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    role = find(docs, "Role", "-worker")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    binding = find(docs, "RoleBinding", "-worker")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "taskproc"}]
    # the API keeps no token, and by default neither do the workers
    assert find(docs, "Deployment", "-api")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    default = renders.docs(helm4, "default")
    assert find(default, "Deployment", "-worker")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not [d for d in default if d["kind"] in ("Role", "RoleBinding")]
    env = {e["name"] for e in container(find(default, "Deployment", "-worker"), "worker")["env"]}
    assert not env & {"TASKPROC_POD_DELETION_COST", "TASKPROC_POD_NAME"}


def test_keda_gets_the_decoded_credentials_of_external_redis_url(helm: Helm) -> None:
    """The worker's redis client decodes the URL's user and password; KEDA must get the same, decoded."""
    url = "rediss://keda%2Duser:p%40ss%3Aw%2Frd%25x@redis.example:6380/2"
    sets = ("redis.enabled=false", f"externalRedis.url={url}")
    docs = parse_docs(helm.template(sets=sets).stdout)
    data = {k: base64.b64decode(v).decode() for k, v in find(docs, "Secret", "taskproc")["data"].items()}
    parsed = parse_url(url)
    assert (data["redis-username"], data["redis-password"]) == (parsed["username"], parsed["password"])
    assert data["redis-password"] == "p@ss:w/rd%x"
    assert data["redis-url"] == url  # the app decodes it itself
    refs = {r["parameter"]: r for r in find(docs, "TriggerAuthentication", "-redis")["spec"]["secretTargetRef"]}
    assert refs["username"]["key"] == "redis-username"
    assert refs["password"]["key"] == "redis-password"
    bad = helm.template(sets=("redis.enabled=false", "externalRedis.url=redis://:%E2%82%AC@h:6379/0"), check=False)
    assert bad.returncode != 0
    assert "cannot decode" in bad.stderr


def _max_connections(docs: list[dict[str, Any]]) -> int:
    args = container(find(docs, "StatefulSet", "-postgresql"), "postgresql")["args"]
    assert args[0] == "-c"
    name, _, value = args[1].partition("=")
    assert name == "max_connections"
    return int(value)


def test_postgres_max_connections_fit_the_connection_budget(helm4: Helm, renders: Renders) -> None:
    def budget(api: int, workers: int, pool: int = 10, concurrency: int = 16) -> int:
        return (api + 1) * (2 * pool + 1) + (workers + 1) * (2 * min(pool, concurrency + 4) + 3) + 2 + 10

    assert _max_connections(renders.docs(helm4, "default")) == budget(api=2, workers=10)  # keda.maxReplicaCount
    assert _max_connections(renders.docs(helm4, "hpa")) == budget(api=2, workers=6)
    assert _max_connections(renders.docs(helm4, "keda-off")) == budget(api=2, workers=3)
    sets = ("keda.maxReplicaCount=40", "config.db_pool_size=2", "worker.concurrency=1")
    assert _max_connections(_docs(helm4, *sets)) == budget(api=2, workers=40, pool=2, concurrency=1)
    assert _max_connections(_docs(helm4, "postgresql.maxConnections=500")) == 500
