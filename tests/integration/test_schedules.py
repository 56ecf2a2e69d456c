"""Cron schedules in process against the session's real Postgres and Redis: the service creates them, the
scheduler is stepped one tick at a time with an injected clock (no waiting for real fire times), and the rows
Postgres holds afterwards are what is asserted on. Two schedulers on one database race for the same fires."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import queue, testhooks
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.errors import ConflictError, InvalidInputError, NotFoundError
from taskproc.models import ScheduleCreate, SchedulePublic, ScheduleUpdate
from taskproc.scheduler import Scheduler
from taskproc.services import schedules as service
from taskproc.tasks import TaskContext
from taskproc.tasks.registry import TaskRegistry

from support import Servers

registry = TaskRegistry()


class JobIn(BaseModel):
    n: int


@registry.register("job", payload=JobIn)
async def job(payload: JobIn, ctx: TaskContext) -> int:
    """A task type for schedules."""
    return payload.n


class Clock:
    """The scheduler's "now", set by the test."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    async def __call__(self, session: AsyncSession) -> datetime:
        assert self.now is not None
        return self.now


@dataclass
class Env:
    url: str
    settings: Settings
    engine: AsyncEngine
    auto: async_sessionmaker[AsyncSession]
    redis: Redis
    clock: Clock

    def scheduler(self) -> Scheduler:
        return Scheduler(
            settings=self.settings,
            sessions=create_sessionmaker(self.engine),
            redis=self.redis,
            registry=registry,
            clock=self.clock,
        )

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    async def create(self, **fields: Any) -> SchedulePublic:
        body = {"name": "s1", "cron": "*/5 * * * *", "task": {"type": "job", "payload": {"n": 1}}, **fields}
        async with self.auto() as s:
            return await service.create_schedule(
                session=s, schedule_in=ScheduleCreate.model_validate(body), registry=registry
            )

    async def get(self, name: str = "s1") -> SchedulePublic:
        async with self.auto() as s:
            return await service.get_schedule(session=s, name=name)

    def tasks(self, name: str = "s1") -> list[tuple[Any, ...]]:
        return self.sql("SELECT id, status, payload FROM task WHERE schedule = %s ORDER BY created_at", (name,))

    def fires(self, name: str = "s1") -> list[tuple[Any, ...]]:
        return self.sql("SELECT fire_at, outcome FROM schedule_fire WHERE schedule = %s ORDER BY fire_at", (name,))


@pytest.fixture
async def env(servers: Servers) -> AsyncIterator[Env]:
    name = servers.new_database()
    db = servers.take_redis_db()
    url = servers.pg.url_for(name)
    redis_url = servers.redis.url.rsplit("/", 1)[0] + f"/{db}"
    settings = Settings(database_url=url, redis_url=redis_url)  # type: ignore[arg-type]
    engine = create_engine(settings)
    redis = Redis.from_url(redis_url)
    try:
        yield Env(
            url=url,
            settings=settings,
            engine=engine,
            auto=create_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")),
            redis=redis,
            clock=Clock(),
        )
    finally:
        await engine.dispose()
        await redis.aclose()
        servers.give_back_redis_db(db)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_due_fire_creates_one_enqueued_task_and_the_next_fire_time_follows(env: Env) -> None:
    created = await env.create()
    assert created.next_run_at is not None and created.next_run_at.minute % 5 == 0
    assert created.last_run_at is None and created.last_task_id is None
    sched = env.scheduler()
    env.clock.now = created.next_run_at - timedelta(seconds=1)
    assert (await sched.tick()).fired == 0 and env.tasks() == []

    env.clock.now = created.next_run_at + timedelta(seconds=1)
    assert (await sched.tick()).fired == 1
    [(task_id, status, payload)] = env.tasks()
    assert (status, payload) == ("pending", {"n": 1})
    assert env.fires() == [(created.next_run_at, "fired")]
    ready, deferred, _ = await queue.queue_sizes(env.redis)
    assert ready + deferred == 1, "enqueued to Redis by the normal create path"
    after = await env.get()
    assert after.next_run_at == created.next_run_at + timedelta(minutes=5)
    assert after.last_run_at is not None and after.fired_total == 1
    assert (after.last_task_id, after.last_task_status) == (task_id, "pending")

    # The same clock again: nothing is due any more.
    assert (await sched.tick()).fired == 0 and len(env.tasks()) == 1


