"""The taskproc measurements: submit, drain, end to end, pickup latency."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.counters import Counters
from bench.http import Conn, closed_loop, open_loop, summarize_ms
from bench.stack import TaskprocStack

NOOP = {"type": "sleep", "payload": {"duration_ms": 0}}
NOOP_BODY = json.dumps(NOOP, separators=(",", ":")).encode()
SUBMIT = ("POST", "/api/v1/tasks", NOOP_BODY)


def _batch_body(size: int, keys: int = 0, offset: int = 0) -> bytes:
    """A batch of no-op tasks; with `keys`, task i carries concurrency key `k<(offset + i) % keys>`."""
    if not keys:
        return json.dumps({"tasks": [NOOP] * size}, separators=(",", ":")).encode()
    tasks = [{**NOOP, "concurrency_key": f"k{(offset + i) % keys}"} for i in range(size)]
    return json.dumps({"tasks": tasks}, separators=(",", ":")).encode()


async def _wait_completed(database_url: str, since: datetime, n: int, timeout: float) -> dict[str, Any]:
    """Poll Postgres (one connection, 4 times a second) until n tasks created since `since` are terminal."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'), "
                "count(*) FILTER (WHERE status IN ('failed', 'canceled')), min(finished_at), max(finished_at) "
                "FROM task WHERE created_at >= %s",
                (since,),
            )
            row = await cur.fetchone()
            assert row is not None
            done, failed, first, last = row
            if done + failed >= n:
                return {"completed": done, "failed": failed, "first_finished": first, "last_finished": last}
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} tasks completed ({failed} failed) after {timeout:.0f}s")
            await asyncio.sleep(0.25)


async def submit_single(stack: TaskprocStack, *, clients: int, duration_s: float) -> dict[str, Any]:
    res = await closed_loop("127.0.0.1", stack.port, lambda: SUBMIT, clients=clients, duration_s=duration_s)
    return {"clients": clients, **res.summary()}


async def submit_paced(stack: TaskprocStack, *, rate: float, duration_s: float) -> dict[str, Any]:
    res = await open_loop("127.0.0.1", stack.port, lambda: SUBMIT, rate=rate, duration_s=duration_s)
    return {"rate_rps": rate, **res.summary()}


async def submit_batches(
    stack: TaskprocStack, *, n: int, batch_size: int, concurrency: int, keys: int = 0
) -> dict[str, Any]:
    """POST /tasks/batch until n tasks are in; tasks/s over the whole submission (`keys`: spread the tasks over
    that many concurrency keys, round robin)."""
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    bodies = [_batch_body(s, keys, i * batch_size) for i, s in enumerate(sizes)]
    todo = list(range(len(sizes)))
    latencies: list[float] = []

    async def client() -> None:
        conn = Conn("127.0.0.1", stack.port)
        try:
            while todo:
                index = todo.pop()
                t0 = time.perf_counter()
                status, raw = await conn.request("POST", "/api/v1/tasks/batch", bodies[index])
                if status != 201:
                    raise RuntimeError(f"batch submit: HTTP {status}: {raw[:300]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "tasks": n,
        "batch_size": batch_size,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(n / elapsed, 1),
        "batch_latency": summarize_ms(latencies),
    }


async def drain(
    stack: TaskprocStack, counters: Counters, *, n: int, workers: int, batch_size: int, timeout: float
) -> dict[str, Any]:
    """The peers' method: N tasks queued while no worker runs, then W workers start and drain them.

    Rate = tasks between the first and the last completion / that time span (worker start-up excluded), and
    also N / (worker launch to last completion).
    """
    since = datetime.now(UTC)
    before_submit = counters.snapshot()
    submit = await submit_batches(stack, n=n, batch_size=batch_size, concurrency=2)
    before = counters.snapshot()
    submit["cost"] = counters.per_task(before_submit, before, n)
    launch = time.time()
    stack.start_workers(workers)
    done = await _wait_completed(stack.database_url, since, n, timeout)
    after = counters.snapshot()
    first, last = done["first_finished"], done["last_finished"]
    span = (last - first).total_seconds()
    return {
        "tasks": n,
        "workers": workers,
        "completed": done["completed"],
        "failed": done["failed"],
        "drain_s": round(span, 3),
        "tasks_per_s": round((done["completed"] - 1) / span, 1) if span > 0 else 0.0,
        "launch_to_last_s": round(last.timestamp() - launch, 3),
        "tasks_per_s_incl_startup": round(done["completed"] / (last.timestamp() - launch), 1),
        "batch_submit": submit,
        "cost": counters.per_task(before, after, done["completed"]),
    }


async def end_to_end(
    stack: TaskprocStack, counters: Counters, *, n: int, batch_size: int, timeout: float, keys: int = 0
) -> dict[str, Any]:
    """Workers running; N tasks submitted through the API in batches; until every one is completed in PG
    (`keys`: spread over that many concurrency keys, each of which the caller gave a limit)."""
    since = datetime.now(UTC)
    before = counters.snapshot()
    t0 = time.time()
    submit = await submit_batches(stack, n=n, batch_size=batch_size, concurrency=1, keys=keys)
    done = await _wait_completed(stack.database_url, since, n, timeout)
    after = counters.snapshot()
    total = done["last_finished"].timestamp() - t0
    return {
        "tasks": n,
        "workers": len(stack.workers),
        "completed": done["completed"],
        "failed": done["failed"],
        "elapsed_s": round(total, 3),
        "tasks_per_s": round(done["completed"] / total, 1),
        "submit": submit,
        "cost": counters.per_task(before, after, done["completed"]),
    }


async def pickup(stack: TaskprocStack, *, samples: int) -> dict[str, Any]:
    """On an idle system: one task at a time, started_at - created_at (and finished_at - created_at)."""
    conn = Conn("127.0.0.1", stack.port)
    pick: list[float] = []
    total: list[float] = []
    rng = random.Random(7)
    try:
        for _ in range(samples):
            # Idle gaps of varied length, so samples do not all land at the same phase of any timer.
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            task = await conn.json("POST", "/api/v1/tasks", NOOP, expect=(201,))
            deadline = time.monotonic() + 10
            while task["status"] not in ("completed", "failed", "canceled"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {task['id']} still {task['status']} after 10s")
                await asyncio.sleep(0.02)
                task = await conn.json("GET", f"/api/v1/tasks/{task['id']}")
            created = datetime.fromisoformat(task["created_at"])
            pick.append((datetime.fromisoformat(task["started_at"]) - created).total_seconds())
            total.append((datetime.fromisoformat(task["finished_at"]) - created).total_seconds())
    finally:
        await conn.close()
    return {"pickup": summarize_ms(pick), "submit_to_finished": summarize_ms(total)}


async def put_limits(stack: TaskprocStack, *, keys: int, max_running: int, rate_per_s: float) -> None:
    """Give keys k0..k<keys-1> a concurrency limit and a rate (PUT /api/v1/limits/{key})."""
    conn = Conn("127.0.0.1", stack.port)
    try:
        for i in range(keys):
            body = {"max_running": max_running, "rate": {"count": max(1, int(rate_per_s)), "per_s": 1.0}}
            await conn.json("PUT", f"/api/v1/limits/k{i}", body, expect=(200,))
    finally:
        await conn.close()
