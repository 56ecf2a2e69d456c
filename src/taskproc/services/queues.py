"""Queue service: what the API does with named queues (list with counts, pause, resume), over taskproc.store.

The pause lives in Postgres (table `queue`, migration 0007) and the claim statement reads it, so a pause holds
across restarts of every process and a loss of Redis; Redis is only told to wake idle workers on a resume.
"""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import queue, store
from taskproc.models import QueuePublic
from taskproc.services.tasks import _redis_best_effort


def _public(row: store.QueueRow) -> QueuePublic:
    oldest = None if row.oldest_due_at is None else max(0.0, (row.now - row.oldest_due_at).total_seconds())
    return QueuePublic(
        name=row.name,
        paused=row.paused,
        paused_at=row.paused_at,
        ready=row.pending,
        deferred=row.retrying,
        running=row.running,
        oldest_ready_age_s=oldest,
        workers=row.workers,
    )


async def list_queues(*, session: AsyncSession) -> list[QueuePublic]:
    return [_public(r) for r in await store.list_queues(session)]


async def _get(session: AsyncSession, name: str) -> QueuePublic:
    for row in await store.list_queues(session):
        if row.name == name:
            return _public(row)
    # A queue with no row, no waiting task and no running one: nothing to count, nothing paused.
    return QueuePublic(name=name, paused=False, ready=0, deferred=0, running=0, oldest_ready_age_s=None, workers=0)


async def pause_queue(*, session: AsyncSession, name: str) -> QueuePublic:
    """From the commit on, no claim takes a task of this queue (running ones finish)."""
    await store.set_queue_paused(session, name, paused=True)
    await session.commit()
    return await _get(session, name)


async def resume_queue(*, session: AsyncSession, redis: Redis, name: str) -> QueuePublic:
    await store.set_queue_paused(session, name, paused=False)
    await session.commit()
    await _redis_best_effort("wake-up", queue.wake(redis))
    return await _get(session, name)