async def test_two_schedulers_racing_create_exactly_one_task_per_fire_time(env: Env) -> None:
    created = await env.create()
    assert created.next_run_at is not None
    a, b = env.scheduler(), env.scheduler()
    for i in range(3):
        env.clock.now = created.next_run_at + timedelta(minutes=5 * i, seconds=1)
        results = await asyncio.gather(a.tick(), b.tick())
        assert sum(r.fired for r in results) == 1
    assert len(env.tasks()) == 3
    assert [o for _, o in env.fires()] == ["fired"] * 3


async def test_a_fire_time_decided_before_creates_nothing_again(env: Env) -> None:
    """The unique key, not the lock: a scheduler that sees a fire time already decided (another replica's
    commit it had not seen, a restart) gets the conflict, ignores it and only moves next_run_at on."""
    created = await env.create()
    assert created.next_run_at is not None
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    assert (await env.scheduler().tick()).fired == 1
    env.sql("UPDATE schedule SET next_run_at = %s WHERE name = 's1'", (created.next_run_at,))
    result = await env.scheduler().tick()
    assert (result.fired, result.duplicate) == (0, 1)
    assert len(env.tasks()) == 1
    assert (await env.get()).next_run_at == created.next_run_at + timedelta(minutes=5)


async def test_a_second_scheduler_finds_the_lock_taken_while_the_first_is_inside_a_fire(env: Env) -> None:
    created = await env.create()
    assert created.next_run_at is not None
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    seen = []

    async def compete() -> None:
        # The first scheduler has claimed the fire time and not committed yet: the other one runs now.
        seen.append(await env.scheduler().tick())

    with testhooks.installed("scheduler.before_create", compete):
        first = await env.scheduler().tick()
    assert first.fired == 1
    [second] = seen
    assert second.lock_busy and second.fired == 0
    assert len(env.tasks()) == 1


async def test_after_downtime_the_latest_fire_runs_once_and_older_ones_are_recorded_missed(env: Env) -> None:
    created = await env.create()
    assert created.next_run_at is not None
    # Down for an hour: 13 fire times passed; the latest (1 s ago) runs, the 12 before it are missed.
    env.clock.now = created.next_run_at + timedelta(hours=1, seconds=1)
    result = await env.scheduler().tick()
    assert (result.fired, result.missed) == (1, 12)
    assert len(env.tasks()) == 1
    after = await env.get()
    assert after.missed_total == 12 and after.fired_total == 1
    assert after.last_skipped_at == created.next_run_at + timedelta(minutes=55)
    assert after.last_skip_reason and after.last_skip_reason.startswith("missed")
    assert after.next_run_at == created.next_run_at + timedelta(hours=1, minutes=5)
    async with env.auto() as s:
        fires = await service.list_fires(session=s, name="s1", limit=10)
    assert [(f.outcome, f.fire_at) for f in fires] == [
        ("fired", created.next_run_at + timedelta(hours=1)),
        ("missed", created.next_run_at + timedelta(minutes=55)),
    ]
    assert fires[1].detail and fires[1].detail.startswith("12 fire time(s)")


async def test_a_missed_daily_fire_runs_within_catchup_s_and_is_skipped_beyond_it(env: Env) -> None:
    for name, catchup_s, fired in (("late", 600.0, 0), ("caught", 7200.0, 1)):
        created = await env.create(name=name, cron="0 3 * * *", timezone="Europe/Berlin", catchup_s=catchup_s)
        assert created.next_run_at is not None
        env.clock.now = created.next_run_at + timedelta(hours=1)
        result = await env.scheduler().tick()
        assert result.fired == fired, name
        assert len(env.tasks(name)) == fired
        after = await env.get(name)
        assert after.missed_total == 1 - fired
        assert after.next_run_at is not None and after.next_run_at - created.next_run_at >= timedelta(hours=23)


async def test_overlap_skip_records_the_skip_while_the_previous_run_waits(env: Env) -> None:
    created = await env.create(overlap="skip")
    assert created.next_run_at is not None
    sched = env.scheduler()
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    assert (await sched.tick()).fired == 1
    env.clock.now += timedelta(minutes=5)
    result = await sched.tick()
    assert (result.fired, result.skipped) == (0, 1)
    assert len(env.tasks()) == 1
    after = await env.get()
    assert after.skipped_total == 1 and after.last_skip_reason and "overlap: skip" in after.last_skip_reason
    assert [o for _, o in env.fires()] == ["fired", "skipped"]
    # Once the previous run has finished, the next fire runs.
    env.sql("UPDATE task SET status = 'completed', finished_at = now() WHERE schedule = 's1'")
    env.clock.now += timedelta(minutes=5)
    assert (await sched.tick()).fired == 1


