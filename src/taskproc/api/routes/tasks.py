"""The tasks resource: /api/v1/tasks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from taskproc import metrics, testhooks, tracing
from taskproc.api.deps import RedisDep, RegistryDep, SessionDep, SettingsDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES, SUBMIT_503
from taskproc.models import (
    QUEUE_PATTERN,
    Priority,
    TaskBatchCreate,
    TaskBatchPublic,
    TaskCreate,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskStatus,
    TaskUpdate,
)
from taskproc.services import tasks as service

TASK_PATH = "/api/v1/tasks/"
router = APIRouter(prefix="/tasks", tags=["tasks"], responses=ERROR_RESPONSES, route_class=DocstringRoute)

TaskId = Annotated[uuid.UUID, "task id"]
# Not validated here: an invalid one is ignored, as W3C Trace Context asks (taskproc.tracing.parse_traceparent).
TraceParent = Annotated[
    str | None,
    Header(description="W3C trace context of the caller: the task joins its trace (`trace_id`); ignored if invalid."),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskPublic,
    responses={
        200: {"model": TaskPublic, "description": "A task with this idempotency key already exists."},
        **SUBMIT_503,
    },
)
async def create_task(
    task_in: TaskCreate,
    request: Request,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
    traceparent: TraceParent = None,
) -> Response:
    """Submit a task.

    Returns 201 with a `Location` header. With an idempotency key (in the body or the `Idempotency-Key`
    header) that was used before, returns the existing task with 200 and creates nothing. A 503 does not say
    whether the task was created: retry with the same key (safe), never without one.
    """
    if idempotency_key is not None:
        if task_in.idempotency_key not in (None, idempotency_key):
            raise RequestValidationError(
                [
                    {
                        "loc": ("header", "Idempotency-Key"),
                        "msg": "differs from the body's idempotency_key",
                        "type": "idempotency_key_mismatch",
                    }
                ]
            )
        task_in = task_in.model_copy(update={"idempotency_key": idempotency_key})
    # The app's state read here rather than as three more dependencies: FastAPI solves each one per request.
    state = request.app.state
    with tracing.send([task_in.queue], traceparent, task_type=task_in.type) as send:
        [(task, created)] = await service.create_tasks(
            session=session,
            redis=state.redis,
            tasks_in=[task_in],
            settings=state.settings,
            registry=state.registry,
            traceparent=send.traceparent,
        )
        send.sent([task.id])
    # Committed, not answered yet: a deadline striking here gives the client a 503 for a task that exists.
    await testhooks.point("api.create.committed")
    if created:
        metrics.TASKS_SUBMITTED.labels(metrics.type_label(task.type), task.priority.value).inc()
    # Serialised here, once: returning the model would have FastAPI validate it against response_model again,
    # although the service has just built and validated it. response_model still documents the answer.
    return Response(
        task.model_dump_json(),
        status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        media_type="application/json",
        # The route's own path, not url_for: that walks every route of the app per call (a few % of a submit).
        headers={"Location": f"{request.scope.get('root_path', '')}{TASK_PATH}{task.id}"},
    )


@router.post("/batch", status_code=status.HTTP_201_CREATED, response_model=TaskBatchPublic, responses=SUBMIT_503)
async def create_tasks_batch(
    batch: TaskBatchCreate,
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    registry: RegistryDep,
    traceparent: TraceParent = None,
) -> TaskBatchPublic:
    """Submit up to 1000 tasks at once.

    Validated as a whole: if any item is invalid the answer is 422 naming its index, and nothing is created.
    Items whose idempotency key already exists come back as the existing task.
    """
    with tracing.send([t.queue for t in batch.tasks], traceparent) as send:
        results = await service.create_tasks(
            session=session,
            redis=redis,
            tasks_in=batch.tasks,
            settings=settings,
            registry=registry,
            batch=True,
            traceparent=send.traceparent,
        )
    await testhooks.point("api.create.committed")
    for task, created in results:
        if created:
            metrics.TASKS_SUBMITTED.labels(metrics.type_label(task.type), task.priority.value).inc()
    return TaskBatchPublic(items=[task for task, _ in results])


@router.get("", response_model=TaskList)
async def list_tasks(
    session: SessionDep,
    status_: Annotated[TaskStatus | None, Query(alias="status", description="Only tasks in this status.")] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=100, description="Only this task type.")] = None,
    priority: Annotated[Priority | None, Query(description="Only this priority.")] = None,
    schedule: Annotated[
        str | None, Query(max_length=64, description="Only the tasks this schedule created (its history).")
    ] = None,
    queue: Annotated[str | None, Query(pattern=QUEUE_PATTERN, description="Only the tasks of this queue.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")] = None,
) -> TaskList:
    """List tasks, newest first.

    Keyset pagination: follow `next_cursor` until it is null; tasks created while paging never make a page
    repeat or skip an older task.
    """
    return await service.list_tasks(
        session=session,
        status=status_,
        type_=type_,
        priority=priority,
        schedule=schedule,
        queue=queue,
        limit=limit,
        cursor=cursor,
    )


@router.get("/{task_id}", response_model=TaskPublic)
async def get_task(task_id: uuid.UUID, session: SessionDep, redis: RedisDep) -> TaskPublic:
    """Get one task.

    A waiting task says why it is not running yet in `waiting` (a paused queue, no worker for it, a delay, a
    retry backoff, or due and waiting for a slot, with its position in its queue).
    """
    return await service.get_task(session=session, task_id=task_id, redis=redis)


@router.patch("/{task_id}", response_model=TaskPublic)
async def update_task(task_id: uuid.UUID, task_in: TaskUpdate, session: SessionDep, redis: RedisDep) -> TaskPublic:
    """Change a pending task's priority (409 once it has started)."""
    return await service.update_task(session=session, redis=redis, task_id=task_id, task_in=task_in)


@router.post("/{task_id}/cancel", response_model=TaskPublic)
async def cancel_task(task_id: uuid.UUID, session: SessionDep, redis: RedisDep) -> TaskPublic:
    """Cancel a task.

    A waiting task is canceled at once and never runs. A running task is aborted by its worker and becomes
    `canceled` within about a second (the response shows it still running). A finished task: 409.
    """
    return await service.cancel_task(session=session, redis=redis, task_id=task_id)


@router.post("/{task_id}/retry", response_model=TaskPublic)
async def retry_task(task_id: uuid.UUID, session: SessionDep, redis: RedisDep) -> TaskPublic:
    """Run a failed or canceled task again, with fresh attempts (409 otherwise)."""
    return await service.retry_task(session=session, redis=redis, task_id=task_id)


@router.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_task(task_id: uuid.UUID, session: SessionDep) -> Response:
    """Delete a finished task and its history (409 while it is not finished)."""
    await service.delete_task(session=session, task_id=task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{task_id}/events", response_model=list[TaskEventPublic])
async def list_task_events(task_id: uuid.UUID, session: SessionDep) -> list[TaskEventPublic]:
    """A task's history: every state change in order."""
    return await service.list_events(session=session, task_id=task_id)
