"""Queue service: what the API does with named queues (list with counts, pause, resume), over taskproc.store.

The pause lives in Postgres (table `queue`, migration 0007) and the claim statement reads it, so a pause holds
across restarts of every process and a loss of Redis. Redis mirrors it (a paused queue's ready jobs wait in a set
of their own, which KEDA does not count) and wakes idle workers on a resume.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import queue, store
from taskproc.models import QueuePublic
from taskproc.services.tasks import _redis_best_effort

log = logging.getLogger("taskproc.service")


def _public(row: store.QueueRow, sizes: queue.QueueSizes | None) -> QueuePublic:
    oldest = None if row.oldest_due_at is None else max(0.0, (row.now - row.oldest_due_at).total_seconds())
    return QueuePublic(
        name=row.name,
        paused=row.paused,
        paused_at=row.paused_at,
        # Redis's sets tell due from delayed; without Redis, Postgres's counters tell pending from retrying.
        ready=row.pending if sizes is None else sizes.ready,
        deferred=row.retrying if sizes is None else sizes.deferred,
        running=row.running,
        oldest_ready_age_s=oldest,
        workers=row.workers,
    )


async def list_queues(*, session: AsyncSession, redis: Redis) -> list[QueuePublic]:
    rows = await store.list_queues(session)
    try:
        sizes: dict[str, queue.QueueSizes] | None = await queue.sizes_by_queue(redis)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("redis unavailable, queue sizes from postgres: %s", type(exc).__name__)
        sizes = None
    return [_public(r, None if sizes is None else sizes.get(r.name, queue.QueueSizes(0, 0))) for r in rows]


async def _get(session: AsyncSession, redis: Redis, name: str) -> QueuePublic:
    for q in await list_queues(session=session, redis=redis):
        if q.name == name:
            return q
    # A queue with no row, no waiting task and no running one: nothing to count, nothing paused.
    return QueuePublic(name=name, paused=False, ready=0, deferred=0, running=0, oldest_ready_age_s=None, workers=0)


async def pause_queue(*, session: AsyncSession, redis: Redis, name: str) -> QueuePublic:
    """From the commit on, no claim takes a task of this queue (running ones finish); workers stop taking its
    jobs from Redis at their next heartbeat."""
    await store.set_queue_paused(session, name, paused=True)
    await session.commit()
    # The queue's ready jobs move aside in Redis, so KEDA does not scale up for them (sync_redis repairs a miss).
    await _redis_best_effort("pause mirror", queue.set_paused(redis, name, paused=True))
    return await _get(session, redis, name)


async def resume_queue(*, session: AsyncSession, redis: Redis, name: str) -> QueuePublic:
    await store.set_queue_paused(session, name, paused=False)
    await session.commit()
    await _redis_best_effort("resume mirror", queue.set_paused(redis, name, paused=False))
    return await _get(session, redis, name)
