"""Attempt outcomes against a real Postgres and Redis, in process: a WorkerRuntime runs claimed attempts of test
task types, and pause points (taskproc.testhooks) put the competing operation exactly between two steps.

- a cancel racing a failing attempt or a shutdown requeue ends `canceled` (issue 12 case 2);
- a cancel that meets a task moving from running to retrying wins (case 14);
- a NUL byte in a handler's error is stored sanitised and the attempt is recorded (case 9);
- a completion after a cancel was accepted is `canceled`, even with Redis flushed (case 11);
- shutdown requeues beyond TASKPROC_MAX_SHUTDOWN_REQUEUES spend an attempt (issue 11 section 3).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from taskproc import queue, testhooks
from taskproc.errors import ConflictError
from taskproc.services import tasks as service
from taskproc.store import Claimed
from taskproc.tasks.registry import TaskContext, TaskRegistry
from taskproc.worker.runtime import WorkerRuntime

from conftest import StackFactory
from inprocess import isolated_runtime, submit_direct
from support import Servers

registry = TaskRegistry()


class BoomIn(BaseModel):
    message: str


@registry.register("boom", payload=BoomIn)
async def boom(payload: BoomIn, ctx: TaskContext) -> None:
    """Fails with the given message ({NUL} and {LONE_SURROGATE} stand for what a JSON payload can't carry)."""
    raise RuntimeError(payload.message.replace("{NUL}", "\x00").replace("{LONE_SURROGATE}", "\ud800"))


class CallIn(BaseModel):
    pass


@registry.register("call", payload=CallIn)
async def call(payload: CallIn, ctx: TaskContext) -> dict[str, bool]:
    """Runs whatever the test installed at the pause point `test.handler`, then succeeds."""
    await testhooks.point("test.handler")
    return {"ok": True}


@pytest.fixture
async def runtime(servers: Servers) -> AsyncIterator[WorkerRuntime]:
    async with isolated_runtime(
        servers,
        types=registry,
        retry_base_s=0.1,
        max_shutdown_requeues=2,
    ) as rt:
        yield rt


submit = submit_direct


async def row(rt: WorkerRuntime, task_id: uuid.UUID) -> Any:
    async with rt.sessions() as session:
        return await service.get_task(session=session, task_id=task_id)


async def claim(rt: WorkerRuntime, task_id: uuid.UUID) -> Claimed:
    async with rt.sessions() as session:
        gen = (await session.execute(sql("SELECT generation FROM task WHERE id = :id"), {"id": task_id})).scalar_one()
    [claimed] = await rt.claim([(queue.job_id(task_id, gen), 0.0)])
    return claimed


def sql(text: str) -> Any:
    return sa.text(text)


async def cancel(rt: WorkerRuntime, task_id: uuid.UUID) -> Any:
    async with rt.sessions() as session:
        return await service.cancel_task(session=session, redis=rt.redis, task_id=task_id)


async def test_cancel_racing_a_failing_attempt_ends_canceled(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "boom", {"message": "no"}, max_retries=3)
    claimed = await claim(runtime, task_id)

    async def cancel_now() -> None:
        assert (await cancel(runtime, task_id)).status == "running"  # flagged: its worker is to abort it

    with testhooks.installed("finish_failed.decide", cancel_now):
        await asyncio.wait_for(runtime.execute(claimed), 10)
    task = await row(runtime, task_id)
    assert task.status == "canceled", task
    assert task.finished_at is not None


async def test_cancel_racing_a_shutdown_requeue_ends_canceled(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "call", {})
    claimed = await claim(runtime, task_id)
    started = asyncio.Event()

    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    async def cancel_now() -> None:
        assert (await cancel(runtime, task_id)).status == "running"

    with testhooks.installed("test.handler", block), testhooks.installed("after_cancel.decide", cancel_now):
        job = asyncio.create_task(runtime.execute(claimed))
        await asyncio.wait_for(started.wait(), 10)
        job.cancel()  # what the worker's shutdown does once the grace period is over
        await asyncio.gather(job, return_exceptions=True)
    task = await row(runtime, task_id)
    assert task.status == "canceled", task
    assert task.attempts == 1


async def test_cancel_meeting_a_task_moving_from_running_to_retrying_wins(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "boom", {"message": "no"}, max_retries=3)
    claimed = await claim(runtime, task_id)
    key = (claimed.id, claimed.generation, claimed.attempts)

    async def fail_attempt_now() -> None:
        await runtime._finish_failed(key, "boom", "attempt failed")
        assert (await row(runtime, task_id)).status == "retrying"

    with testhooks.installed("cancel_task.decide", fail_attempt_now):
        try:
            task = await cancel(runtime, task_id)
        except ConflictError as exc:
            pytest.fail(f"cancel of a retrying task refused: {exc}")
    assert task.status == "canceled"
    assert (await row(runtime, task_id)).status == "canceled"


@pytest.mark.parametrize(
    ("message", "stored"),
    [("bad{NUL}byte end", "bad\\x00byte end"), ("bad{NUL}byte {LONE_SURROGATE} end", "bad\\x00byte \\ud800 end")],
)
async def test_nul_byte_in_a_handler_error_is_recorded_sanitised(
    runtime: WorkerRuntime, message: str, stored: str
) -> None:
    task_id = await submit(runtime, "boom", {"message": message}, max_retries=1)
    claimed = await claim(runtime, task_id)
    # Before the fix the write was retried forever with the task `running`: this would time out.
    await asyncio.wait_for(runtime.execute(claimed), 10)
    task = await row(runtime, task_id)
    assert task.status == "retrying"
    assert task.error is not None and "\x00" not in task.error
    assert stored in task.error
    events = [e.detail or "" async for e in _events(runtime, task_id)]
    assert any(stored in d for d in events)


async def _events(rt: WorkerRuntime, task_id: uuid.UUID) -> AsyncIterator[Any]:
    async with rt.sessions() as session:
        for event in await service.list_events(session=session, task_id=task_id):
            yield event


async def test_completion_after_an_accepted_cancel_is_canceled_even_if_redis_lost_the_abort(
    runtime: WorkerRuntime,
) -> None:
    task_id = await submit(runtime, "call", {})
    claimed = await claim(runtime, task_id)

    async def cancel_and_lose_the_abort() -> None:
        assert (await cancel(runtime, task_id)).status == "running"
        await runtime.redis.flushdb()  # the abort request is gone; only Postgres remembers the cancel

    with testhooks.installed("test.handler", cancel_and_lose_the_abort):
        await asyncio.wait_for(runtime.execute(claimed), 10)
    task = await row(runtime, task_id)
    assert task.status == "canceled", task
    # The attempt did finish: its result is kept, for the record of what ran.
    assert task.result == {"ok": True}
    assert task.finished_at is not None


async def test_worker_cancels_its_running_task_when_postgres_says_so(runtime: WorkerRuntime) -> None:
    task_id = await submit(runtime, "call", {})
    claimed = await claim(runtime, task_id)
    started = asyncio.Event()

    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    with testhooks.installed("test.handler", block):
        job = asyncio.create_task(runtime.execute(claimed))
        await asyncio.wait_for(started.wait(), 10)
        assert (await cancel(runtime, task_id)).status == "running"
        await runtime.redis.flushdb()
        assert await runtime.check_cancels() == 1
        await asyncio.wait_for(asyncio.gather(job, return_exceptions=True), 10)
    task = await row(runtime, task_id)
    assert task.status == "canceled", task


async def test_shutdown_requeues_beyond_the_limit_spend_attempts(runtime: WorkerRuntime) -> None:
    assert runtime.settings.max_shutdown_requeues == 2
    task_id = await submit(runtime, "call", {}, max_retries=1)
    started = asyncio.Event()

    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    seen = []
    with testhooks.installed("test.handler", block):
        for _ in range(4):
            claimed = await claim(runtime, task_id)
            started.clear()
            job = asyncio.create_task(runtime.execute(claimed))
            await asyncio.wait_for(started.wait(), 10)
            job.cancel()  # the worker shut down with the task still running
            await asyncio.gather(job, return_exceptions=True)
            task = await row(runtime, task_id)
            seen.append((task.status, task.attempts))
            if task.status == "failed":
                break
    # Two free requeues; the third spends attempt 1 of 2, the fourth the last one.
    assert seen == [("pending", 0), ("pending", 0), ("retrying", 1), ("failed", 2)], seen
    assert task.error is not None and "shut down" in task.error


def test_worker_process_aborts_a_task_canceled_in_postgres_only(stack_factory: StackFactory) -> None:
    """A real worker: the cancel is in Postgres (what an accepted cancel leaves when Redis lost its abort request,
    by a flush or a restart), and the worker still aborts the running task within a lease tick."""
    with stack_factory(workers=1) as stack:
        task = stack.submit("sleep", {"duration_ms": 60_000})
        stack.wait_status(task["id"], "running")
        stack.sql("UPDATE task SET cancel_requested = TRUE WHERE id = %s", (task["id"],))
        done = stack.wait_status(task["id"], {"canceled", "completed", "failed"}, timeout=10)
        assert done["status"] == "canceled", done


def test_a_flapping_scale_down_cannot_restart_a_task_forever(stack_factory: StackFactory) -> None:
    """Real workers SIGTERMed one after the other (a flapping scale) while a long task runs: the first
    TASKPROC_MAX_SHUTDOWN_REQUEUES requeues are free, the next one spends the attempt (here the last one)."""
    env = {"TASKPROC_SHUTDOWN_GRACE_S": "0.5", "TASKPROC_MAX_SHUTDOWN_REQUEUES": "1"}
    with stack_factory(workers=0, env=env) as stack:
        task = stack.submit("sleep", {"duration_ms": 120_000}, timeout_s=600, max_retries=0)
        seen = []
        for _ in range(2):
            worker = stack.start_worker()
            stack.wait_status(task["id"], "running", timeout=30)
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker.tail()
            stack.workers.remove(worker)
            now = stack.get(task["id"])
            seen.append((now["status"], now["attempts"]))
        assert seen == [("pending", 0), ("failed", 1)], seen
        assert "TASKPROC_MAX_SHUTDOWN_REQUEUES" in (stack.get(task["id"])["error"] or "")
        assert stack.sql("SELECT shutdown_requeues FROM task WHERE id = %s", (task["id"],)) == [(2,)]
