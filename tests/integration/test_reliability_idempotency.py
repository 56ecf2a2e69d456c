"""Concurrent submissions with the same idempotency key: one task, run once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import httpx

from support import Stack


def race(stack: Stack, n: int, send: Any) -> list[httpx.Response]:
    """Start `n` threads that each call `send(client, i)` at the same moment; their responses, in order."""
    barrier = threading.Barrier(n)
    results: list[httpx.Response | BaseException | None] = [None] * n

    def run(i: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            barrier.wait()
            try:
                results[i] = send(client, i)
            except BaseException as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out = []
    for r in results:
        assert isinstance(r, httpx.Response), r
        out.append(r)
    return out


def test_concurrent_duplicate_keys_create_one_task_that_runs_once(stack: Stack) -> None:
    key = f"race-{uuid.uuid4()}"
    body = {"type": "sleep", "payload": {"duration_ms": 200}, "idempotency_key": key}
    responses = race(stack, 16, lambda c, _: c.post("/api/v1/tasks", json=body))
    codes = Counter(r.status_code for r in responses)
    assert codes == {201: 1, 200: 15}, codes
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    [task_id] = ids
    assert stack.sql("SELECT count(*) FROM task WHERE idempotency_key = %s", (key,)) == [(1,)]
    stack.wait_status(task_id, "completed")
    assert [e["status"] for e in stack.events(task_id)] == ["pending", "running", "completed"]


def test_concurrent_duplicate_header_keys_and_batches(stack: Stack) -> None:
    key = f"hdr-{uuid.uuid4()}"
    batch_keys = [f"batch-{uuid.uuid4()}" for _ in range(5)]

    def send(client: httpx.Client, i: int) -> httpx.Response:
        if i % 2:
            return client.post(
                "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}}, headers={"Idempotency-Key": key}
            )
        tasks = [{"type": "add", "payload": {"a": i, "b": 0}, "idempotency_key": k} for i, k in enumerate(batch_keys)]
        # Half the batches list the keys in reverse: still no deadlock, still the same five tasks.
        return client.post("/api/v1/tasks/batch", json={"tasks": tasks if i % 4 else tasks[::-1]})

    responses = race(stack, 12, send)
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    rows = stack.sql(
        "SELECT idempotency_key, count(*) FROM task WHERE idempotency_key = ANY(%s) GROUP BY 1",
        ([key, *batch_keys],),
    )
    counts = dict(rows)
    assert all(n == 1 for n in counts.values()), counts
    batch_ids = {
        tuple(sorted((item["idempotency_key"], item["id"]) for item in r.json()["items"]))
        for r in responses
        if "items" in r.json()
    }
    assert len(batch_ids) == 1  # every batch answer names the same five tasks
    assert Counter(r.status_code for r in responses if "items" not in r.json()) == {201: 1, 200: 5}
    for (task_id,) in stack.sql("SELECT id::text FROM task WHERE idempotency_key = ANY(%s)", ([key, *batch_keys],)):
        stack.wait_status(task_id, "completed")
        assert [e["status"] for e in stack.events(task_id)] == ["pending", "running", "completed"]
