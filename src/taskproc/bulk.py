"""The bulk operations' background batches, in the API processes (started from the API's lifespan).

Each step is one short transaction: lock the oldest running operation (SKIP LOCKED, so several API replicas
share the work without doing any batch twice), read the next BATCH matching tasks after the operation's cursor
(newest first, by the list's index), apply the action to them (each row a compare-and-set on its status, as
the single-task operations are), and save the counts and the cursor. Redis is told after the commit. Between
steps the loop yields (PAUSE_S), so submits and reads never wait behind a bulk operation for long: a batch's
row locks live for one small statement's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskproc import store, testhooks
from taskproc.config import Settings
from taskproc.maintenance import TRANSIENT
from taskproc.models import BulkFilter
from taskproc.services import bulk as service

log = logging.getLogger("taskproc.bulk")

BATCH = 200  # tasks per step: a few ms of locks and of the event loop's time
PAUSE_S = 0.005  # between steps of a running operation
IDLE_S = 0.5  # between looks for work when there is none


class BulkRunner:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], redis: Redis, batch: int = BATCH) -> None:
        self.sessions = sessions
        self.redis = redis
        self.batch = batch

    async def step(self) -> bool:
        """Process one batch of one operation; False when no operation has work left (or all are taken)."""
        async with self.sessions() as session:
            op = await store.next_bulk(session)
            if op is None:
                await session.rollback()
                return False
            after = None if op.cursor_at is None or op.cursor_id is None else (op.cursor_at, op.cursor_id)
            page = await store.matching_page(
                session,
                service.task_filter(BulkFilter.model_validate(op.filter)),
                cutoff=op.cutoff,
                after=after,
                limit=self.batch,
            )
            ids = [task_id for _, task_id in page]
            done, rows = await service.apply_batch(session, op, ids) if ids else (0, [])
            await testhooks.point("bulk.before_commit")
            finished = len(page) < self.batch
            await store.advance_bulk(
                session,
                op.id,
                done=done,
                failed=len(ids) - done,
                cursor=page[-1] if page else None,
                finished=finished,
            )
            await session.commit()
        await service.after_batch(self.redis, op.action, rows)
        if finished:
            log.info(
                "bulk operation finished",
                extra={"bulk_id": str(op.id), "action": op.action, "count": op.done + done},
            )
        return True

    async def run(self) -> None:
        while True:
            try:
                busy = await self.step()
            except TRANSIENT as exc:
                log.warning("bulk operations paused, postgres or redis unavailable: %s", type(exc).__name__)
                busy = False
            except Exception:
                log.exception("bulk operation step failed")
                busy = False
            await asyncio.sleep(PAUSE_S if busy else IDLE_S)


@asynccontextmanager
async def run_in_api(
    settings: Settings, redis: Redis, sessions: async_sessionmaker[AsyncSession] | None
) -> AsyncIterator[BulkRunner | None]:
    """The API process's bulk loop while the block runs (nothing if TASKPROC_API_MAINTENANCE is off: then no
    process of this API runs maintenance, and bulk operations wait for one that does)."""
    if sessions is None or not settings.api_maintenance:
        yield None
        return
    runner = BulkRunner(sessions=sessions, redis=redis)
    loop = asyncio.create_task(runner.run(), name="taskproc-bulk")
    try:
        yield runner
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
