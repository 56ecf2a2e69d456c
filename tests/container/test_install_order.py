"""`helm install --wait` order, proven with the image's containers: the rendered chart's parts are started as
Helm and the kubelet would, generically from the manifests, and the Deployments must become ready.

Helm's order: pre-install hooks (by `helm.sh/hook-weight`, each waited for), then every ordinary resource at
once; `--wait` then waits until every Deployment's pods are ready (readiness probe), and only after that runs
the post-install hooks. A pod's init containers run one after the other, each to exit 0 (retried on failure),
before its containers; a container that exits is restarted (restartPolicy Always). Substitutions: the
bundled Postgres and Redis StatefulSets are the session's servers (no registry has their images here), and a
Deployment runs one pod (host network: two would share ports).

With the chart's migrations as a post-install hook and workers that serve /healthz only once the schema is
there, readiness is never reached: `--wait` would deadlock, which this test reports as a failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from .harness import (
    FAST_VALUES,
    Container,
    Doc,
    Runner,
    Target,
    iter_hooks,
    pod_spec,
    render,
    submit,
    wait_status,
)

pytestmark = pytest.mark.slow
READY_DEADLINE_S = 60
SUBSTITUTED = {"postgresql", "redis"}  # StatefulSets stood in for by the session's servers


@dataclass
class SimPod:
    """One pod of a workload: init containers in order, then the containers, restarted when they exit."""

    runner: Runner
    workload: Doc
    restart: bool  # Deployments restart exited containers; a Job's pod ends
    init_index: int = 0
    init: Container | None = None
    main: list[Container] = field(default_factory=list)
    restarts: int = 0
    failed_runs: int = 0

    def step(self) -> None:
        spec = pod_spec(self.workload)
        inits = spec.get("initContainers", [])
        if self.init_index < len(inits):
            if self.init is None:
                self.init = self.runner.start(self.workload, init=self.init_index)
                return
            code = self.init.exit_code()
            if code == 0:
                self.init_index += 1
                self.init = None
            elif code is not None:
                self.failed_runs += 1
                self.init.remove()
                self.init = None  # retried on the next step, as the kubelet does
            return
        if not self.main:
            self.main = [self.runner.start(self.workload, c["name"]) for c in spec["containers"]]
            return
        backoff_limit = int(self.workload["spec"].get("backoffLimit", 6))
        for i, c in enumerate(self.main):
            code = c.exit_code()
            # Deployments restart any exited container; a Job replaces a failed pod up to its backoffLimit.
            if code is not None and (self.restart or (code != 0 and self.failed_runs < backoff_limit)):
                self.restarts += 1
                self.failed_runs += code != 0 and not self.restart
                c.remove()
                self.main[i] = self.runner.start(self.workload, c.spec["name"])

    def ready(self) -> bool:
        if not self.main:
            return False
        return all(c.running() and ("readinessProbe" not in c.spec or c.probe()) for c in self.main)

    def succeeded(self) -> bool:
        return bool(self.main) and all(c.exit_code() == 0 for c in self.main)

    def describe(self) -> str:
        name = self.workload["metadata"]["name"]
        inits = len(pod_spec(self.workload).get("initContainers", []))
        stage = f"init container {self.init_index + 1}/{inits}" if self.init_index < inits else "containers"
        return f"{self.workload['kind']} {name}: at {stage}, {self.restarts} restarts, {self.failed_runs} failed inits"


def run_to_completion(runner: Runner, doc: Doc, deadline: float) -> None:
    """A hook Job (or Pod): Helm waits until it succeeds; a failed pod is replaced up to backoffLimit."""
    attempts = int(doc.get("spec", {}).get("backoffLimit", 6)) + 1
    for _ in range(attempts):
        pod = SimPod(runner, doc, restart=False)
        while time.monotonic() < deadline:
            pod.step()
            if pod.main and all(c.exit_code() is not None for c in pod.main):
                break
            time.sleep(0.3)
        if pod.succeeded():
            return
        for c in pod.main:
            c.remove()
    raise AssertionError(f"hook {doc['kind']} {doc['metadata']['name']} did not succeed")


def is_hook(doc: Doc) -> bool:
    return bool(doc["metadata"].get("annotations", {}).get("helm.sh/hook", "").strip())


@dataclass
class Install:
    runner: Runner
    pods: list[SimPod] = field(default_factory=list)
    api: Container | None = None


def run_hooks(runner: Runner, phase: str, deadline: float) -> None:
    """Run the Job and Pod hooks of `phase` one after the other, each to completion, as helm does."""
    for hook in iter_hooks(runner.docs, phase):
        if hook["kind"] in ("Job", "Pod"):
            run_to_completion(runner, hook, deadline)


def workload_pods(runner: Runner) -> list[SimPod]:
    """A pod per Deployment with replicas and per Job that is not a hook; StatefulSets must have a stand-in."""
    pods = []
    for doc in runner.docs:
        if is_hook(doc):
            continue
        component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        if doc["kind"] == "StatefulSet":
            assert component in SUBSTITUTED, f"no stand-in for StatefulSet {doc['metadata']['name']}"
        elif doc["kind"] == "Deployment" and doc["spec"].get("replicas", 1) != 0:
            pods.append(SimPod(runner, doc, restart=True))
        elif doc["kind"] == "Job":
            pods.append(SimPod(runner, doc, restart=False))
    return pods


def wait_ready(runner: Runner, pods: list[SimPod], deadline: float) -> None:
    """Step every pod until each Deployment's is ready (`helm install --wait`)."""
    deployments = [p for p in pods if p.restart]
    while not all(p.ready() for p in deployments):
        if time.monotonic() > deadline:
            pending = [f"{h['kind']} {h['metadata']['name']}" for h in iter_hooks(runner.docs, "post-install")]
            raise AssertionError(
                f"helm install --wait: not ready after {READY_DEADLINE_S}s; "
                + "; ".join(p.describe() for p in deployments if not p.ready())
                + f"; post-install hooks that would run only after readiness: {pending or 'none'}"
            )
        for p in pods:
            p.step()
        time.sleep(0.3)


def helm_install_wait(runner: Runner) -> Install:
    deadline = time.monotonic() + READY_DEADLINE_S
    run_hooks(runner, "pre-install", deadline)
    install = Install(runner, pods=workload_pods(runner))
    wait_ready(runner, install.pods, deadline)
    run_hooks(runner, "post-install", time.monotonic() + READY_DEADLINE_S)
    for p in install.pods:
        if not p.restart:
            continue
        for c in p.main:
            if c.spec.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz":
                install.api = c
    return install


@pytest.fixture
def runner(target: Target, image: str) -> Iterator[Runner]:
    r = Runner(render(*FAST_VALUES), target, image)
    try:
        yield r
    finally:
        print(r.logs())
        r.close()


def test_helm_install_wait_reaches_readiness(runner: Runner) -> None:
    install = helm_install_wait(runner)
    assert install.api is not None
    with httpx.Client(base_url=install.api.url("http"), timeout=10) as client:
        task_id = submit(client)
        wait_status(client, task_id, "completed")
