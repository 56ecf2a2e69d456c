"""Retention: terminal tasks older than TASKPROC_RETENTION_DAYS are purged in batches, without long locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from redis.asyncio import Redis

from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.tasks.registry import registry
from taskproc.worker.runtime import WorkerRuntime

from conftest import StackFactory
from support import Servers, wait_for

SEED = """
INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, run_at,
                  cancel_requested, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'add', 'normal', '{}'::jsonb, %(status)s::text, 1, 0, 60, 1, now() - %(age)s::interval,
       false, now() - %(age)s::interval, now() - %(age)s::interval,
       CASE WHEN %(status)s::text IN ('completed', 'failed', 'canceled') THEN now() - %(age)s::interval END
FROM generate_series(1, %(n)s)
"""
EVENTS = """
INSERT INTO task_event (task_id, at, status, attempt, detail)
SELECT id, finished_at, status, attempts, 'seeded' FROM task WHERE finished_at IS NOT NULL
"""


def seed(url: str, *, old_terminal: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for status, age, n in [
            ("completed", "10 days", old_terminal - 20),
            ("failed", "10 days", 10),
            ("canceled", "8 days", 10),
            ("completed", "1 hour", 7),  # recent: kept
            ("pending", "30 days", 3),  # old but not finished: kept
        ]:
            conn.execute(SEED, {"status": status, "age": age, "n": n})
        conn.execute(EVENTS)


def counts(url: str) -> tuple[int, int, int]:
    """(old terminal tasks, all tasks, events of old terminal tasks)"""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE finished_at < now() - interval '2 days'), count(*), "
            "(SELECT count(*) FROM task_event WHERE at < now() - interval '2 days') FROM task"
        ).fetchone()
        assert row is not None
        return row[0], row[1], row[2]


@pytest.fixture
async def database(servers: Servers) -> AsyncIterator[str]:
    name = servers.new_database()
    yield servers.pg.url_for(name)
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def make_runtime(db_url: str, redis_url: str, days: float) -> WorkerRuntime:
    settings = Settings(database_url=db_url, redis_url=redis_url, retention_days=days)  # type: ignore[arg-type]
    engine = create_engine(settings)
    return WorkerRuntime(
        settings=settings,
        engine=engine,
        sessions=create_sessionmaker(engine),
        redis=Redis.from_url(redis_url),
        registry=registry,
    )


async def test_purge_in_batches_skips_locked_rows_and_zero_keeps_everything(database: str, redis_url: str) -> None:
    seed(database, old_terminal=2500)
    assert counts(database) == (2500, 2510, 2500)

    keep = await make_runtime(database, redis_url, days=0)
    purge = await make_runtime(database, redis_url, days=2)
    try:
        assert await keep.purge_expired() == 0
        assert counts(database) == (2500, 2510, 2500)

        # Someone holds a lock on one expired row (e.g. a slow client deleting it): the purge neither waits for
        # it nor fails, it skips that row and takes it on a later round.
        with psycopg.connect(database) as locker:
            [(locked_id,)] = locker.execute(
                "SELECT id FROM task WHERE status = 'failed' ORDER BY id LIMIT 1 FOR UPDATE"
            ).fetchall()
            purged = await asyncio.wait_for(purge.purge_expired(batch=300), timeout=20)
            assert purged == 2499
            assert counts(database) == (1, 11, 1)
        assert await purge.purge_expired(batch=300) == 1
        assert counts(database) == (0, 10, 0)
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM task WHERE id = %s", (locked_id,)).fetchone() == (0,)
            assert conn.execute("SELECT status, count(*) FROM task GROUP BY 1 ORDER BY 1").fetchall() == [
                ("completed", 7),
                ("pending", 3),
            ]
    finally:
        for rt in (keep, purge):
            await rt.engine.dispose()
            await rt.redis.aclose()


def test_workers_purge_periodically(stack_factory: StackFactory) -> None:
    env = {"TASKPROC_RETENTION_DAYS": "2", "TASKPROC_RETENTION_INTERVAL_S": "1"}
    with stack_factory(workers=0, env=env) as stack:
        seed(stack.database_url, old_terminal=1200)
        done = stack.submit("add", {"a": 1, "b": 1})
        stack.start_worker()
        stack.wait_status(done["id"], "completed")
        wait_for(lambda: counts(stack.database_url)[0] == 0, timeout=30, what="the expired tasks to be purged")
        assert counts(stack.database_url) == (0, 11, 0)
        assert stack.get(done["id"])["status"] == "completed"  # just finished: kept
        assert "purged expired tasks" in stack.workers[0].log_path.read_text()
