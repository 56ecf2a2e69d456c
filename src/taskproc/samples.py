"""The stats history behind the dashboard's charts: a sample every TASKPROC_STATS_SAMPLE_S, kept for a day.

One API process at a time (the advisory lock STATS_SAMPLE_LOCK, taken per sample) records what finished since
the previous sample (counts and wait/run percentiles, read over the index on finished_at) and the waiting and
running counters the triggers keep; GET /api/v1/stats/history reads only those rows. So the charts cost the same
at any number of tasks, and every API process answers the same history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskproc import store
from taskproc.config import Settings
from taskproc.maintenance import every
from taskproc.models import StatsHistory, StatsPoint

log = logging.getLogger("taskproc.samples")

KEEP_S = 86_400.0
MAX_WINDOW_S = 86_400


async def sample(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> store.StatsSampleRow | None:
    """Take one sample and prune the old ones, under the lock; None if another process holds it or sampled."""
    async with sessions() as session:
        if not await store.try_stats_sample_lock(session):
            await session.rollback()
            return None
        row = await store.take_stats_sample(session, interval_s=settings.stats_sample_s)
        await store.prune_stats_samples(session, keep_s=KEEP_S)
        await session.commit()
    return row


def _rate(n: int, interval_s: float) -> float:
    return round(n / interval_s, 3) if interval_s > 0 else 0.0


async def history(*, session: AsyncSession, settings: Settings, window_s: int) -> StatsHistory:
    """The samples of the last `window_s` seconds as points, oldest first."""
    rows = await store.stats_samples(session, window_s=window_s)
    points = [
        StatsPoint(
            at=r.at,
            interval_s=r.interval_s,
            completed=r.completed,
            failed=r.failed,
            canceled=r.canceled,
            completed_per_s=_rate(r.completed, r.interval_s),
            failed_per_s=_rate(r.failed, r.interval_s),
            ready=r.ready,
            running=r.running,
            wait_p50_s=r.wait_p50_s,
            wait_p95_s=r.wait_p95_s,
            wait_p99_s=r.wait_p99_s,
            run_p50_s=r.run_p50_s,
            run_p95_s=r.run_p95_s,
            run_p99_s=r.run_p99_s,
        )
        for r in rows
    ]
    return StatsHistory(window_s=window_s, sample_s=settings.stats_sample_s, points=points)


@asynccontextmanager
async def run_in_api(settings: Settings, sessions: async_sessionmaker[AsyncSession] | None) -> AsyncIterator[None]:
    """The API process's sampling loop while the block runs, on the maintenance connection like the scheduler
    (or a pool of one of its own when there is none)."""
    engine = None
    if sessions is None:
        from taskproc.db import create_engine, create_sessionmaker

        engine = create_engine(settings, pool_size=1, max_overflow=0)
        sessions = create_sessionmaker(engine)
    made = sessions

    started = False

    async def tick() -> None:
        # The first sample one interval after start, not at once: a sample covers an interval that has passed.
        nonlocal started
        if started:
            await sample(settings, made)
        started = True

    loop = asyncio.create_task(every(settings.stats_sample_s, tick, "stats sampler", jitter=0.05))
    try:
        yield
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        if engine is not None:
            with contextlib.suppress(Exception):
                await engine.dispose()