async def test_overlap_cancel_previous_cancels_the_waiting_run_and_fires(env: Env) -> None:
    created = await env.create(overlap="cancel_previous")
    assert created.next_run_at is not None
    sched = env.scheduler()
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    assert (await sched.tick()).fired == 1
    env.clock.now += timedelta(minutes=5)
    assert (await sched.tick()).fired == 1
    [(first, s1, _), (_, s2, _)] = env.tasks()
    assert (s1, s2) == ("canceled", "pending")
    [(detail,)] = env.sql("SELECT detail FROM task_event WHERE task_id = %s AND status = 'canceled'", (first,))
    assert detail == "canceled before it ran"


async def test_a_task_body_the_type_no_longer_accepts_is_recorded_invalid_and_the_schedule_moves_on(
    env: Env,
) -> None:
    created = await env.create()
    assert created.next_run_at is not None
    env.sql("""UPDATE schedule SET task = '{"type": "job", "payload": {"n": "x"}}' WHERE name = 's1'""")
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    result = await env.scheduler().tick()
    assert (result.fired, result.skipped) == (0, 1)
    assert env.tasks() == [] and [o for _, o in env.fires()] == ["invalid"]
    after = await env.get()
    assert after.next_run_at == created.next_run_at + timedelta(minutes=5)
    assert after.last_skip_reason and after.last_skip_reason.startswith("invalid")


async def test_pause_resume_trigger_update_delete_and_their_refusals(env: Env) -> None:
    created = await env.create()
    assert created.enabled and created.next_run_at is not None
    with pytest.raises(ConflictError):
        await env.create()
    with pytest.raises(InvalidInputError) as info:
        await env.create(name="bad", task={"type": "job", "payload": {"n": "x"}})
    assert info.value.problems[0].field[:2] == ("task", "payload")
    with pytest.raises(InvalidInputError):
        await env.create(name="bad", task={"type": "nope"})
    async with env.auto() as s:
        paused = await service.update_schedule(
            session=s, name="s1", update=ScheduleUpdate(enabled=False), registry=registry
        )
        assert not paused.enabled and paused.next_run_at is None
        env.clock.now = created.next_run_at + timedelta(days=1)
        assert (await env.scheduler().tick()).fired == 0
        resumed = await service.update_schedule(
            session=s, name="s1", update=ScheduleUpdate(enabled=True, cron="@hourly"), registry=registry
        )
        assert resumed.cron == "@hourly" and resumed.next_run_at is not None and resumed.next_run_at.minute == 0
        task = await service.trigger_schedule(
            session=s, redis=env.redis, settings=env.settings, registry=registry, name="s1"
        )
        assert task.schedule == "s1" and task.payload == {"n": 1}
        again = await service.get_schedule(session=s, name="s1")
        assert again.fired_total == 1 and again.last_task_id == task.id and again.next_run_at == resumed.next_run_at
        assert [x.name for x in await service.list_schedules(session=s)] == ["s1"]
        await service.delete_schedule(session=s, name="s1")
        for call in (
            service.get_schedule(session=s, name="s1"),
            service.delete_schedule(session=s, name="s1"),
            service.list_fires(session=s, name="s1", limit=5),
        ):
            with pytest.raises(NotFoundError):
                await call
    assert env.sql("SELECT schedule FROM task WHERE id = %s", (task.id,)) == [("s1",)]
    assert uuid.UUID(str(task.id))


async def test_overlap_cancel_previous_flags_a_running_run_for_its_worker_and_fires(env: Env) -> None:
    created = await env.create(overlap="cancel_previous")
    assert created.next_run_at is not None
    sched = env.scheduler()
    env.clock.now = created.next_run_at + timedelta(seconds=1)
    assert (await sched.tick()).fired == 1
    env.sql("UPDATE task SET status = 'running', attempts = 1, started_at = now(), worker_id = 'w1'")
    env.clock.now += timedelta(minutes=5)
    assert (await sched.tick()).fired == 1
    rows = env.sql("SELECT status, cancel_requested FROM task WHERE schedule = 's1' ORDER BY created_at")
    assert rows == [("running", True), ("pending", False)], "the worker aborts the first; the fire ran"
