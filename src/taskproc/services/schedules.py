"""Schedule service: what the API does with schedules (create, change, pause, delete, trigger), over the
statements of taskproc.store. Firing them is taskproc.scheduler's job.

Times come from Postgres's clock (store.db_now), the one the scheduler compares next_run_at with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import cron, store
from taskproc.config import Settings
from taskproc.errors import ConflictError, InvalidInputError, NotFoundError
from taskproc.models import (
    ScheduleCreate,
    ScheduleFirePublic,
    SchedulePublic,
    ScheduleTask,
    ScheduleUpdate,
    TaskCreate,
    TaskPublic,
)
from taskproc.services import tasks as task_service
from taskproc.store import NewSchedule, ScheduleRow
from taskproc.tasks.registry import TaskRegistry


def to_public(row: ScheduleRow) -> SchedulePublic:
    return SchedulePublic.model_validate(row, from_attributes=True)


def task_create(body: dict[str, Any]) -> TaskCreate:
    """The task submission a fire of a schedule with this stored task body makes."""
    return TaskCreate.model_validate(ScheduleTask.model_validate(body).model_dump(exclude_none=True))


def _task_body(task: ScheduleTask, registry: TaskRegistry) -> dict[str, Any]:
    """The task body to store: its payload validated against the registered type now, so that a schedule never
    exists whose fires would all be refused (a 422 at creation instead)."""
    payload = registry.validate_payload(task.type, task.payload, at=("task",))
    return {**task.model_dump(mode="json", exclude_none=True), "payload": payload}


def next_run(expr: str, timezone: str, now: datetime, enabled: bool) -> datetime | None:
    return cron.next_fire(expr, cron.zone(timezone), now) if enabled else None


async def create_schedule(
    *, session: AsyncSession, schedule_in: ScheduleCreate, registry: TaskRegistry
) -> SchedulePublic:
    body = _task_body(schedule_in.task, registry)
    now = await store.db_now(session)
    new = NewSchedule(
        name=schedule_in.name,
        cron=schedule_in.cron,
        timezone=schedule_in.timezone,
        task=body,
        overlap=schedule_in.overlap.value,
        catchup_s=schedule_in.catchup_s,
        enabled=schedule_in.enabled,
        next_run_at=next_run(schedule_in.cron, schedule_in.timezone, now, schedule_in.enabled),
    )
    row = await store.create_schedule(session, new)
    if row is None:
        raise ConflictError(f"schedule {schedule_in.name!r} already exists; PATCH it or delete it first")
    return to_public(row)


async def list_schedules(*, session: AsyncSession) -> list[SchedulePublic]:
    return [to_public(r) for r in await store.list_schedules(session)]


async def _row(session: AsyncSession, name: str) -> ScheduleRow:
    row = await store.get_schedule(session, name)
    if row is None:
        raise NotFoundError(f"schedule {name!r} not found")
    return row


async def get_schedule(*, session: AsyncSession, name: str) -> SchedulePublic:
    return to_public(await _row(session, name))


async def update_schedule(
    *, session: AsyncSession, name: str, update: ScheduleUpdate, registry: TaskRegistry
) -> SchedulePublic:
    """Change some settings. A new cron or timezone, or a resume, computes the next fire time from now (fire
    times that passed while paused are not caught up); a pause clears it."""
    row = await _row(session, name)
    changes = update.model_dump(exclude_unset=True)
    if any(changes.get(k, 0) is None for k in ("cron", "timezone", "overlap", "catchup_s", "enabled", "task")):
        nulls = [k for k, v in changes.items() if v is None]
        raise InvalidInputError(field=(nulls[0],), msg="may be left out, not null", type="null_not_allowed")
    body = _task_body(update.task, registry) if update.task is not None else row.task
    expr = update.cron if update.cron is not None else row.cron
    timezone = update.timezone if update.timezone is not None else row.timezone
    enabled = update.enabled if update.enabled is not None else row.enabled
    reschedule = expr != row.cron or timezone != row.timezone or enabled != row.enabled
    now = await store.db_now(session)
    new = NewSchedule(
        name=name,
        cron=expr,
        timezone=timezone,
        task=body,
        overlap=update.overlap.value if update.overlap is not None else row.overlap,
        catchup_s=update.catchup_s if update.catchup_s is not None else row.catchup_s,
        enabled=enabled,
        next_run_at=next_run(expr, timezone, now, enabled) if reschedule else None,
    )
    updated = await store.update_schedule(session, new, reschedule=reschedule)
    if updated is None:
        raise NotFoundError(f"schedule {name!r} not found")
    return to_public(updated)


async def delete_schedule(*, session: AsyncSession, name: str) -> None:
    if not await store.delete_schedule(session, name):
        raise NotFoundError(f"schedule {name!r} not found")


async def trigger_schedule(
    *, session: AsyncSession, redis: Redis, settings: Settings, registry: TaskRegistry, name: str
) -> TaskPublic:
    """Run now: one task from the schedule's task body, at once, whatever its overlap setting and its next fire
    time (which stays as it is)."""
    row = await _row(session, name)
    [(task, _)] = await task_service.create_tasks(
        session=session,
        redis=redis,
        tasks_in=[task_create(row.task)],
        settings=settings,
        registry=registry,
        schedule=name,
    )
    await store.advance_schedule(session, name, set_next=False, fired=1)
    await session.commit()
    return task


async def list_fires(*, session: AsyncSession, name: str, limit: int) -> list[ScheduleFirePublic]:
    await _row(session, name)
    rows = await store.list_fires(session, name, limit=limit)
    return [ScheduleFirePublic.model_validate(r, from_attributes=True) for r in rows]
