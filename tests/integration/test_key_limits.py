"""Per-key concurrency and rate limits (issue 14) with the in-process API and real arq workers against the
session's real Postgres and Redis: the limits resource, the task's `concurrency_key`, enforcement across
workers, a task type's declared defaults, the waiting reasons, and Postgres holding the line when Redis's view of
a key is wrong (a FLUSHDB). Crashes, cancels and head-of-line blocking with worker processes are in
test_key_limits_processes.py."""

from __future__ import annotations

import sys
import time
from typing import Any

from redis.asyncio import Redis

from taskproc import queue

import probe_tasks  # noqa: F401 - registers the `probe` task type in this process
from inprocess import InProcess, InProcessFactory, wait_until
from probe_tasks import attempts, max_overlap
from support import ROOT

sys.path.insert(0, str(ROOT / "examples"))
import tenant_tasks  # noqa: F401 - registers `tenant_report`, the README's example of a type's default limit

LIMITS = "/api/v1/limits"


def probe(api: InProcess, log: str, **fields: Any) -> dict[str, Any]:
    return {"redis_url": api.redis_url, "log": log, **fields}


async def overlap_by_key(api: InProcess, log: str, key_of: dict[str, str]) -> dict[str, int]:
    """Per key, the most attempts that ran at once, from the probes' own start and end times."""
    redis = Redis.from_url(api.redis_url)
    try:
        entries = await redis.lrange(log, 0, -1)
    finally:
        await redis.aclose()
    by_key: dict[str, list[tuple[float, float]]] = {}
    for a in attempts(entries):
        assert a.end is not None, f"attempt {a} never ended"
        by_key.setdefault(key_of[a.task_id], []).append((a.start, a.end))
    return {k: max_overlap(v) for k, v in by_key.items()}


async def all_done(api: InProcess, ids: list[str], timeout: float = 60.0) -> None:
    async def done() -> bool:
        rows = api.sql("SELECT count(*) FROM task WHERE id = ANY(%s) AND status = 'completed'", (ids,))
        return rows[0][0] == len(ids)

    await wait_until(done, timeout=timeout, what=f"{len(ids)} tasks to complete")


# ---- the resource ---------------------------------------------------------------------------------------------


