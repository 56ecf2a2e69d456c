"""Housekeeping that keeps Redis in step with Postgres, run by API and worker processes alike.

- The reconciler: waiting tasks whose job Redis lost (flushed, restarted empty, an enqueue that never
  happened) are enqueued again, and jobs a worker took but never claimed go back to the queue.
- Promotion of due deferred jobs into arq:queue, the key KEDA counts.

Workers promote in every loop iteration anyway; API processes run both as well (TASKPROC_API_MAINTENANCE), so
with workers scaled to zero a task still becomes visible where KEDA looks and is not stranded.

One process at a time reconciles, whichever it is: the pass runs under the transaction-level advisory lock
RECONCILE_LOCK. Where it got to is kept in Postgres (table reconcile_cursor), so the next pass carries on from
there even when another process takes the lock next. Promotion needs no lock: it is one atomic Redis script.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import sqlalchemy.exc as sa_exc
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskproc import queue, store
from taskproc.config import Settings
from taskproc.models import WAITING, TaskStatus

log = logging.getLogger("taskproc.maintenance")

# Failures that a retry can fix: the database or Redis unreachable, restarting, or too slow to answer (a
# statement or lock timeout and a deadlock are OperationalErrors too). Not a value Postgres refuses (DataError,
# an encoding error): retrying that would repeat the same refusal forever.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # no pool connection free in time
    RedisError,
    OSError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for the failures of TRANSIENT, and for any error after which SQLAlchemy dropped the connection."""
    return isinstance(exc, TRANSIENT) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


RECONCILE_LOCK = store.RECONCILE_LOCK
# The reconciler scans (a bounded part of) the waiting tasks on a process's first pass and then on every such
# pass (about every 2 minutes with the default 15 s), besides whenever the counts disagree.
FULL_SCAN_EVERY = 8
# Rows per page of the reconciler's scan in API processes (workers use 1000).
API_PAGE = 200
# How often API processes (and workers) copy limits and pauses from Postgres to Redis again.
SYNC_EVERY_S = 5.0
# API processes promote due deferred jobs this often: KEDA polls every 30 s by default, so this is plenty.
PROMOTE_EVERY_S = 1.0
_ZERO = store.NIL_ID


async def every(interval_s: float, fn: Any, name: str, *, jitter: float = 0.1) -> None:
    """Run `fn` forever every interval; transient failures are logged and retried next round."""
    me = asyncio.current_task()
    while True:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except TRANSIENT as exc:
            log.warning("%s failed, will retry: %s", name, type(exc).__name__)
        except Exception:
            log.exception("%s crashed, will retry", name)
        if me is not None and me.cancelling():
            # A cancel delivered while `fn` ran was swallowed below us (a connection attempt cut short comes back
            # as a connection error): honour it, or the loop would outlive its owner's shutdown.
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s * (1 + random.uniform(-jitter, jitter)))


