"""The schedules resource: /api/v1/schedules (durable cron schedules; taskproc.scheduler fires them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status

from taskproc import metrics
from taskproc.api.deps import RedisDep, RegistryDep, SessionDep, SettingsDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import (
    SCHEDULE_NAME,
    ScheduleCreate,
    ScheduleFirePublic,
    SchedulePublic,
    ScheduleUpdate,
    TaskPublic,
)
from taskproc.services import schedules as service

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "No such schedule."},
    409: {**ERROR_RESPONSES[409], "description": "A schedule of that name exists."},
}
router = APIRouter(prefix="/schedules", tags=["schedules"], responses=RESPONSES, route_class=DocstringRoute)

Name = Annotated[str, Path(pattern=SCHEDULE_NAME, description="The schedule's name.")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SchedulePublic)
async def create_schedule(
    schedule_in: ScheduleCreate, request: Request, response: Response, session: SessionDep, registry: RegistryDep
) -> SchedulePublic:
    """Create a cron schedule.

    Each fire time creates one task from `task` (its payload is validated against the type now: 422 if it
    does not fit), exactly once however many API replicas run. 409 if the name is taken.
    """
    schedule = await service.create_schedule(session=session, schedule_in=schedule_in, registry=registry)
    response.headers["Location"] = str(request.url_for("get_schedule", name=schedule.name).path)
    return schedule


@router.get("", response_model=list[SchedulePublic])
async def list_schedules(session: SessionDep) -> list[SchedulePublic]:
    """List the schedules, by name, with their next and last run."""
    return await service.list_schedules(session=session)


@router.get("/{name}", response_model=SchedulePublic)
async def get_schedule(name: Name, session: SessionDep) -> SchedulePublic:
    """Get one schedule."""
    return await service.get_schedule(session=session, name=name)


@router.patch("/{name}", response_model=SchedulePublic)
async def update_schedule(
    name: Name, update: ScheduleUpdate, session: SessionDep, registry: RegistryDep
) -> SchedulePublic:
    """Change a schedule; `enabled: false` pauses it, `true` resumes it.

    A new cron or timezone, and a resume, compute the next fire time from now: fire times that passed while it
    was paused are not caught up.
    """
    return await service.update_schedule(session=session, name=name, update=update, registry=registry)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_schedule(name: Name, session: SessionDep) -> Response:
    """Delete a schedule (its tasks stay, and still name it in `schedule`)."""
    await service.delete_schedule(session=session, name=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/trigger", status_code=status.HTTP_201_CREATED, response_model=TaskPublic)
async def trigger_schedule(
    name: Name, session: SessionDep, redis: RedisDep, settings: SettingsDep, registry: RegistryDep
) -> TaskPublic:
    """Run a schedule now: one task at once, whatever its overlap setting; the next fire time stays."""
    task = await service.trigger_schedule(session=session, redis=redis, settings=settings, registry=registry, name=name)
    metrics.TASKS_SUBMITTED.labels(metrics.type_label(task.type), task.priority.value).inc()
    metrics.SCHEDULE_FIRES.labels(name, "fired").inc()
    return task


@router.get("/{name}/fires", response_model=list[ScheduleFirePublic])
async def list_schedule_fires(
    name: Name,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500, description="How many, newest first.")] = 50,
) -> list[ScheduleFirePublic]:
    """A schedule's recent fire times and what became of each (fired, skipped, missed, invalid)."""
    return await service.list_fires(session=session, name=name, limit=limit)
