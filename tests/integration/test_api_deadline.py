"""The request deadline: every route answers 503 in time while Postgres is frozen (a real API process: the answer
must not wait for the cancelled request, which httpx.ASGITransport would), and a submit that timed out after its
commit is safe to retry with the same idempotency key (in process)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_reliability_outage import postgres_frozen

from taskproc import testhooks

from conftest import StackFactory
from inprocess import InProcessFactory
from support import Servers

pytestmark = pytest.mark.slow

DEADLINE_S = 2.0
MARGIN_S = 1.5


def test_every_route_answers_503_within_the_deadline_while_postgres_is_frozen(
    stack_factory: StackFactory, servers: Servers
) -> None:
    """Routes that read no body (cancel, retry, DELETE, the GETs) used to wait for Postgres with no limit: the
    deadline only started once a body had been read. Now each answers 503 JSON within the deadline, and the
    pool is usable again as soon as Postgres resumes. The database timeouts are set long, so that only the
    request deadline can answer in time (a connection already open waits for TCP, whatever they are)."""
    env = {"TASKPROC_REQUEST_TIMEOUT_S": str(DEADLINE_S), "TASKPROC_DB_TIMEOUT_S": "30"}
    with stack_factory(workers=0, env=env) as stack:
        failed = stack.submit("add")["id"]
        waiting = stack.submit("add", delay_s=3600)["id"]
        stack.sql("UPDATE task SET status = 'failed' WHERE id = %s", (failed,))
        calls: list[tuple[str, str, dict[str, object] | None]] = [
            ("POST", f"/api/v1/tasks/{waiting}/cancel", None),
            ("POST", f"/api/v1/tasks/{failed}/retry", None),
            ("PATCH", f"/api/v1/tasks/{waiting}", {"priority": "high"}),
            ("DELETE", f"/api/v1/tasks/{failed}", None),
            ("GET", f"/api/v1/tasks/{waiting}", None),
            ("GET", f"/api/v1/tasks/{waiting}/events", None),
            ("GET", "/api/v1/tasks", None),
            ("GET", "/api/v1/stats", None),
            ("GET", "/api/v1/events", None),
            ("POST", "/api/v1/tasks", {"type": "add", "payload": {"a": 1, "b": 1}}),
        ]

        def call(method: str, path: str, body: dict[str, object] | None) -> tuple[int, str, float]:
            t0 = time.monotonic()
            with httpx.Client(base_url=stack.url, timeout=30.0) as client:
                r = client.request(method, path, json=body)
                return r.status_code, r.headers.get("content-type", ""), time.monotonic() - t0

        with postgres_frozen(servers), ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(lambda c: call(*c), calls))
        slow = [
            (method, path, status, ctype, round(took, 2))
            for (method, path, _), (status, ctype, took) in zip(calls, results, strict=True)
            if status != 503 or ctype != "application/json" or took > DEADLINE_S + MARGIN_S
        ]
        assert not slow, slow
        # The cancelled requests gave their connections back: the API serves again on the same pool.
        assert stack.client.post(f"/api/v1/tasks/{waiting}/cancel", timeout=10).status_code == 200
        for _ in range(3):
            assert stack.client.get(f"/api/v1/tasks/{waiting}", timeout=10).json()["status"] == "canceled"
            assert stack.client.get("/api/v1/stats", timeout=10).status_code == 200


async def test_submit_timed_out_after_commit_is_safe_to_retry_with_its_key(
    inprocess_factory: InProcessFactory,
) -> None:
    """The deadline's 503 can come after the task was committed (here: held at a pause point between the commit
    and the answer). The same submit again with the same Idempotency-Key returns that task (200), and exactly
    one task exists for the key. (In process: the pause point is a callback that holds the request until the
    test releases it.)"""
    env = {"TASKPROC_REQUEST_TIMEOUT_S": str(DEADLINE_S)}
    reached, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        reached.set()
        await release.wait()

    async with inprocess_factory(workers=1, env=env) as stack:
        with testhooks.installed("api.create.committed", hold):
            body = {"type": "add", "payload": {"a": 2, "b": 3}}
            headers = {"Idempotency-Key": "retry-after-503"}
            first = await stack.client.post("/api/v1/tasks", json=body, headers=headers)
            assert reached.is_set()
            assert first.status_code == 503, first.text
            assert first.json()["detail"]
            assert stack.sql("SELECT count(*) FROM task WHERE idempotency_key = 'retry-after-503'") == [(1,)]
            release.set()

            again = await stack.client.post("/api/v1/tasks", json=body, headers=headers)
            assert again.status_code == 200, again.text
            [(task_id,)] = stack.sql("SELECT id::text FROM task WHERE idempotency_key = 'retry-after-503'")
            assert again.json()["id"] == task_id
            done = await stack.wait_status(task_id, "completed")
            assert done["result"] == {"sum": 5}
            assert stack.sql("SELECT count(*) FROM task") == [(1,)]

            # The batch route, too: its items come back as the committed tasks.
            reached.clear()
            release.clear()
            items = {"tasks": [{**body, "idempotency_key": f"batch-{i}"} for i in range(3)]}
            first = await stack.client.post("/api/v1/tasks/batch", json=items)
            assert reached.is_set()
            assert first.status_code == 503, first.text
            release.set()
            again = await stack.client.post("/api/v1/tasks/batch", json=items)
            assert again.status_code == 201, again.text
            ids = sorted(item["id"] for item in again.json()["items"])
            assert ids == sorted(
                i for (i,) in stack.sql("SELECT id::text FROM task WHERE idempotency_key LIKE 'batch-%'")
            )
            assert stack.sql("SELECT count(*) FROM task") == [(4,)]
