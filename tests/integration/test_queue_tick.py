"""The worker's one Redis round trip (queue.TICK_SCRIPT), against the session's real Redis.

The end-to-end tests show priority order, delays and cancels through running processes; these pin down the
script's own contract: what it takes, in which order, where taken jobs go, and that concurrent ticks never
hand one job to two workers.
"""

from __future__ import annotations

import asyncio
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
        yield client
    finally:
        await client.aclose()
        servers.give_back_redis_db(index)


def item(priority: Priority, run_at_ms: int, generation: int = 1) -> queue.Enqueue:
    # The embedded Redis runs on this machine, so its clock is ours: a due time here is a delay from now.
    return queue.Enqueue(
        task_id=uuid.uuid4(), generation=generation, priority=priority, delay_ms=run_at_ms - queue.now_ms()
    )


def jid(i: queue.Enqueue) -> str:
    return queue.job_id(i.task_id, i.generation)


async def test_takes_at_most_the_free_slots_high_priority_first_then_oldest(r: Redis) -> None:
    now = queue.now_ms()
    low_old = item(Priority.low, now - 5000)
    normal_new = item(Priority.normal, now)
    normal_old = item(Priority.normal, now - 1000)
    high_new = item(Priority.high, now)
    await queue.enqueue(r, [low_old, normal_new, normal_old, high_new])
    ticker = queue.Ticker(r)

    first = await ticker.tick(3)
    assert [j for j, _ in first.taken] == [jid(high_new), jid(normal_old), jid(normal_new)]
    assert [queue.priority_of_score(score) for _, score in first.taken] == [
        Priority.high,
        Priority.normal,
        Priority.normal,
    ]
    # Taken jobs leave the queue for the running set (which KEDA counts too), scored by when they were taken.
    assert await queue.queue_sizes(r) == (1, 0, 3)
    taken_at = await r.zscore(queue.RUNNING_KEY, jid(high_new))
    assert taken_at is not None and abs(taken_at - queue.now_ms()) < 5000

    nothing = await ticker.tick(0)
    assert nothing.taken == []
    rest = await ticker.tick(10)
    assert [j for j, _ in rest.taken] == [jid(low_old)]
    assert await queue.queue_sizes(r) == (0, 0, 4)

    await queue.release(r, [jid(high_new), jid(low_old)])
    assert await queue.queue_sizes(r) == (0, 0, 2)


async def test_due_deferred_jobs_are_promoted_with_their_band_and_the_next_due_time_is_returned(r: Redis) -> None:
    now = queue.now_ms()
    later = item(Priority.low, now + 60_000)
    await queue.enqueue(r, [later])
    # Deferred entries are due when their score is; write one that fell due a moment ago.
    due = item(Priority.high, now - 10)
    await r.zadd(queue.DEFERRED_KEY, {f"high|{jid(due)}": now - 10})
    ready_low = item(Priority.low, now - 20_000)
    await queue.enqueue(r, [ready_low])

    tick = await queue.Ticker(r).tick(1)
    assert tick.promoted == 1
    assert tick.next_due_in_ms is not None and 55_000 < tick.next_due_in_ms <= 60_000
    # Promoted in the same script call, and its band puts it ahead of an older low-priority job.
    assert [j for j, _ in tick.taken] == [jid(due)]
    due_at = await r.zscore(queue.DEFERRED_KEY, f"low|{jid(later)}")
    assert due_at is not None and abs(due_at - (now + 60_000)) < 5000


async def test_abort_requests_are_returned_until_forgotten_and_dropped_once_stale(r: Redis) -> None:
    running = item(Priority.normal, queue.now_ms())
    await queue.request_abort(r, running.task_id, running.generation)
    stale = f"{uuid.uuid4()}.1"
    await r.zadd(queue.ABORT_KEY, {stale: queue.now_ms() - queue.ABORT_MAX_AGE_MS - 1000})
    ticker = queue.Ticker(r)

    tick = await ticker.tick(0)
    assert tick.aborts == [jid(running)]
    assert await r.zscore(queue.ABORT_KEY, stale) is None
    assert (await ticker.tick(0)).aborts == [jid(running)]  # not ours to forget until acted on
    await queue.forget_aborts(r, [jid(running)])
    assert (await ticker.tick(0)).aborts == []


async def test_concurrent_ticks_never_hand_out_a_job_twice(r: Redis) -> None:
    now = queue.now_ms()
    items = [item(Priority.normal, now - i) for i in range(2000)]
    await queue.enqueue(r, items)
    tickers = [queue.Ticker(r) for _ in range(8)]

    async def drain(ticker: queue.Ticker) -> list[str]:
        got: list[str] = []
        while True:
            tick = await ticker.tick(7)
            if not tick.taken:
                return got
            got.extend(j for j, _ in tick.taken)

    results = await asyncio.gather(*(drain(t) for t in tickers))
    taken = [j for got in results for j in got]
    assert len(taken) == len(set(taken)) == 2000
    assert set(taken) == {jid(i) for i in items}
    assert await queue.queue_sizes(r) == (0, 0, 2000)


async def test_deferring_again_moves_taken_jobs_back_out_of_the_running_set(r: Redis) -> None:
    job = item(Priority.high, queue.now_ms())
    await queue.enqueue(r, [job])
    [(taken, score)] = (await queue.Ticker(r).tick(1)).taken
    await queue.defer_again(r, [(taken, queue.priority_of_score(score))], delay_ms=2000)
    assert await queue.queue_sizes(r) == (0, 1, 0)
    due = await r.zscore(queue.DEFERRED_KEY, f"high|{taken}")
    assert due is not None and due > queue.now_ms()
