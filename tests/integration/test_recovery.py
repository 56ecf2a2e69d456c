"""Leases, the reaper, the reconciler, clocks and idempotent creates, in process against the real servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from taskproc import queue, testhooks
from taskproc.api.main import create_app
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.tasks.registry import registry
from taskproc.worker.runtime import WorkerRuntime

from support import Servers


@dataclass
class Env:
    db_url: str
    redis_url: str

    def settings(self, **overrides: object) -> Settings:
        return Settings(database_url=self.db_url, redis_url=self.redis_url, **overrides)  # type: ignore[arg-type]

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


@pytest.fixture
def env(servers: Servers) -> Iterator[Env]:
    name = servers.new_database()
    index = servers.take_redis_db()
    yield Env(servers.pg.url_for(name), servers.redis.url.rsplit("/", 1)[0] + f"/{index}")
    servers.give_back_redis_db(index)
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def api(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(env.settings(api_maintenance=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


# ---- issue 12 case 13 -------------------------------------------------------------------------------------


async def test_create_with_a_key_whose_task_is_purged_between_insert_and_read_creates_a_new_task(
    env: Env, api: httpx.AsyncClient
) -> None:
    body = {"type": "add", "payload": {"a": 1, "b": 2}, "idempotency_key": "purged-in-between"}
    first = await api.post("/api/v1/tasks", json=body)
    assert first.status_code == 201, first.text

    purged = []

    async def purge() -> None:
        # Retention deleting the existing task right after our insert yielded to it.
        async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
            cur = await conn.execute("DELETE FROM task WHERE idempotency_key = %s", ("purged-in-between",))
            purged.append(cur.rowcount)

    with testhooks.installed("create.after_insert", purge):
        again = await api.post("/api/v1/tasks", json=body)
    assert purged == [1]
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
    assert env.sql("SELECT count(*) FROM task WHERE idempotency_key = 'purged-in-between'") == [(1,)]


# ---- runtimes -----------------------------------------------------------------------------------------------


@asynccontextmanager
async def runtime(env: Env, **overrides: object) -> AsyncIterator[WorkerRuntime]:
    settings = env.settings(**overrides)
    engine = create_engine(
        settings, pool_size=min(settings.db_pool_size, settings.worker_concurrency + 4), pre_ping=False
    )
    redis = Redis.from_url(env.redis_url)
    rt = WorkerRuntime(
        settings=settings, engine=engine, sessions=create_sessionmaker(engine), redis=redis, registry=registry
    )
    try:
        yield rt
    finally:
        await rt.close_connections()
        await engine.dispose()
        await redis.aclose()


def insert_task(
    env: Env,
    *,
    status: str = "pending",
    run_in_s: float = 0.0,
    priority: str = "normal",
    task_id: uuid.UUID | None = None,
) -> uuid.UUID:
    task_id = task_id or uuid.uuid4()
    env.sql(
        "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
        "run_at, cancel_requested, created_at, updated_at) VALUES (%s, 'add', %s, '{\"a\": 1, \"b\": 2}', %s, 0, "
        "3, 60, 1, now() + make_interval(secs => %s), false, now() - interval '1 minute', "
        "now() - interval '1 minute')",
        (task_id, priority, status, run_in_s),
    )
    return task_id


# ---- issue 12 case 3 ----------------------------------------------------------------------------------------


async def test_a_worker_started_after_an_outage_waits_a_full_lease_before_reaping(env: Env) -> None:
    async with runtime(env, lease_s=1.0) as a, runtime(env, lease_s=1.0) as b:
        await a.heartbeat()
        task_id = insert_task(env)
        [claimed] = await a.claim([(queue.job_id(task_id, 1), 0.0)])
        # The outage, as the database sees it afterwards: A could not renew, so its lease has lapsed while its
        # task still runs. (Simulated by moving A's expires_at into the past rather than by stopping Postgres.)
        env.sql("UPDATE worker SET expires_at = now() - interval '1 second' WHERE id = %s", (a.worker_id,))
        # B starts right after the outage ends: its first heartbeat succeeds.
        await b.heartbeat()
        assert await b.reap_lost() == 0, "a fresh worker reaped a live worker's task at once"
        assert env.sql("SELECT status, attempts FROM task WHERE id = %s", (task_id,)) == [("running", 1)]
        # A renews on its next heartbeat (a third of a lease later); B keeps beating for a whole lease.
        await a.heartbeat()
        deadline = time.monotonic() + 10
        while not b.may_reap_others():
            assert time.monotonic() < deadline, "B never got a full lease of good heartbeats"
            await b.heartbeat()
            await a.heartbeat()
            await asyncio.sleep(0.2)
        assert await b.reap_lost() == 0
        assert env.sql("SELECT status, worker_id FROM task WHERE id = %s", (task_id,)) == [("running", a.worker_id)]
        a._inactive(claimed.id)


# ---- issue 12 case 12 ---------------------------------------------------------------------------------------


async def test_heartbeats_renew_the_lease_while_the_pool_is_exhausted(env: Env) -> None:
    async with runtime(env, db_pool_size=2, db_timeout_s=1.0, lease_s=5.0) as rt:
        await rt.heartbeat()
        [(before,)] = env.sql("SELECT expires_at FROM worker WHERE id = %s", (rt.worker_id,))
        # Every connection the pool may open (pool_size + max_overflow), held as by long task writes.
        held = [await rt.engine.connect() for _ in range(4)]
        try:
            for c in held:
                await c.execute(sa.text("SELECT 1"))
            t0 = time.monotonic()
            await rt.heartbeat()
            took = time.monotonic() - t0
        finally:
            for c in held:
                await c.close()
        [(after,)] = env.sql("SELECT expires_at FROM worker WHERE id = %s", (rt.worker_id,))
        assert isinstance(before, datetime) and isinstance(after, datetime)
        assert after > before
        assert took < 1.0
        assert rt.may_reap_others() is False  # one lease has not passed yet


# ---- issue 12 case 4 ----------------------------------------------------------------------------------------


async def test_the_reconciler_carries_on_where_the_last_pass_stopped_in_whichever_process(env: Env) -> None:
    # Lowest ids: delayed tasks, more than one pass may scan; above them, tasks ready now. Redis has nothing
    # (this test's db index is empty, as after a flush).
    delayed = [insert_task(env, run_in_s=3600, task_id=uuid.UUID(int=i + 1)) for i in range(120)]
    ready = [insert_task(env, task_id=uuid.UUID(int=2**127 + i)) for i in range(10)]
    async with runtime(env) as a, runtime(env) as b:
        r = a.redis
        passes = 0
        for passes in range(1, 7):
            # The advisory lock moves between processes: a pass by A, then one by B, and so on.
            await (a if passes % 2 else b).reconcile(batch_size=25, max_rows=50)
            queued = [await r.zscore(queue.QUEUE_KEY, queue.job_id(t, 1)) for t in ready]
            if all(score is not None for score in queued):
                break
        else:
            pytest.fail("ready tasks above the first max_rows waiting ones were never re-enqueued")
        assert passes <= 3  # 130 rows at 50 a pass
        assert await r.zcard(queue.DEFERRED_KEY) == len(delayed)


# ---- issue 12 case 8 ----------------------------------------------------------------------------------------

HOUR_S = 3600.0


async def test_a_low_priority_task_from_a_fast_clock_api_is_taken_at_once_by_a_slow_clock_worker(
    env: Env, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    async with runtime(env) as worker:
        # The API pod's clock an hour fast: the clock sources the API's code path reads (time.time behind
        # queue.now_ms, and the service's utcnow before this fix).
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real_time() + HOUR_S)
            m.setattr(
                "taskproc.services.tasks.utcnow", lambda: datetime.now(UTC) + timedelta(seconds=HOUR_S), raising=False
            )
            created = await api.post(
                "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}, "priority": "low"}
            )
            delayed = await api.post(
                "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}, "priority": "low", "delay_s": 60}
            )
        assert created.status_code == 201, created.text
        task = created.json()
        # And the worker's clock an hour slow.
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real_time() - HOUR_S)
            tick = await worker.ticker.tick(5)
        assert [j for j, _ in tick.taken] == [queue.job_id(uuid.UUID(task["id"]), 1)]
        # created_at and run_at are the database's, not the API's fast clock.
        assert abs(datetime.fromisoformat(task["created_at"]).timestamp() - real_time()) < 60
        # The delayed one waits its minute, by no one's clock but Redis's.
        assert tick.next_due_in_ms is not None and 50_000 < tick.next_due_in_ms <= 60_000
        assert delayed.status_code == 201