class Maintenance:
    """The reconciler and the promotion of due jobs, for one process."""

    def __init__(self, *, settings: Settings, sessions: async_sessionmaker[AsyncSession], redis: Redis) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self._passes = 0

    async def promote_due(self) -> int:
        return await queue.promote_due(self.redis)

    async def sync_redis(self) -> None:
        """Make Redis's mirrors of Postgres state equal it again (after a flush, or a write lost after a commit):
        every key's limit (migration 0008) and which queues are paused (migration 0007)."""
        async with self.sessions() as session:
            rows = await store.list_limits(session)
            paused = await store.paused_queues(session)
        limits = {r.key: queue.KeyLimit.of(r) for r in rows}
        await queue.set_limits(self.redis, limits, complete=True)
        await queue.sync_paused(self.redis, paused)

    async def reconcile(self, *, batch_size: int = 1000, max_rows: int = 200_000) -> int:
        """Make Redis agree with Postgres again; returns how many jobs were (re-)enqueued.

        - A waiting task whose job is nowhere in Redis is enqueued again.
        - A job a worker took off the queue but never claimed (the worker was killed in between) goes back to
          the queue once it has been taken for a whole lease.
        - Jobs left in the running set by tasks that have moved on are deleted, so they don't count as backlog.

        Scanning the waiting tasks costs Redis lookups in proportion to the rows scanned, so it only runs when
        Redis holds fewer jobs than Postgres has tasks waiting or running, and every FULL_SCAN_EVERY-th pass
        regardless (a stale extra entry could hide a missing one). A pass scans at most `max_rows` rows, from
        where the previous pass (of any process) stopped, wrapping around at the end: with more waiting tasks
        than that, every task is still looked at within a few passes. Tasks changed in the last two seconds are
        skipped, since their enqueue may still be on its way.
        """
        self._passes += 1
        full = self._passes % FULL_SCAN_EVERY == 1
        enqueued = 0
        async with self.sessions() as session:
            if not await store.try_reconcile_lock(session):
                return 0
            requeued = await self._sweep_running(session, self.settings.lease_s * 1000)
            if full or await self._redis_short(session):
                enqueued = await self._scan_waiting(session, batch_size=batch_size, max_rows=max_rows)
            await session.commit()
        if enqueued or requeued:
            log.warning("reconciler re-enqueued tasks missing from redis", extra={"count": enqueued + requeued})
        return enqueued + requeued

    async def _scan_waiting(self, session: AsyncSession, *, batch_size: int, max_rows: int) -> int:
        start = await store.reconcile_cursor(session)
        last, wrapped, scanned, enqueued = start, False, 0, 0
        while scanned < max_rows:
            limit = min(batch_size, max_rows - scanned)
            # After wrapping around, only up to where this pass began: each row at most once per pass.
            rows = await store.reconcile_page(session, after=last, limit=limit, wrapped=wrapped, start=start)
            if rows:
                # Let requests in between pages: a pass over a large backlog is many pages.
                await asyncio.sleep(0)
                scanned += len(rows)
                last = rows[-1].id
                states = await queue.job_states(self.redis, [(r.id, r.generation, r.priority, r.queue) for r in rows])
                missing = [
                    r for r, state in zip(rows, states, strict=True) if not state.queued and state.taken_ms_ago is None
                ]
                if missing:
                    await queue.enqueue(self.redis, [queue.entry(r, r.db_now) for r in missing])
                    enqueued += len(missing)
            if len(rows) < limit:
                if wrapped or start == _ZERO:
                    last = _ZERO  # a full circle: the next pass starts at the beginning
                    break
                wrapped, last = True, _ZERO
        await store.save_reconcile_cursor(session, last)
        return enqueued

    async def _redis_short(self, session: AsyncSession) -> bool:
        """True when Redis holds fewer jobs than Postgres has tasks waiting or running (counters, not a scan)."""
        expected = await store.live_count(session)
        ready, deferred, running = await queue.queue_sizes(self.redis)
        return bool(ready + deferred + running < expected)

    async def _sweep_running(self, session: AsyncSession, abandoned_ms: float, *, pages: int = 20) -> int:
        """Jobs in the running set for over a lease: back to the queue if their task still waits, else deleted."""
        requeue: list[queue.Enqueue] = []
        obsolete: list[str] = []
        seen = 0
        for _ in range(pages):
            jobs = await queue.taken_before(self.redis, older_than_ms=abandoned_ms, start=seen, limit=1000)
            if not jobs:
                break
            seen += len(jobs)
            rows = await store.job_states(session, [task_id for task_id, _ in jobs])
            current = {r.id: r for r in rows}
            for task_id, generation in jobs:
                row = current.get(task_id)
                if row is not None and row.generation == generation:
                    if row.status in WAITING:
                        requeue.append(queue.entry(row, row.db_now))
                        continue
                    if row.status == TaskStatus.running:
                        # A live worker's long task, or the reaper's business once that worker's lease runs out.
                        continue
                # The task is gone, finished, or on a newer generation: this job will never do anything.
                obsolete.append(queue.job_id(task_id, generation))
            if len(jobs) < 1000:
                break
        if requeue:
            await queue.requeue_taken(self.redis, requeue)
            log.warning("jobs taken but never claimed are queued again", extra={"count": len(requeue)})
        if obsolete:
            await queue.release(self.redis, obsolete)
            log.warning("reconciler deleted abandoned jobs of finished tasks", extra={"count": len(obsolete)})
        return len(requeue)


@asynccontextmanager
async def run_in_api(settings: Settings, redis: Redis) -> AsyncIterator[Maintenance | None]:
    """The API process's share of the maintenance, while the block runs (nothing if API maintenance is off).

    It has one Postgres connection of its own (a pool of one, no overflow: the "+ 1" of the API's connection
    budget), so requests that exhaust the API's pool never stall it and it never takes theirs.
    """
    if not settings.api_maintenance:
        yield None
        return
    from taskproc.db import create_engine, create_sessionmaker

    engine = create_engine(settings, pool_size=1, max_overflow=0)
    maintenance = Maintenance(settings=settings, sessions=create_sessionmaker(engine), redis=redis)
    tasks = [
        # Small pages here: each page's Redis lookups are parsed on the event loop that serves requests.
        asyncio.create_task(
            every(settings.reconcile_s, functools.partial(maintenance.reconcile, batch_size=API_PAGE), "reconciler")
        ),
        asyncio.create_task(every(PROMOTE_EVERY_S, maintenance.promote_due, "promotion of due tasks")),
        asyncio.create_task(every(SYNC_EVERY_S, maintenance.sync_redis, "redis mirror of limits and pauses")),
    ]
    try:
        yield maintenance
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await engine.dispose()
