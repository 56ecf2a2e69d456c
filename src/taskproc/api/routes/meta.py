"""Service-wide resources: /api/v1/stats and /api/v1/task-types."""

from __future__ import annotations

from fastapi import APIRouter

from taskproc.api.deps import RegistryDep, SessionDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import Stats, TaskTypePublic
from taskproc.services import tasks as service

router = APIRouter(tags=["service"], responses=ERROR_RESPONSES, route_class=DocstringRoute)


@router.get("/stats", response_model=Stats)
async def get_stats(session: SessionDep) -> Stats:
    """Counts of tasks by status, the ready queue by priority, retries and live workers."""
    return await service.get_stats(session=session)


@router.get("/task-types", response_model=list[TaskTypePublic])
async def list_task_types(registry: RegistryDep) -> list[TaskTypePublic]:
    """The task types this deployment can run, with the JSON schema of each payload."""
    return [
        TaskTypePublic(name=t.name, description=t.description, payload_schema=t.payload_schema())
        for t in registry.all()
    ]
