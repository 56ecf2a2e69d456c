"""The scheduler: fires due cron schedules, in the API processes (TASKPROC_SCHEDULER), one process at a time.

Each tick (every TASKPROC_SCHEDULER_TICK_S) reads the schedules due at Postgres's clock and decides each one in
a transaction of its own that holds the advisory lock SCHEDULER_LOCK (so one API process at a time does it,
whichever) and the schedule's row lock:

- `cron.plan` says which passed fire time runs (the latest, if within catchup_s + cron.GRACE_S) and how many
  are missed; the missed ones are counted and recorded as one `missed` row.
- The fire's row in `schedule_fire` (primary key schedule, fire_at) is inserted in the same transaction as its
  task, through the normal create path (`services.tasks.create_tasks`, which commits both and then enqueues
  to Redis). A fire time that already has its row (a restart, another scheduler) creates nothing.
- `overlap: skip` records the fire as skipped while a previous run waits or runs; `cancel_previous` cancels
  those through the normal cancel path first, then fires.

It needs no worker: a fire's task is in Postgres and in arq:queue before any worker runs, so KEDA sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskproc import cron, metrics, store, testhooks
from taskproc.config import Settings
from taskproc.errors import ConflictError, InvalidInputError, NotFoundError
from taskproc.maintenance import TRANSIENT, every
from taskproc.models import Overlap
from taskproc.services import schedules as schedule_service
from taskproc.services import tasks as task_service
from taskproc.store import ScheduleRow
from taskproc.tasks.registry import TaskRegistry

log = logging.getLogger("taskproc.scheduler")

Clock = Callable[[AsyncSession], Awaitable[datetime]]
# Fire records older than the task retention are purged every this many ticks.
PURGE_EVERY_TICKS = 600


@dataclass
class TickResult:
    fired: int = 0
    skipped: int = 0
    missed: int = 0
    duplicate: int = 0
    lock_busy: bool = False


class Scheduler:
    """Fires the due schedules of one database; `clock` (default: Postgres's) is what "now" is."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis,
        registry: TaskRegistry,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.registry = registry
        self.clock: Clock = clock or store.db_now
        self._ticks = 0

    async def tick(self) -> TickResult:
        """Decide every schedule due now; returns what happened."""
        self._ticks += 1
        result = TickResult()
        async with self.sessions() as session:
            if not await store.try_scheduler_lock(session):
                result.lock_busy = True
                return result
            now = await self.clock(session)
            names = await store.due_schedules(session, now)
            await session.rollback()
        for name in names:
            try:
                decided = await self._decide(name, now, result)
            except TRANSIENT:
                raise
            except Exception:
                # One schedule that cannot be decided (a bug, a row edited by hand) must not stop the others.
                log.exception("schedule could not be fired", extra={"schedule": name})
                continue
            if not decided:
                result.lock_busy = True
                break
        if self._ticks % PURGE_EVERY_TICKS == 0 and self.settings.retention_days > 0:
            async with self.sessions() as session:
                await store.purge_fires(session, older_than_s=self.settings.retention_days * 86_400)
                await session.commit()
        return result

    async def _decide(self, name: str, now: datetime, result: TickResult) -> bool:
        """One due schedule, in one transaction (two when previous runs are canceled first); False if another
        process holds the scheduler's lock now."""
        canceled = False
        while True:
            async with self.sessions() as session:
                if not await store.try_scheduler_lock(session):
                    return False
                row = await store.lock_due_schedule(session, name, now)
                if row is None or row.next_run_at is None:
                    return True  # paused, changed or decided meanwhile
                plan = cron.plan(row.cron, cron.zone(row.timezone), row.next_run_at, now, row.catchup_s)
                await self._record_missed(session, row, plan)
                miss_reason = "missed: no scheduler ran at the fire time" if plan.missed else None
                if plan.fire_at is None:
                    await store.advance_schedule(
                        session,
                        name,
                        next_run_at=plan.next_run_at,
                        missed=plan.missed,
                        skipped_at=plan.last_missed,
                        reason=miss_reason,
                    )
                    await session.commit()
                    self._count(name, result, missed=plan.missed)
                    return True
                fire_at = plan.fire_at
                if row.overlap != Overlap.allow.value and not canceled:
                    live = await store.live_schedule_tasks(session, name)
                    if live and row.overlap == Overlap.skip.value:
                        await self._skip(session, name, plan, fire_at, live[-1], result)
                        return True
                    if live:
                        await session.rollback()
                        await self._cancel(session, live)
                        canceled = True
                        continue  # the row lock was given up with the cancels' commits: take it again
                if not await store.record_fire(session, name, fire_at, outcome="fired"):
                    # Decided before (another scheduler, or before a restart): nothing to create, move on.
                    await store.advance_schedule(session, name, next_run_at=plan.next_run_at)
                    await session.commit()
                    result.duplicate += 1
                    return True
                await store.advance_schedule(
                    session,
                    name,
                    next_run_at=plan.next_run_at,
                    fired=1,
                    missed=plan.missed,
                    skipped_at=plan.last_missed,
                    reason=miss_reason,
                )
                await testhooks.point("scheduler.before_create")
                try:
                    await self._create(session, row)
                except InvalidInputError as exc:
                    await session.rollback()
                    await self._refused(name, now, fire_at, str(exc), result)
                    return True
                self._count(name, result, fired=1, missed=plan.missed)
                return True

    async def _record_missed(self, session: AsyncSession, row: ScheduleRow, plan: cron.Plan) -> None:
        if not plan.missed:
            return
        assert plan.last_missed is not None
        assert plan.first_missed is not None
        detail = (
            f"{plan.missed} fire time(s) from {plan.first_missed.isoformat()} to "
            f"{plan.last_missed.isoformat()} passed while no scheduler ran (catchup_s={row.catchup_s:g})"
        )
        await store.record_fire(session, row.name, plan.last_missed, outcome="missed", detail=detail)

    async def _skip(
        self,
        session: AsyncSession,
        name: str,
        plan: cron.Plan,
        fire_at: datetime,
        previous: uuid.UUID,
        result: TickResult,
    ) -> None:
        """overlap=skip while the previous run waits or runs: the fire is recorded as skipped (once) and committed."""
        reason = f"skipped: the previous run {previous} is still waiting or running (overlap: skip)"
        if await store.record_fire(session, name, fire_at, outcome="skipped", detail=reason):
            await store.advance_schedule(
                session,
                name,
                next_run_at=plan.next_run_at,
                skipped=1,
                missed=plan.missed,
                skipped_at=fire_at,
                reason=reason,
            )
            self._count(name, result, skipped=1, missed=plan.missed)
        else:
            await store.advance_schedule(session, name, next_run_at=plan.next_run_at)
            result.duplicate += 1
        await session.commit()

    async def _create(self, session: AsyncSession, row: ScheduleRow) -> None:
        # Commits the fire's row, the schedule's new next_run_at and the task together, then enqueues it.
        await task_service.create_tasks(
            session=session,
            redis=self.redis,
            tasks_in=[schedule_service.task_create(row.task)],
            settings=self.settings,
            registry=self.registry,
            schedule=row.name,
        )

    async def _cancel(self, session: AsyncSession, task_ids: list[uuid.UUID]) -> None:
        for task_id in task_ids:
            with contextlib.suppress(ConflictError, NotFoundError):  # it finished meanwhile: nothing to cancel
                await task_service.cancel_task(session=session, redis=self.redis, task_id=task_id)

    async def _refused(self, name: str, now: datetime, fire_at: datetime, error: str, result: TickResult) -> None:
        """The task body no longer validates (the type's payload model changed): the fire is recorded as
        invalid and the schedule moves on, instead of failing at every tick."""
        log.warning("schedule fire refused: invalid task", extra={"schedule": name, "error": error[:500]})
        async with self.sessions() as session:
            if not await store.try_scheduler_lock(session):
                return
            row = await store.lock_due_schedule(session, name, now)
            if row is None:
                return
            plan = cron.plan(row.cron, cron.zone(row.timezone), row.next_run_at or now, now, row.catchup_s)
            reason = store.storable(f"invalid: {error}", 1000)
            if await store.record_fire(session, name, fire_at, outcome="invalid", detail=reason):
                await store.advance_schedule(
                    session, name, next_run_at=plan.next_run_at, skipped=1, skipped_at=fire_at, reason=reason
                )
                self._count(name, result, skipped=1, outcome="invalid")
            await session.commit()

    @staticmethod
    def _count(
        name: str, result: TickResult, *, fired: int = 0, skipped: int = 0, missed: int = 0, outcome: str = "skipped"
    ) -> None:
        result.fired += fired
        result.skipped += skipped
        result.missed += missed
        for label, n in (("fired", fired), (outcome, skipped), ("missed", missed)):
            if n:
                metrics.SCHEDULE_FIRES.labels(name, label).inc(n)


@asynccontextmanager
async def run_in_api(
    settings: Settings,
    redis: Redis,
    registry: TaskRegistry,
    sessions: async_sessionmaker[AsyncSession] | None,
) -> AsyncIterator[Scheduler | None]:
    """The API process's scheduler loop while the block runs (nothing if TASKPROC_SCHEDULER is off).

    It shares `sessions` (the maintenance engine's one connection) when there are any, so it adds nothing to
    the API's connection budget; otherwise it opens a pool of one of its own (the same "+ 1").
    """
    if not settings.scheduler:
        yield None
        return
    engine = None
    if sessions is None:
        from taskproc.db import create_engine, create_sessionmaker

        engine = create_engine(settings, pool_size=1, max_overflow=0)
        sessions = create_sessionmaker(engine)
    scheduler = Scheduler(settings=settings, sessions=sessions, redis=redis, registry=registry)
    loop = asyncio.create_task(every(settings.scheduler_tick_s, scheduler.tick, "scheduler", jitter=0.05))
    try:
        yield scheduler
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        if engine is not None:
            with contextlib.suppress(Exception):
                await engine.dispose()
