"""Per-key limits with real worker processes (issue 14's "done when"): two workers of 16 slots each never run a
key over its limit while workers are SIGKILLed and restarted and tasks are canceled, failed and retried; and a
backlog of 10,000 tasks of one saturated key does not delay another key's task beyond the normal pickup."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import redis

from conftest import StackFactory
from probe_tasks import attempts, max_overlap
from support import ROOT, Stack, wait_for

LIMITS = {"k1": 1, "k2": 2, "k3": 3, "k5": 5}
ENV = {
    "TASKPROC_WORKER_CONCURRENCY": "16",
    "TASKPROC_TASK_MODULES": "probe_tasks",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
}


def _batch(stack: Stack, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = stack.client.post("/api/v1/tasks/batch", json={"tasks": tasks}, timeout=60)
    assert r.status_code == 201, r.text
    return list(r.json()["items"])


def _done(stack: Stack, ids: list[str]) -> int:
    rows = stack.sql(
        "SELECT count(*) FROM task WHERE id = ANY(%s) AND status IN ('completed', 'failed', 'canceled')", (ids,)
    )
    return int(rows[0][0])


def _ends_from_events(stack: Stack) -> dict[tuple[str, int], datetime]:
    """For each attempt (task, attempt): when the statement that took it out of `running` ran (its event's time,
    the statement's now(): never after the slot was given back, never before the attempt's handler ended)."""
    rows = stack.sql(
        "SELECT e1.task_id::text, e1.attempt, (SELECT e2.at FROM task_event e2 WHERE e2.task_id = e1.task_id "
        "AND e2.id > e1.id ORDER BY e2.id LIMIT 1) FROM task_event e1 WHERE e1.status = 'running'"
    )
    return {(task_id, attempt): end for task_id, attempt, end in rows if end is not None}


def _overlaps(stack: Stack, log: str, key_of: dict[str, str]) -> dict[str, int]:
    """Per key, the most attempts whose handlers ran at once. An attempt that logged no end (its worker was
    killed, it was canceled or failed) ends when Postgres took it out of `running`."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        entries = client.lrange(log, 0, -1)
    finally:
        client.close()
    ends = _ends_from_events(stack)
    by_key: dict[str, list[tuple[float, float]]] = {}
    for a in attempts(entries):  # type: ignore[arg-type]
        end = a.end if a.end is not None else ends[(a.task_id, a.attempt)].timestamp()
        by_key.setdefault(key_of[a.task_id], []).append((a.start, end))
    return {k: max_overlap(v) for k, v in by_key.items()}


def test_limits_hold_across_two_workers_of_16_slots_with_crashes_and_cancels(stack_factory: StackFactory) -> None:
    rng = random.Random(14)
    with stack_factory(workers=2, env=ENV) as stack:
        for key, n in LIMITS.items():
            assert stack.client.put(f"/api/v1/limits/{key}", json={"max_running": n}).status_code == 200
        keys = [*LIMITS, "free"]
        specs = []
        for _ in range(400):
            key = rng.choice(keys)
            payload = {
                "redis_url": stack.redis_url,
                "log": "probe",
                "duration_ms": rng.randint(20, 150),
                "fail": rng.random() < 0.1,
            }
            spec: dict[str, Any] = {"type": "probe", "payload": payload, "max_retries": 2}
            if key != "free":
                spec["concurrency_key"] = key
            specs.append((key, spec))
        tasks = _batch(stack, [s for _, s in specs[:200]]) + _batch(stack, [s for _, s in specs[200:]])
        key_of = {t["id"]: key for t, (key, _) in zip(tasks, specs, strict=True)}
        ids = list(key_of)

        # Mid-run: one worker is killed with its tasks running (the reaper hands them back after its lease) and
        # a fresh one started; tasks are canceled, running or waiting; later the other worker is killed too.
        wait_for(lambda: _done(stack, ids) >= 80, timeout=120, what="80 tasks finished")
        stack.workers[0].kill()
        stack.start_worker()
        for t in rng.sample(tasks, 40):
            assert stack.client.post(f"/api/v1/tasks/{t['id']}/cancel").status_code in (200, 409)
        wait_for(lambda: _done(stack, ids) >= 220, timeout=120, what="220 tasks finished")
        stack.workers[1].kill()
        stack.start_worker()
        wait_for(lambda: _done(stack, ids) == len(ids), timeout=180, what="every task finished")

        overlap = _overlaps(stack, "probe", key_of)
        for key, limit in LIMITS.items():
            assert overlap[key] <= limit, (key, overlap)
        assert overlap["k5"] >= 3 and overlap["free"] >= 6, f"the limits were not idle: {overlap}"
        lost = stack.sql("SELECT count(*) FROM task_event WHERE detail LIKE 'worker lost%%'")
        assert lost[0][0] >= 1, "the kills took running attempts with them (handed back by the reaper)"
        statuses = dict(stack.sql("SELECT status, count(*) FROM task GROUP BY status"))
        assert statuses.get("canceled", 0) >= 1 and statuses.get("failed", 0) + statuses.get("completed", 0) > 300
        assert stack.sql("SELECT key, running FROM task_key ORDER BY key") == [(k, 0) for k in sorted(LIMITS)]


def _pickup_s(stack: Stack, task_id: str) -> float:
    [(created, started)] = stack.sql("SELECT created_at, started_at FROM task WHERE id = %s", (task_id,))
    return float((started - created).total_seconds())


def _pickups(stack: Stack, n: int, **fields: Any) -> Iterator[float]:
    for _ in range(n):
        t = stack.submit("add", **fields)
        stack.wait_status(t["id"], "completed")
        yield _pickup_s(stack, t["id"])


def test_a_saturated_keys_backlog_does_not_delay_another_keys_task(stack_factory: StackFactory) -> None:
    with stack_factory(workers=2, env=ENV) as stack:
        normal = sorted(_pickups(stack, 10))
        stack.client.put("/api/v1/limits/hot", json={"max_running": 1})
        stack.client.put("/api/v1/limits/cold", json={"max_running": 1})
        blocker = stack.submit("sleep", {"duration_ms": 300_000}, concurrency_key="hot")
        stack.wait_status(blocker["id"], "running")
        t0 = time.monotonic()
        for _ in range(10):
            _batch(stack, [{"type": "add", "payload": {"a": 1, "b": 1}, "concurrency_key": "hot"}] * 1000)
        submitted_s = time.monotonic() - t0
        behind = sorted(_pickups(stack, 10, concurrency_key="cold"))
        waiting = stack.sql("SELECT count(*) FROM task WHERE concurrency_key = 'hot' AND status = 'pending'")
        assert waiting == [(10_000,)], "the hot backlog was still waiting while the cold tasks ran"
        # The median is the "normal pickup latency"; the slowest of ten may meet a busy moment of the machine.
        assert statistics.median(behind) <= statistics.median(normal) + 0.05, (normal, behind)
        assert behind[-1] <= normal[-1] + 0.25, (normal, behind, f"backlog submitted in {submitted_s:.1f}s")
