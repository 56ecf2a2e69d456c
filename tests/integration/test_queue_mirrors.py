"""The Redis side of per-key limits and of the pause (taskproc.queue), against the session's real Redis, one
script call at a time: held jobs, their return when room frees up, tokens, per-queue running sets and a paused
queue's ready jobs kept out of the set KEDA counts. Postgres, the judge of both, is in test_key_limits.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from taskproc import queue
from taskproc.models import Priority

from support import Servers


@pytest.fixture
async def r(servers: Servers) -> AsyncIterator[Redis]:
    index = servers.take_redis_db()
    client = Redis.from_url(servers.redis.url.rsplit("/", 1)[0] + f"/{index}")
    try:
        await client.flushdb()
        yield client
    finally:
        await client.aclose()
        servers.give_back_redis_db(index)


def job(key: str | None = None, *, q: str = "default", delay_ms: int = 0) -> queue.Enqueue:
    return queue.Enqueue(
        task_id=uuid.uuid4(), generation=1, priority=Priority.normal, delay_ms=delay_ms, queue=q, key=key
    )


def jid(j: queue.Enqueue) -> str:
    return queue.job_id(j.task_id, j.generation)


async def test_a_key_without_room_is_held_aside_and_comes_back_when_its_job_is_released(r: Redis) -> None:
    await queue.set_limits(r, {"a": queue.KeyLimit(1, None, None)})
    # Due a millisecond apart: FIFO is by due time (the same due time orders by job id).
    a1, a2, a3, free = job("a", delay_ms=-4), job("a", delay_ms=-3), job("a", delay_ms=-2), job(delay_ms=-1)
    await queue.enqueue(r, [a1, a2, a3])
    await queue.enqueue(r, [free])
    ticker = queue.Ticker(r)
    tick = await ticker.tick(10)
    # a1 runs, a2 and a3 are held, and the unkeyed job behind them is taken in the same call.
    assert [j for j, _ in tick.taken] == [jid(a1), jid(free)] and tick.held == 2
    assert await r.zcard(queue.QUEUE_KEY) == 0
    assert await queue.held_count(r, "a") == 2
    assert await r.zscore(f"{queue.KEY_RUNNING_PREFIX}a", jid(a1)) is not None
    assert await r.zcard(queue.queue_running_key("default")) == 2
    again = await ticker.tick(10)
    assert again.taken == [] and again.held == 0, "held jobs are not looked at while the key has no room"
    # A later job of the key joins the held ones at once, behind them.
    a4 = job("a", delay_ms=-1)
    await queue.enqueue(r, [a4])
    assert await queue.held_count(r, "a") == 3 and await r.zcard(queue.QUEUE_KEY) == 0
    await queue.release(r, [jid(a1), jid(free)], ["default", "default"])
    assert await r.zcard(queue.queue_running_key("default")) == 0 and await r.zcard(queue.RUNNING_KEY) == 0
    assert await r.hget(queue.JOBKEY_KEY, jid(a1)) is None, "a released job's key is forgotten"
    tick = await ticker.tick(10)
    assert [j for j, _ in tick.taken] == [jid(a2)], "the oldest held job of the key, one slot"
    assert await queue.held_count(r, "a") == 2
    # Deleting a held job (its task was canceled) removes it from the held set.
    await queue.remove_jobs(r, [(a4.task_id, 1, Priority.normal, "default")])
    assert await queue.held_count(r, "a") == 1
    # Raising the limit returns the rest at once.
    await queue.set_limits(r, {"a": queue.KeyLimit(5, None, None)})
    tick = await ticker.tick(10)
    assert [j for j, _ in tick.taken] == [jid(a3)] and await queue.held_count(r, "a") == 0
    assert await r.zscore(queue.HELD_KEYS_KEY, "a") is None


async def test_a_rate_hands_out_tokens_and_holds_the_rest_until_the_next_one(r: Redis) -> None:
    await queue.set_limits(r, {"r": queue.KeyLimit(None, 2, 3600.0)})
    jobs = [job("r", delay_ms=i - 10) for i in range(4)]
    await queue.enqueue(r, jobs)
    tick = await queue.Ticker(r).tick(10)
    assert [j for j, _ in tick.taken] == [jid(jobs[0]), jid(jobs[1])] and tick.held == 2
    due = await r.zscore(queue.HELD_KEYS_KEY, "r")
    assert due is not None and due - await queue.redis_now_ms(r) > 1_700_000, "the next token in 1800 s"
    assert tick.next_due_in_ms is not None and tick.next_due_in_ms > 1_700_000


async def test_a_job_refused_by_postgres_is_parked_for_its_key(r: Redis) -> None:
    a = job("a")
    await queue.enqueue(r, [a])
    tick = await queue.Ticker(r).tick(10)
    [(taken, score)] = tick.taken
    await queue.park(r, [(taken, "default", "a", score)], wait_ms=50_000)
    assert await r.zcard(queue.RUNNING_KEY) == 0 and await queue.held_count(r, "a") == 1
    assert await queue.queue_sizes(r) == (1, 0, 0), "a held job is still backlog"
    # Without a limit in Redis, the next look at the key returns it (Postgres decides again).
    await r.zadd(queue.HELD_KEYS_KEY, {"a": 0})
    assert [j for j, _ in (await queue.Ticker(r).tick(10)).taken] == [taken]


async def test_a_paused_queue_keeps_its_ready_jobs_out_of_the_set_keda_counts(r: Redis) -> None:
    old, later = job(q="reports", delay_ms=-10), job(q="reports", delay_ms=50)
    await queue.enqueue(r, [old, later])
    ready = queue.ready_key("reports")
    assert await r.zcard(ready) == 1
    await queue.set_paused(r, "reports", paused=True)
    assert await r.zcard(ready) == 0 and await r.zcard(queue.paused_key("reports")) == 1
    new = job(q="reports")
    await queue.enqueue(r, [new])
    assert await r.zcard(ready) == 0 and await r.zcard(queue.paused_key("reports")) == 2
    # A job falling due while paused goes to the paused set too; the sizes count them as ready.
    await queue.promote_due(r)
    await r.zadd(queue.deferred_key("reports"), {f"normal|{jid(later)}": await queue.redis_now_ms(r)})
    await queue.promote_due(r)
    assert await r.zcard(ready) == 0 and await r.zcard(queue.paused_key("reports")) == 3
    assert (await queue.sizes_by_queue(r))["reports"] == queue.QueueSizes(ready=3, deferred=0)
    assert await queue.ready_position(r, "reports", old.task_id, 1) == 0
    await queue.set_paused(r, "reports", paused=False)
    assert await r.zcard(ready) == 3 and not await r.exists(queue.paused_key("reports"))
    tick = await queue.Ticker(r, ["reports"]).tick(1)
    assert [j for j, _ in tick.taken] == [jid(old)], "FIFO held across the pause"
    assert await r.zcard(queue.queue_running_key("reports")) == 1


async def test_sync_makes_the_mirrors_equal_postgres_after_a_flush(r: Redis) -> None:
    await queue.set_limits(r, {"a": queue.KeyLimit(1, None, None), "b": queue.KeyLimit(None, 1, 1.0)})
    await queue.set_paused(r, "x", paused=True)
    assert await queue.sync_paused(r, ["y"]) == 2, "x resumed, y paused"
    assert await r.smembers(queue.PAUSED_KEY) == {b"y"}
    await queue.set_limits(r, {"b": queue.KeyLimit(None, 2, 1.0)}, complete=True)
    assert await r.hgetall(queue.LIMITS_KEY) == {b"b": b"|2|1.0"}
    await r.flushdb()
    assert await queue.sync_paused(r, ["y"]) == 1
    assert await r.smembers(queue.PAUSED_KEY) == {b"y"}
