"""Limits service: per-key concurrency and rate limits (PUT/GET/DELETE /api/v1/limits), over taskproc.store.

Postgres holds each key's limit and running count (table task_key, migration 0008) and enforces both in the
claim itself; Redis mirrors the limits so that workers hold a saturated key's jobs aside instead of taking them
(taskproc.queue). The mirror is written after the commit and repaired every few seconds by
taskproc.maintenance.Maintenance.sync_redis, so a lost write or a Redis flush only costs a few refused claims,
never a limit exceeded.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import queue, store
from taskproc.errors import InvalidInputError, NotFoundError
from taskproc.models import LimitOrigin, LimitPublic, LimitPut, Rate
from taskproc.services.tasks import _redis_best_effort

log = logging.getLogger("taskproc.service")


def to_public(row: store.KeyRow) -> LimitPublic:
    rate = None
    if row.rate_count is not None and row.rate_per_s is not None:
        rate = Rate(count=row.rate_count, per_s=row.rate_per_s)
    return LimitPublic(
        key=row.key,
        max_running=row.max_running,
        rate=rate,
        running=row.running,
        tokens=None if row.tokens_now is None else round(row.tokens_now, 3),
        origin=LimitOrigin(row.origin),
        updated_at=row.updated_at,
    )


async def put_limit(*, session: AsyncSession, redis: Redis, key: str, limit_in: LimitPut) -> LimitPublic:
    """Set the key's limit; tasks of the key already running count against it at once."""
    if limit_in.max_running is None and limit_in.rate is None:
        raise InvalidInputError(field=(), msg="give max_running, rate or both", type="empty_limit")
    rate = limit_in.rate
    row = await store.put_limit(
        session,
        key,
        max_running=limit_in.max_running,
        rate_count=None if rate is None else rate.count,
        rate_per_s=None if rate is None else rate.per_s,
    )
    await session.commit()
    await _redis_best_effort("limit mirror", queue.set_limits(redis, {key: queue.KeyLimit.of(row)}))
    return to_public(row)


async def get_limit(*, session: AsyncSession, key: str) -> LimitPublic:
    row = await store.get_key(session, key)
    if row is None:
        raise NotFoundError(f"no limit for key {key!r}")
    return to_public(row)


async def list_limits(*, session: AsyncSession) -> list[LimitPublic]:
    return [to_public(r) for r in await store.list_limits(session)]


async def delete_limit(*, session: AsyncSession, redis: Redis, key: str) -> None:
    """Drop the key's limit (a task type's default comes back with the type's next submit)."""
    if not await store.delete_limit(session, key):
        raise NotFoundError(f"no limit for key {key!r}")
    await session.commit()
    await _redis_best_effort("limit mirror", queue.set_limits(redis, {key: None}))
