"""helm lint / helm template with helm 3 and helm 4 for every ci/*-values.yaml scenario, and what the chart
guarantees in the rendered objects."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CHART,
    SCENARIOS,
    Helm,
    Renders,
    container,
    find,
    parse_docs,
    scenario_file,
)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(helm: Helm, scenario: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--values", str(scenario_file(scenario)), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_template_renders(helm: Helm, renders: Renders, scenario: str) -> None:
    docs = renders.docs(helm, scenario)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    kinds = {k for k, _ in keys}
    assert {"Deployment", "Service", "Job", "Pod"} <= kinds
    for d in docs:
        assert d["metadata"].get("namespace") in (None, "taskproc"), d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "taskproc"


def _normalized(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rendered objects with generated secret values blanked (random per render)."""
    out = []
    for d in docs:
        if d["kind"] == "Secret":
            d = {**d, "data": dict.fromkeys(d.get("data", {}), "<generated>")}
        out.append(d)
    return sorted(out, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm3_and_helm4_render_the_same(helm3: Helm, helm4: Helm, renders: Renders, scenario: str) -> None:
    assert _normalized(renders.docs(helm3, scenario)) == _normalized(renders.docs(helm4, scenario))


# --- what the chart guarantees --------------------------------------------------------------------------------


def test_default_objects(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "default")
    api = find(docs, "Deployment", "-api")
    c = container(api, "api")
    assert c["image"] == "taskproc:0.1.0"
    assert c["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = find(docs, "Service", "-api")
    assert svc["spec"]["ports"][0]["name"] == "http"
    assert find(docs, "PodDisruptionBudget", "-api")["spec"]["minAvailable"] == 1

    worker = find(docs, "Deployment", "-worker")
    w = container(worker, "worker")
    assert w["args"] == ["worker"]
    assert w["ports"][0]["name"] == "metrics"
    assert w["ports"][0]["containerPort"] == 9100
    assert w["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    env = {e["name"]: e.get("value") for e in w["env"]}
    assert env["TASKPROC_WORKER_METRICS_PORT"] == "9100"
    assert env["TASKPROC_LOG_FORMAT"] == "json"
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # shutdown grace defaults from the task timeout; the pod's grace adds 2 x db timeout + 5 s for the requeue
    assert float(env["TASKPROC_SHUTDOWN_GRACE_S"]) == 300
    assert grace == 300 + 2 * 3 + 5
    assert env["TASKPROC_MAX_SHUTDOWN_REQUEUES"] == "3"
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"

    job = find(docs, "Job")
    assert container(job, "migrate")["args"] == ["migrate", "--wait", "900"]
    assert "helm.sh/hook" not in job["metadata"]["annotations"], "an ordinary Job: `helm install --wait` works"

    redis = find(docs, "StatefulSet", "-redis")
    r = container(redis, "redis")
    args = r["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"

    pg = find(docs, "StatefulSet", "-postgresql")
    p = container(pg, "postgresql")
    penv = {e["name"]: e for e in p["env"]}
    assert penv["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    assert "secretKeyRef" in penv["POSTGRES_PASSWORD"]["valueFrom"]
    assert {"data", "/var/lib/postgresql/data"} <= {v for m in p["volumeMounts"] for v in (m["name"], m["mountPath"])}

    secret = find(docs, "Secret", "taskproc")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"postgres-password", "redis-password"}
    assert all(len(v) == 32 and v.isalnum() for v in data.values())
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_security_context_everywhere(helm4: Helm, renders: Renders) -> None:
    for scenario in SCENARIOS:
        for d in renders.docs(helm4, scenario):
            if d["kind"] not in ("Deployment", "StatefulSet", "Job", "Pod"):
                continue
            spec = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            # only workers that patch their own pod's deletion cost get a token
            token = scenario == "pod-deletion-cost" and d["metadata"]["name"].endswith("-worker")
            assert spec["automountServiceAccountToken"] is token, (scenario, d["metadata"]["name"])
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, (d["metadata"]["name"], c["name"])
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert sc["runAsNonRoot"] is True
                assert sc["runAsUser"] >= 10000
                assert c["resources"]["requests"]
                assert c["resources"]["limits"]


def test_keda_scaled_object(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "default")
    so = find(docs, "ScaledObject", "-worker")["spec"]
    assert so["scaleTargetRef"]["name"].endswith("-worker")
    assert so["minReplicaCount"] == 0
    assert so["maxReplicaCount"] >= 1
    assert so["pollingInterval"]
    assert so["cooldownPeriod"]
    assert so["fallback"]["replicas"] >= 1
    down = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 60
    triggers = so["triggers"]
    # KEDA takes the max of the triggers: the formula sums ready + running over one worker's slots; deferred
    # tasks (delayed until later) do not keep pods up
    assert {t["name"]: t["metadata"]["listName"] for t in triggers} == {
        "ready": "arq:queue",
        "running": "taskproc:running",
    }
    mod = so["advanced"]["scalingModifiers"]
    assert mod == {"formula": "ready + running", "target": "16", "activationTarget": "0", "metricType": "AverageValue"}
    assert {t["metadata"]["listLength"] for t in triggers} == {"16"}
    auth = find(docs, "TriggerAuthentication", "-redis")
    for t in triggers:
        assert t["type"] == "redis"
        assert t["metadata"]["databaseIndex"] == "0"
        assert t["metadata"]["address"] == "taskproc-redis.taskproc.svc:6379"
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
    ref = auth["spec"]["secretTargetRef"][0]
    assert ref == {"parameter": "password", "name": "taskproc", "key": "redis-password"}


def test_keda_target_follows_worker_concurrency(helm4: Helm) -> None:
    so = find(parse_docs(helm4.template(sets=("worker.concurrency=4",)).stdout), "ScaledObject")["spec"]
    assert so["advanced"]["scalingModifiers"]["target"] == "4"
    so = find(parse_docs(helm4.template(sets=("keda.listLength=8",)).stdout), "ScaledObject")["spec"]
    assert so["advanced"]["scalingModifiers"]["target"] == "8"


def test_keda_operator_selector_is_configurable(helm4: Helm) -> None:
    sets = ("keda.namespace=openshift-keda", "keda.operatorPodLabels.app=keda-operator")
    np = find(parse_docs(helm4.template(sets=sets).stdout), "NetworkPolicy", "-redis")["spec"]
    assert np["ingress"][0]["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-keda"}},
        "podSelector": {"matchLabels": {"app": "keda-operator"}},
    }


def test_keda_reads_the_external_redis_database(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "external")
    so = find(docs, "ScaledObject", "-worker")["spec"]
    for t in so["triggers"]:
        assert t["metadata"]["address"] == "redis.example.internal:6380"
        assert t["metadata"]["databaseIndex"] == "2"
        assert t["metadata"]["enableTLS"] == "true"
    secret = find(docs, "Secret", "taskproc")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["redis-password"] == "redis-secret"
    assert data["redis-url"] == "rediss://:redis-secret@redis.example.internal:6380/2"
    job = find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"  # migrations.hook: helm
    hook_secret = find(docs, "Secret", "-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"

    docs = renders.docs(helm4, "external-secrets")
    so = find(docs, "ScaledObject", "-worker")["spec"]
    assert {t["metadata"]["databaseIndex"] for t in so["triggers"]} == {"3"}
    env = {e["name"]: e for e in container(find(docs, "Deployment", "-worker"), "worker")["env"]}
    assert env["TASKPROC_REDIS_URL"]["value"] == "redis://:$(TASKPROC_REDIS_PASSWORD)@redis.example.internal:6379/3"
    assert env["TASKPROC_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "taskproc-external-db", "key": "url"}
    assert not [d for d in docs if d["kind"] == "Secret"], "everything comes from existing Secrets"


def test_without_keda(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "keda-off")
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler")]
    assert find(docs, "Deployment", "-worker")["spec"]["replicas"] == 3
    docs = renders.docs(helm4, "hpa")
    hpa = find(docs, "HorizontalPodAutoscaler", "-worker")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(docs, "Deployment", "-worker")["spec"]


def test_keda_missing_from_cluster_falls_back_to_fixed_replicas(helm4: Helm) -> None:
    docs = parse_docs(helm4.template(api_versions=()).stdout)
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "ServiceMonitor")]
    assert find(docs, "Deployment", "-worker")["spec"]["replicas"] == 1


def test_monitoring(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "monitoring")
    for component, port in (("api", "http"), ("worker", "metrics")):
        sm = find(docs, "ServiceMonitor", f"-{component}")
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["endpoints"][0]["port"] == port
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
        svc = find(docs, "Service", f"-{component}")
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert port in [p["name"] for p in svc["spec"]["ports"]]
    rule = find(docs, "PrometheusRule", "taskproc")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    cm = find(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["taskproc.json"].strip() == (CHART / "dashboards" / "taskproc.json").read_text().strip()


def test_auth(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "auth")
    secret = find(docs, "Secret", "taskproc")
    key = base64.b64decode(secret["data"]["api-keys"]).decode()
    assert len(key) == 40
    for name in ("-api", "-worker"):
        env = {e["name"]: e for e in container(find(docs, "Deployment", name), name[1:])["env"]}
        assert env["TASKPROC_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "taskproc", "key": "api-keys"}
    test_pod = find(docs, "Pod", "-test")
    env = {e["name"]: e for e in container(test_pod, "test")["env"]}
    assert env["TASKPROC_TEST_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-keys"
    ing = find(docs, "Ingress", "-api")
    assert ing["spec"]["rules"][0]["host"] == "taskproc.example.com"


def test_network_policies_protect_redis_and_postgres(helm4: Helm, renders: Renders) -> None:
    docs = renders.docs(helm4, "default")
    pods = {
        d["metadata"]["name"]: (d["spec"]["template"] if d["kind"] != "Pod" else d)["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "Pod")
    }
    for component in ("redis", "postgresql"):
        np = find(docs, "NetworkPolicy", f"-{component}")["spec"]
        assert np["policyTypes"] == ["Ingress"]
        sources = np["ingress"][0]["from"]
        pod_sources = [s["podSelector"]["matchLabels"] for s in sources if "podSelector" in s]
        assert len(pod_sources) == 1
        # every pod of the release matches the allowed source selector; nothing else is allowed but KEDA
        assert all(pod_sources[0].items() <= labels.items() for labels in pods.values())
        assert pod_sources[0]["app.kubernetes.io/instance"] == "taskproc"
        others = [s for s in sources if "podSelector" not in s]
        if component == "redis":
            assert others == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]
        else:
            assert others == []


def test_helm_test_pod(helm4: Helm, renders: Renders) -> None:
    pod = find(renders.docs(helm4, "default"), "Pod", "-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod, "test")
    script = c["args"][0]
    compile(script, "helm-test", "exec")  # valid Python
    for needle in ("/readyz", "/api/v1/tasks", '"type": "add"', '"completed"'):
        assert needle in script
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TASKPROC_TEST_URL"] == "http://taskproc-api:8000"


# --- values the chart refuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("worker.terminationGracePeriodSeconds=25",), "must be at least worker.shutdownGraceSeconds (300) + 11"),
        (("worker.shutdownGraceSeconds=50", "worker.terminationGracePeriodSeconds=60"), "+ 11 s (2 x config"),
        (("api.preStopSleepSeconds=25",), "api.terminationGracePeriodSeconds must be at least"),
        (("redis.resources.limits.memory=1.5Gi",), "set redis.maxmemory"),
        (("worker.hpa.enabled=true",), "keda.enabled and worker.hpa.enabled"),
        (("postgresql.enabled=false",), "set externalDatabase.url or externalDatabase.existingSecret"),
        (("redis.enabled=false",), "set externalRedis.url or externalRedis.host"),
        (("keda.minReplicaCount=5", "keda.maxReplicaCount=2"), "minReplicaCount must not exceed"),
        (("unknownKey=1",), "unknownKey"),
        (("config.log_level=verbose",), "log_level"),
        (("worker.hpa.targetCPU=3",), "targetCPU"),
    ],
)
def test_refused_values(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("auth", [False, True])
def test_notes(helm4: Helm, auth: bool, tmp_path: Path) -> None:
    """NOTES.txt (shown by `helm install`): the port-forward and curl lines, rendered by a client-only dry run."""
    proc = subprocess.run(
        [helm4.path, "install", "taskproc", str(CHART), "--namespace", "taskproc", "--dry-run=client",
         "--set", f"auth.enabled={str(auth).lower()}", "--set", "image.repository=taskproc"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "no-cluster")},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl --namespace taskproc port-forward svc/taskproc-api 8000:8000" in notes
    assert "curl -s http://localhost:8000/readyz" in notes
    assert """curl -s -X POST http://localhost:8000/api/v1/tasks""" in notes
    assert "helm test taskproc --namespace taskproc" in notes
    assert "make image" in notes and "kind load docker-image taskproc:0.1.0" in notes
    assert ("Authorization: Bearer $TASKPROC_API_KEY" in notes) is auth
    assert "jsonpath='{.data.api-keys}'" in notes if auth else "api-keys" not in notes
    # no KEDA in a client-only dry run: the chart says it runs fixed workers instead
    assert "WARNING: keda.enabled is true but this cluster does not serve" in notes
