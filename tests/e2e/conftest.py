"""Fixtures for the kind e2e tests (`make e2e`, scripts/e2e.sh).

The tests run only against the cluster scripts/e2e.sh prepared, named by TASKPROC_E2E_CONTEXT; without it they
skip with a one-line reason (they delete pods and upgrade the release, so they never pick a cluster by
themselves). When the context is set but unreachable, they fail."""

from __future__ import annotations

import base64
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
CONTEXT = os.environ.get("TASKPROC_E2E_CONTEXT", "")
NAMESPACE = os.environ.get("TASKPROC_E2E_NAMESPACE", "taskproc")
RELEASE = os.environ.get("TASKPROC_E2E_RELEASE", "taskproc")
CHART = Path(os.environ.get("TASKPROC_E2E_CHART", str(ROOT / "charts" / "taskproc")))


def poll(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 1.0) -> T:
    """Call predicate until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})", pytrace=False)
        time.sleep(interval)  # poll interval against a remote cluster, not a wait for a fixed duration


@dataclass
class Cluster:
    context: str
    namespace: str
    release: str
    core: Any  # kubernetes.client.CoreV1Api
    apps: Any  # kubernetes.client.AppsV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi
    kubectl: str
    helm: str

    def deployment(self, component: str) -> Any:
        return self.apps.read_namespaced_deployment(f"{self.release}-{component}", self.namespace)

    def pods(self, component: str) -> list[Any]:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def secret_value(self, name: str, key: str) -> str:
        secret = self.core.read_namespaced_secret(name, self.namespace)
        return base64.b64decode(secret.data[key]).decode()

    def helm_cmd(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.helm, *args, "--kube-context", self.context, "--namespace", self.namespace],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    if not CONTEXT:
        pytest.skip("no e2e cluster: TASKPROC_E2E_CONTEXT is unset (run `make e2e`)")
    from kubernetes import client, config

    try:
        config.load_kube_config(context=CONTEXT)
        core = client.CoreV1Api()
        core.read_namespace(NAMESPACE, _request_timeout=10)
    except Exception as exc:
        pytest.fail(f"e2e cluster {CONTEXT} namespace {NAMESPACE} unreachable: {exc}", pytrace=False)
    helm = os.environ.get("HELM") or "helm"
    kubectl = os.environ.get("KUBECTL") or "kubectl"
    return Cluster(
        context=CONTEXT,
        namespace=NAMESPACE,
        release=RELEASE,
        core=core,
        apps=client.AppsV1Api(),
        custom=client.CustomObjectsApi(),
        kubectl=kubectl,
        helm=helm,
    )


@contextmanager
def port_forward(cluster: Cluster, service: str, port: int) -> Iterator[str]:
    """`kubectl port-forward svc/<service> :<port>`; yields the local base URL."""
    proc = subprocess.Popen(
        [
            cluster.kubectl,
            "--context",
            cluster.context,
            "--namespace",
            cluster.namespace,
            "port-forward",
            f"svc/{service}",
            f":{port}",
            "--address",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        local = None
        while local is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                pytest.fail(f"kubectl port-forward to {service} did not start", pytrace=False)
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"kubectl port-forward to {service} exited", pytrace=False)
            if line.startswith("Forwarding from 127.0.0.1:"):
                local = line.split("127.0.0.1:", 1)[1].split()[0]
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def api_client(cluster: Cluster) -> Iterator[httpx.Client]:
    """An HTTP client for the release's API through a fresh port-forward, with the API key when auth is on."""
    headers = {}
    secret = cluster.core.read_namespaced_secret(cluster.release, cluster.namespace)
    if "api-keys" in (secret.data or {}):
        key = base64.b64decode(secret.data["api-keys"]).decode().split(",")[0]
        headers["Authorization"] = f"Bearer {key}"
    with (
        port_forward(cluster, f"{cluster.release}-api", 8000) as base,
        httpx.Client(base_url=base, headers=headers, timeout=15) as client,
    ):
        poll(lambda: client.get("/readyz").status_code == 200, timeout=120, what="/readyz 200")
        yield client


@pytest.fixture
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    with api_client(cluster) as client:
        yield client