async def test_limits_are_put_read_listed_and_deleted(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory() as api:
        assert (await api.client.get(LIMITS)).json() == []
        r = await api.client.put(f"{LIMITS}/tenant:acme/eu", json={"max_running": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["key"] == "tenant:acme/eu" and body["max_running"] == 3 and body["rate"] is None
        assert body["running"] == 0 and body["tokens"] is None and body["origin"] == "api"
        r = await api.client.put(f"{LIMITS}/mail", json={"rate": {"count": 5, "per_s": 60}})
        assert r.json()["rate"] == {"count": 5, "per_s": 60.0} and r.json()["tokens"] == 5.0
        assert [lim["key"] for lim in (await api.client.get(LIMITS)).json()] == ["mail", "tenant:acme/eu"]
        assert (await api.client.get(f"{LIMITS}/mail")).json()["max_running"] is None
        # Redis mirrors what Postgres holds, for the workers' ticks.
        redis = Redis.from_url(api.redis_url)
        try:
            assert await redis.hget(queue.LIMITS_KEY, "mail") == b"|5|60.0"
            assert (await api.client.delete(f"{LIMITS}/mail")).status_code == 204
            assert await redis.hget(queue.LIMITS_KEY, "mail") is None
        finally:
            await redis.aclose()
        assert (await api.client.get(f"{LIMITS}/mail")).status_code == 404
        assert (await api.client.delete(f"{LIMITS}/mail")).status_code == 404
        for bad in ({}, {"max_running": 0}, {"rate": {"count": 0, "per_s": 1}}, {"rate": {"count": 1}}, {"x": 1}):
            r = await api.client.put(f"{LIMITS}/k", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json") or "detail" in r.json()
        assert (await api.client.put(f"{LIMITS}/{'k' * 201}", json={"max_running": 1})).status_code == 422
        assert (await api.client.get(f"{LIMITS}/k")).status_code == 404


async def test_a_task_carries_its_concurrency_key(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory() as api:
        task = await api.submit(concurrency_key="tenant:acme")
        assert task["concurrency_key"] == "tenant:acme"
        assert (await api.get(task["id"]))["concurrency_key"] == "tenant:acme"
        assert (await api.submit())["concurrency_key"] is None
        for bad in ("", "k" * 201, 5):
            r = await api.client.post(
                "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}, "concurrency_key": bad}
            )
            assert r.status_code == 422, (bad, r.text)
        # The type's key function names the key when the task does not.
        report = await api.submit("tenant_report", {"tenant": "acme"})
        assert report["concurrency_key"] == "tenant:acme"
        own = await api.submit("tenant_report", {"tenant": "acme"}, concurrency_key="vip")
        assert own["concurrency_key"] == "vip"


# ---- enforcement ----------------------------------------------------------------------------------------------


async def test_a_key_never_runs_more_than_its_limit_across_workers_and_other_keys_run_meanwhile(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=2, env={"TASKPROC_WORKER_CONCURRENCY": "4"}) as api:
        await api.client.put(f"{LIMITS}/a", json={"max_running": 2})
        await api.client.put(f"{LIMITS}/b", json={"max_running": 1})
        key_of: dict[str, str] = {}
        for i in range(24):
            key = "a" if i % 3 else "b"
            t = await api.submit("probe", probe(api, "log", duration_ms=60), concurrency_key=key)
            key_of[t["id"]] = key
        for _ in range(6):
            t = await api.submit("probe", probe(api, "log", duration_ms=60))
            key_of[t["id"]] = "none"
        await all_done(api, list(key_of))
        overlap = await overlap_by_key(api, "log", key_of)
        assert overlap["a"] == 2, overlap
        assert overlap["b"] == 1, overlap
        assert overlap["none"] >= 2, "unlimited tasks ran side by side"
        assert api.sql("SELECT key, running FROM task_key ORDER BY key") == [("a", 0), ("b", 0)]
        r = await api.client.get(f"{LIMITS}/a")
        assert r.json()["running"] == 0


async def test_a_rate_spaces_the_starts_of_a_key(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1) as api:
        # A burst of 2, then one start every 0.5 s.
        await api.client.put(f"{LIMITS}/r", json={"rate": {"count": 2, "per_s": 1.0}})
        ids = [(await api.submit("add", concurrency_key="r"))["id"] for _ in range(6)]
        free = await api.submit("add")
        await api.wait_status(free["id"], "completed")
        await all_done(api, ids)
        starts = sorted(row[0].timestamp() for row in api.sql("SELECT started_at FROM task WHERE id = ANY(%s)", (ids,)))
        first = starts[0]
        for k, at in enumerate(starts):
            # The k-th start (0-based) waits for k - 1 tokens after the burst of two: 0.5 s each.
            assert at - first >= max(0, k - 1) * 0.5 - 0.05, (k, [s - first for s in starts])
        assert starts[-1] - first < 4.0, "and not much longer: each start comes with its token"


async def test_waiting_says_concurrency_limited_and_rate_limited(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1) as api:
        await api.client.put(f"{LIMITS}/slow", json={"max_running": 1})
        running = await api.submit("sleep", {"duration_ms": 20_000}, concurrency_key="slow")
        await api.wait_status(running["id"], "running")
        waiting = await api.submit("add", concurrency_key="slow")

        async def limited() -> dict[str, Any] | None:
            w = (await api.get(waiting["id"]))["waiting"]
            return w if w and w["reason"] == "concurrency_limited" else None

        w = await wait_until(limited, what="waiting.reason concurrency_limited")
        assert (w["key"], w["running"], w["limit"]) == ("slow", 1, 1) and "1 running of its limit 1" in w["detail"]
        listed = (await api.client.get("/api/v1/tasks", params={"status": "pending"})).json()["items"]
        assert [t["waiting"]["reason"] for t in listed if t["id"] == waiting["id"]] == ["concurrency_limited"]
        assert (await api.client.get(f"{LIMITS}/slow")).json()["running"] == 1

        await api.client.put(f"{LIMITS}/rated", json={"rate": {"count": 1, "per_s": 3600}})
        first = await api.submit("add", concurrency_key="rated")
        await api.wait_status(first["id"], "completed")
        second = await api.submit("add", concurrency_key="rated")

        async def rated() -> dict[str, Any] | None:
            w = (await api.get(second["id"]))["waiting"]
            return w if w and w["reason"] == "rate_limited" else None

        w = await wait_until(rated, what="waiting.reason rate_limited")
        assert w["key"] == "rated" and w["until"] is not None
        # Raising the limit lets it go at once: the key's held jobs are looked at again.
        await api.client.put(f"{LIMITS}/rated", json={"rate": {"count": 5, "per_s": 1}})
        await api.wait_status(second["id"], "completed", timeout=15)
        await api.client.delete(f"{LIMITS}/slow")
        await api.wait_status(waiting["id"], "completed", timeout=15)


async def test_a_task_types_declared_limit_applies_to_each_key_without_an_api_call(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_WORKER_CONCURRENCY": "8"}) as api:
        ids = [(await api.submit("tenant_report", {"tenant": "acme", "duration_ms": 300}))["id"] for _ in range(4)]
        other = await api.submit("tenant_report", {"tenant": "globex", "duration_ms": 0})
        [limit] = [lim for lim in (await api.client.get(LIMITS)).json() if lim["key"] == "tenant:acme"]
        assert limit["origin"] == "type" and limit["max_running"] == 2
        assert limit["rate"] == {"count": 10, "per_s": 60.0}
        await api.wait_status(other["id"], "completed", timeout=15)
        await all_done(api, ids)
        intervals = api.sql("SELECT started_at, finished_at FROM task WHERE id = ANY(%s)", (ids,))
        assert max_overlap([(s.timestamp(), f.timestamp()) for s, f in intervals]) == 2
        # A PUT overrides the default, and the type's next submit leaves it alone.
        await api.client.put(f"{LIMITS}/tenant:acme", json={"max_running": 1})
        await api.submit("tenant_report", {"tenant": "acme"})
        assert (await api.client.get(f"{LIMITS}/tenant:acme")).json()["origin"] == "api"


async def test_after_a_redis_flush_postgres_still_holds_the_limit(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=2, env={"TASKPROC_WORKER_CONCURRENCY": "4"}) as api:
        await api.client.put(f"{LIMITS}/k", json={"max_running": 1})
        long = await api.submit("probe", probe(api, "log", duration_ms=1500), concurrency_key="k")
        await api.wait_status(long["id"], "running")
        redis = Redis.from_url(api.redis_url)
        try:
            # Redis forgets the limit and that a job of k runs; the reconciler re-enqueues what waits.
            key_of = {long["id"]: "k"}
            for _ in range(6):
                key_of[(await api.submit("probe", probe(api, "log", duration_ms=100), concurrency_key="k"))["id"]] = "k"
            await redis.flushdb()
            t0 = time.monotonic()
            await all_done(api, list(key_of), timeout=60)
        finally:
            await redis.aclose()
        overlap = await overlap_by_key(api, "log", key_of)
        assert overlap == {"k": 1}, f"never two at once, {time.monotonic() - t0:.1f}s after the flush"
        assert api.sql("SELECT running FROM task_key WHERE key = 'k'") == [(0,)]
