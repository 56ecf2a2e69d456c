"""The bulk operations' background batches, in the API processes (started from the API's lifespan).

Each step reads the oldest running operation and the next BATCH matching tasks after its cursor (newest first,
by the list's index), then applies the action to them in one statement (store.bulk_step): it takes the
operation's row only if no other replica holds it and its cursor is still where the page was read, applies the
action (each row a compare-and-set on its status, as the single-task operations are) and saves the counts and
the new cursor, all in autocommit. So no lock outlives that one statement (a transaction held open across round
trips would keep submits waiting on the counters' rows whenever the event loop is busy), and two replicas never
apply one batch twice. Redis is told after the commit. Between steps the loop yields (PAUSE_S).
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
from taskproc.services.tasks import redis_follow_up

log = logging.getLogger("taskproc.bulk")

BATCH = 100  # tasks per step: a few ms of locks and of the event loop's time
PAUSE_S = 0.01  # between steps of a running operation
IDLE_S = 0.5  # between looks for work when there is none


class BulkRunner:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], redis: Redis, batch: int = BATCH) -> None:
        self.sessions = sessions
        self.redis = redis
        self.batch = batch

    async def step(self) -> bool:
        """Process one batch of one operation; False when no operation has work left."""
        async with self.sessions() as session:
            # Autocommit: each statement below is its own transaction, the step's writes one statement.
            conn = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            op = await store.next_bulk(conn)
            if op is None:
                return False
            after = None if op.cursor_at is None or op.cursor_id is None else (op.cursor_at, op.cursor_id)
            page = await store.matching_page(
                conn,
                service.task_filter(BulkFilter.model_validate(op.filter)),
                cutoff=op.cutoff,
                after=after,
                limit=self.batch,
            )
            finished = len(page) < self.batch
            await testhooks.point("bulk.before_step")
            rows = await store.bulk_step(
                conn,
                op,
                [task_id for _, task_id in page],
                last=page[-1] if page else None,
                finished=finished,
                detail=service.event_detail(op),
            )
        await redis_follow_up(self.redis, op.action, rows)
        if finished:
            log.info("bulk operation finished", extra={"bulk_id": str(op.id), "action": op.action})
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
