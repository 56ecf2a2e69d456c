"""Result TTLs and the payload and result size limits, with a real API and worker processes (issue 15): a result
is dropped after its task's (or its type's) `result_ttl_s` while the task and its history stay; an oversized
payload is a 413 naming the limit, also in a batch; an oversized result fails its task without retries."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskproc.client import TaskprocClient
from taskproc.dev.embedded import free_port

from conftest import StackFactory
from support import ROOT, TASKPROC, Stack, wait_for

MAX_PAYLOAD = 1024
MAX_RESULT = 200
ENV = {
    "TASKPROC_TASK_MODULES": "poison_tasks",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    "TASKPROC_RETENTION_INTERVAL_S": "0.5",
    "TASKPROC_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
    "TASKPROC_MAX_RESULT_BYTES": str(MAX_RESULT),
}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def stack(stack_factory: StackFactory, metrics_port: int) -> Iterator[Stack]:
    with stack_factory(workers=0, env=ENV) as s:
        s.start_worker(metrics_port=metrics_port)
        s.wait_ready(1)
        yield s


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_result_is_dropped_after_its_ttl_and_the_task_and_history_stay(stack: Stack) -> None:
    short = stack.submit("add", {"a": 1, "b": 2}, result_ttl_s=1)
    kept = stack.submit("add", {"a": 2, "b": 2}, result_ttl_s=3600)
    plain = stack.submit("add", {"a": 3, "b": 2})
    done = stack.wait_status(kept["id"], "completed")
    assert (done["result"], done["result_expired"], done["result_ttl_s"]) == ({"sum": 4}, False, 3600)
    assert _at(done["result_expires_at"]) == _at(done["finished_at"]) + timedelta(hours=1)

    expired = wait_for(
        lambda: (t := stack.get(short["id"]))["result_expired"] and t, timeout=30, what="the short TTL to pass"
    )
    assert expired["status"] == "completed" and expired["result"] is None and expired["result_ttl_s"] == 1
    assert _at(expired["result_expires_at"]) == _at(expired["finished_at"]) + timedelta(seconds=1)
    assert [e["status"] for e in stack.events(short["id"])] == ["pending", "running", "completed"]
    # The worker's retention pass drops the stored result too, and says when.
    wait_for(
        lambda: stack.sql(
            "SELECT 1 FROM task WHERE id = %s AND result IS NULL AND result_expired_at IS NOT NULL", (short["id"],)
        ),
        timeout=30,
        what="the retention pass to drop the result",
    )
    listed = {t["id"]: t for t in stack.client.get("/api/v1/tasks").json()["items"]}
    assert (listed[short["id"]]["result"], listed[short["id"]]["result_expired"]) == (None, True)
    assert stack.get(kept["id"])["result"] == {"sum": 4}
    p = stack.wait_status(plain["id"], "completed")
    assert (p["result"], p["result_ttl_s"], p["result_expires_at"]) == ({"sum": 5}, None, None)
    assert p["result_expired"] is False


def test_the_sdk_submits_a_ttl_and_the_cli_says_the_result_expired(stack: Stack) -> None:
    with TaskprocClient(stack.url) as client:
        task = client.submit("add", {"a": 20, "b": 22}, result_ttl_s=1)
        assert task.result_ttl_s == 1
        done = client.wait(task.id, timeout=30)
        wait_for(lambda: client.get(task.id).result_expired, timeout=30, what="the TTL to pass")
        assert client.get(task.id).result is None and done.finished_at is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_API_")}
    shown = subprocess.run(
        [TASKPROC, "get", str(task.id)],
        env={**env, "TASKPROC_API_URL": stack.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "result expired at" in shown.stdout and '"sum": 42' not in shown.stdout


def test_a_task_types_ttl_applies_unless_the_task_sets_its_own(stack: Stack) -> None:
    types = {t["name"]: t for t in stack.client.get("/api/v1/task-types").json()}
    assert types["short_lived_echo"]["result_ttl_s"] == 1.0 and types["add"]["result_ttl_s"] is None
    by_type = stack.submit("short_lived_echo", {"value": "secret"})
    own = stack.submit("short_lived_echo", {"value": "kept"}, result_ttl_s=3600)
    assert (by_type["result_ttl_s"], own["result_ttl_s"]) == (1.0, 3600)
    assert stack.wait_status(own["id"], "completed")["result"] == "kept"
    wait_for(lambda: stack.get(by_type["id"])["result_expired"], timeout=30, what="the type's TTL to pass")
    assert stack.get(by_type["id"])["result"] is None
    assert stack.get(own["id"])["result"] == "kept"


def test_result_ttl_s_is_more_than_zero_and_at_most_a_year(stack: Stack) -> None:
    for ttl in (0, -1, 365 * 86_400 + 1):
        r = stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}, "result_ttl_s": ttl})
        assert r.status_code == 422, (ttl, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "result_ttl_s"]
    r = stack.client.post(
        "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}, "result_ttl_s": 365 * 86_400}
    )
    assert r.status_code == 201, r.text


def test_a_payload_over_the_limit_is_a_413_naming_it_also_in_a_batch(stack: Stack) -> None:
    big = {"text": "x" * MAX_PAYLOAD}
    size = len(json.dumps(big, separators=(",", ":")))
    r = stack.client.post("/api/v1/tasks", json={"type": "text_stats", "payload": big})
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": f"payload is {size} bytes, over TASKPROC_MAX_PAYLOAD_BYTES={MAX_PAYLOAD}"}
    small = {"type": "add", "payload": {"a": 1, "b": 1}}
    r = stack.client.post("/api/v1/tasks/batch", json={"tasks": [small, {"type": "text_stats", "payload": big}]})
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"tasks[1].payload is {size} bytes, over TASKPROC_MAX_PAYLOAD_BYTES={MAX_PAYLOAD}"
    assert stack.sql("SELECT count(*) FROM task") == [(0,)], "nothing of the batch was created"
    # At the limit exactly, it is accepted.
    fits = {"text": "x" * (MAX_PAYLOAD - len('{"text":""}'))}
    assert stack.client.post("/api/v1/tasks", json={"type": "text_stats", "payload": fits}).status_code == 201


def _attempts_metric(port: int, outcome: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "taskproc_task_attempts_total" and s.labels.get("outcome") == outcome
    )


def test_a_result_over_the_limit_fails_the_task_without_retries(stack: Stack, metrics_port: int) -> None:
    pairs = [[10_000, 10_000]] * 60
    result = json.dumps({"results": [20_000] * 60}, separators=(",", ":"))
    assert len(result) > MAX_RESULT
    task = stack.submit("sum_pairs", {"pairs": pairs}, max_retries=3)
    failed = stack.wait_status(task["id"], {"failed", "completed"})
    assert failed["status"] == "failed" and failed["attempts"] == 1, "never retried: it would return it again"
    assert failed["error"] == f"result of {len(result)} bytes exceeds TASKPROC_MAX_RESULT_BYTES={MAX_RESULT}"
    assert failed["result"] is None and failed["quarantined"] is False
    assert _attempts_metric(metrics_port, "result_too_large") == 1
    fits = stack.submit("sum_pairs", {"pairs": pairs[:5]})
    assert stack.wait_status(fits["id"], {"failed", "completed"})["result"] == {"results": [20_000] * 5}
