"""The outcomes a handler chooses (taskproc.tasks.PermanentFailure and RetryAfter), with a real Postgres and
Redis, in process: a WorkerRuntime claims and runs attempts of test task types, the queue hands out the retry only
when it is due, and the times asserted on are the ones Postgres recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from taskproc.tasks import PermanentFailure, RetryAfter, TaskContext
from taskproc.tasks.registry import TaskRegistry
from taskproc.worker.runtime import WorkerRuntime

from inprocess import isolated_runtime, submit_direct
from support import Servers

registry = TaskRegistry()


class OutcomeIn(BaseModel):
    delay_s: float | None = None


@registry.register("give_up", payload=OutcomeIn)
async def give_up(payload: OutcomeIn, ctx: TaskContext) -> None:
    """Fails for good on its first attempt."""
    raise PermanentFailure("the input will never work")


@registry.register("later", payload=OutcomeIn)
async def later(payload: OutcomeIn, ctx: TaskContext) -> dict[str, int]:
    """Asks to be retried after `delay_s` on its first attempt, succeeds on the next."""
    if ctx.attempt == 1:
        raise RetryAfter(payload.delay_s if payload.delay_s is not None else 2.0)
    return {"attempt": ctx.attempt}


@pytest.fixture
async def runtime(servers: Servers) -> AsyncIterator[WorkerRuntime]:
    async with isolated_runtime(
        servers,
        types=registry,
        # A backoff far from 2 s, so a retry at 2 s can only come from RetryAfter.
        retry_base_s=60.0,
        retry_max_s=60.0,
    ) as rt:
        yield rt


submit = submit_direct


async def run_next(rt: WorkerRuntime, *, within_s: float) -> None:
    """Take the next job the queue hands out (only once it is due), claim it and run it."""
    deadline = time.monotonic() + within_s
    while True:
        tick = await rt.ticker.tick(1)
        if tick.taken:
            for claimed in await rt.claim(tick.taken):
                await asyncio.wait_for(rt.execute(claimed), 10)
            return
        assert time.monotonic() < deadline, "no job was handed out in time"
        await asyncio.sleep(min(0.05, (tick.next_due_in_ms or 50) / 1000))


async def fetch(rt: WorkerRuntime, query: str, **params: Any) -> list[Any]:
    async with rt.sessions() as session:
        return list((await session.execute(sa.text(query), params)).fetchall())


async def test_permanent_failure_fails_at_the_first_attempt_whatever_retries_are_left(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "give_up", {}, max_retries=3)
    await run_next(runtime, within_s=10)
    [task] = await fetch(runtime, "SELECT status, attempts, error, finished_at FROM task WHERE id = :id", id=task_id)
    assert (task.status, task.attempts) == ("failed", 1)
    assert task.error == "PermanentFailure: the input will never work"
    assert task.finished_at is not None
    events = await fetch(runtime, "SELECT status, detail FROM task_event WHERE task_id = :id ORDER BY id", id=task_id)
    assert [e.status for e in events] == ["pending", "running", "failed"]
    assert "not retried" in events[-1].detail
    assert await runtime.redis.zcard("taskproc:deferred") == 0, "nothing was scheduled for a retry"


async def test_retry_after_runs_the_next_attempt_no_earlier_than_the_delay(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "later", {"delay_s": 2.0}, max_retries=3)
    await run_next(runtime, within_s=10)
    [task] = await fetch(runtime, "SELECT status, attempts, run_at, updated_at FROM task WHERE id = :id", id=task_id)
    assert (task.status, task.attempts) == ("retrying", 1)
    assert (task.run_at - task.updated_at).total_seconds() == pytest.approx(2.0, abs=0.001), "the delay asked for"

    await run_next(runtime, within_s=20)
    [done] = await fetch(runtime, "SELECT status, attempts, result FROM task WHERE id = :id", id=task_id)
    assert (done.status, done.attempts, done.result) == ("completed", 2, {"attempt": 2})
    events = await fetch(
        runtime, "SELECT status, attempt, at FROM task_event WHERE task_id = :id ORDER BY id", id=task_id
    )
    retried_at = next(e.at for e in events if e.status == "retrying")
    second_start = next(e.at for e in events if e.status == "running" and e.attempt == 2)
    # Both times are Postgres's: the second attempt started no earlier than 2 s after the first one failed.
    assert (second_start - retried_at).total_seconds() >= 2.0
    assert (second_start - retried_at).total_seconds() < 30, "and long before the 60 s backoff"


async def test_retry_after_still_spends_an_attempt(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "later", {"delay_s": 0.0}, max_retries=0)
    await run_next(runtime, within_s=10)
    [task] = await fetch(runtime, "SELECT status, attempts FROM task WHERE id = :id", id=task_id)
    assert (task.status, task.attempts) == ("failed", 1), "no retries left: RetryAfter fails the task"


def test_retry_after_refuses_a_delay_it_cannot_keep() -> None:
    for bad in (-1.0, float("nan"), float("inf"), 1e12):
        with pytest.raises(ValueError, match="RetryAfter delay"):
            RetryAfter(bad)
