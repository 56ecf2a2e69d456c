"""Service-wide resources: /api/v1/stats and /api/v1/task-types."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from taskproc.api.deps import RegistryDep, SessionDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import QUEUE_PATTERN, Stats, TaskTypePublic
from taskproc.services import tasks as service

router = APIRouter(tags=["service"], responses=ERROR_RESPONSES, route_class=DocstringRoute)


@router.get("/stats", response_model=Stats)
async def get_stats(
    session: SessionDep,
    queue: Annotated[
        str | None, Query(pattern=QUEUE_PATTERN, description="Only the tasks of this queue, and its workers.")
    ] = None,
) -> Stats:
    """Counts of tasks by status, the ready queue by priority, retries and live workers.

    With `queue`, every number is that queue's: its tasks by status, its waiting tasks by priority, its
    retries, the live workers that take from it, and its waiting tasks no live worker serves. A queue that
    never had a task answers zeros. Filtered or not, the numbers come from counters kept by triggers, so the
    call costs the same at any backlog.
    """
    return await service.get_stats(session=session, queue=queue)


@router.get("/task-types", response_model=list[TaskTypePublic])
async def list_task_types(registry: RegistryDep) -> list[TaskTypePublic]:
    """The task types this deployment can run, with the JSON schema of each payload."""
    return [
        TaskTypePublic(
            name=t.name, description=t.description, payload_schema=t.payload_schema(), result_ttl_s=t.result_ttl_s
        )
        for t in registry.all()
    ]
