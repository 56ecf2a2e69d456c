"""GET /api/v1/stats/history: the samples behind the dashboard's charts (taskproc.samples)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from taskproc import samples
from taskproc.api.deps import SessionDep, SettingsDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import StatsHistory

router = APIRouter(tags=["service"], responses=ERROR_RESPONSES, route_class=DocstringRoute)


@router.get("/stats/history", response_model=StatsHistory)
async def get_stats_history(
    session: SessionDep,
    settings: SettingsDep,
    window_s: Annotated[
        int, Query(ge=60, le=samples.MAX_WINDOW_S, description="How far back, in seconds (at most a day).")
    ] = 3600,
) -> StatsHistory:
    """Throughput, backlog and wait and run time percentiles over time, one point per sample.

    An API process records a sample every `TASKPROC_STATS_SAMPLE_S` (10 s): the tasks that completed, failed or
    were canceled since the previous one (per second too), the p50/p95/p99 of their wait (from due to start)
    and run time, and the waiting and running counts at its end. Samples are kept for 24 hours; the call reads
    only them, so it costs the same at any number of tasks.
    """
    return await samples.history(session=session, settings=settings, window_s=window_s)
