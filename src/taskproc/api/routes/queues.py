"""The queues resource: /api/v1/queues (named queues, their counts, pause and resume)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from taskproc.api.deps import RedisDep, SessionDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import QUEUE_PATTERN, QueuePublic
from taskproc.services import queues as service

router = APIRouter(prefix="/queues", tags=["queues"], responses=ERROR_RESPONSES, route_class=DocstringRoute)

Name = Annotated[str, Path(pattern=QUEUE_PATTERN, description="The queue's name.")]


@router.get("", response_model=list[QueuePublic])
async def list_queues(session: SessionDep, redis: RedisDep) -> list[QueuePublic]:
    """List the queues, by name, with their counts and pause state.

    Every queue that has waiting or running tasks or was ever paused, and `default`. `ready` and `deferred` are
    the sizes of the queue's Redis sets, `running` a counter kept by triggers in Postgres; `workers` counts the
    live workers that take from the queue.
    """
    return await service.list_queues(session=session, redis=redis)


@router.post("/{name}/pause", response_model=QueuePublic)
async def pause_queue(name: Name, session: SessionDep, redis: RedisDep) -> QueuePublic:
    """Pause a queue: nothing new starts there; running tasks finish.

    The pause is stored in Postgres, so it holds across restarts and a loss of Redis. Pausing a paused queue
    changes nothing.
    """
    return await service.pause_queue(session=session, redis=redis, name=name)


@router.post("/{name}/resume", response_model=QueuePublic)
async def resume_queue(name: Name, session: SessionDep, redis: RedisDep) -> QueuePublic:
    """Resume a paused queue: its waiting tasks start again."""
    return await service.resume_queue(session=session, redis=redis, name=name)
