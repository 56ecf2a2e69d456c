"""The image run as the rendered chart runs it (command, args, env, securityContext, grace period) for
migrate, api and worker, against the session's Postgres and Redis: tasks complete, a SIGKILLed worker loses
nothing, `podman stop` (SIGTERM, then the chart's grace) requeues without spending an attempt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    FAST_VALUES,
    Container,
    Runner,
    Target,
    api_client,
    component,
    podman,
    render,
    submit,
    wait_status,
)
from support import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def runner(target: Target, image: str) -> Iterator[Runner]:
    r = Runner(render(*FAST_VALUES), target, image)
    try:
        yield r
    finally:
        print(r.logs())  # shown by pytest when the test failed
        r.close()


def start_stack(r: Runner) -> tuple[Container, Container]:
    migrate = r.start(component(r.docs, "Job", "migrate"))
    assert migrate.wait_exit(90) == 0, migrate.logs()
    api = r.start(component(r.docs, "Deployment", "api"))
    worker = r.start(component(r.docs, "Deployment", "worker"))
    wait_for(lambda: api.probe("readinessProbe"), timeout=60, what=f"api readiness\n{api.logs()}")
    wait_for(lambda: worker.probe("readinessProbe"), timeout=60, what=f"worker readiness\n{worker.logs()}")
    return api, worker


def process_status(c: Container) -> dict[str, str]:
    """/proc/<pid>/status of the container's main process, seen from the host."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", c.name).stdout.strip()
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_chart_containers_run_tasks_locked_down(runner: Runner) -> None:
    api, worker = start_stack(runner)
    for c in (api, worker):
        sc = c.spec["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsUser"] == 10001
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False
        status = process_status(c)
        assert status["Uid"].split()[:2] == ["10001", "10001"], status["Uid"]
        assert status["Gid"].split()[0] == "10001"
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", c.name).stdout.strip() == "true"
    with api_client(api) as client:
        ids = [submit(client, "add", {"a": i, "b": 1}) for i in range(5)]
        for i, task_id in enumerate(ids):
            assert wait_status(client, task_id, "completed")["result"] == {"sum": i + 1}


def test_sigkilled_worker_container_loses_nothing(runner: Runner, target: Target) -> None:
    api, worker = start_stack(runner)
    with api_client(api) as client:
        task_id = submit(client, "sleep", {"duration_ms": 3000})
        wait_status(client, task_id, "running", timeout=30)
        worker.kill("KILL")
        assert worker.wait_exit(30) == 137
        runner.start(component(runner.docs, "Deployment", "worker"))
        task = wait_status(client, task_id, "completed", timeout=90)
    assert task["attempts"] == 2, task
    assert target.sql("SELECT status, attempts FROM task WHERE id = %s", (task_id,)) == [("completed", 2)]


def test_podman_stop_requeues_without_spending_an_attempt(runner: Runner, target: Target) -> None:
    api, worker = start_stack(runner)
    # The chart's terminationGracePeriodSeconds (the 2 s grace plus room for the requeue writes) is the stop timeout.
    assert worker.grace_s == 13
    with api_client(api) as client:
        task_id = submit(client, "sleep", {"duration_ms": 120_000})
        assert wait_status(client, task_id, "running", timeout=30)["attempts"] == 1
        worker.stop()
        # Exited on its own within the grace period (SIGKILL would be 137).
        assert worker.exit_code() == 0, worker.logs()
        assert target.sql("SELECT status, attempts FROM task WHERE id = %s", (task_id,)) == [("pending", 0)]
        details = [d for (d,) in target.sql("SELECT detail FROM task_event WHERE task_id = %s", (task_id,))]
        assert any(d and "shut down" in d for d in details), details
        runner.start(component(runner.docs, "Deployment", "worker"))
        task = wait_status(client, task_id, "running", timeout=30)
    assert task["attempts"] == 1, task


def test_built_image_config(image: str) -> None:
    """The image itself: numeric non-root user, `taskproc` entrypoint, no build-time pip settings in its env."""
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["taskproc"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert not [k for k in env if k.startswith("PIP_") and k != "PIP_NO_CACHE_DIR"], env
    assert env["TMPDIR"] == "/tmp"
