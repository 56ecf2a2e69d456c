"""The limits resource: /api/v1/limits (per-key concurrency and rate limits, enforced across all workers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from taskproc.api.deps import RedisDep, SessionDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import MAX_CONCURRENCY_KEY, LimitPublic, LimitPut
from taskproc.services import limits as service

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "The key has no limit."},
}
router = APIRouter(prefix="/limits", tags=["limits"], responses=RESPONSES, route_class=DocstringRoute)

Key = Annotated[
    str,
    Path(min_length=1, max_length=MAX_CONCURRENCY_KEY, description="The concurrency key (1 to 200 characters)."),
]


@router.get("", response_model=list[LimitPublic])
async def list_limits(session: SessionDep) -> list[LimitPublic]:
    """List the keys that have a limit, by key, with their running tasks and tokens now."""
    return await service.list_limits(session=session)


@router.put("/{key:path}", response_model=LimitPublic)
async def put_limit(key: Key, limit_in: LimitPut, session: SessionDep, redis: RedisDep) -> LimitPublic:
    """Set a key's limit.

    `max_running`: at most that many tasks with this `concurrency_key` run at once; `rate`: at most `count`
    start per `per_s` seconds. Enforced atomically with the claim across every worker; a task of the key
    already running counts at once. Replaces a default its task type declared.
    """
    return await service.put_limit(session=session, redis=redis, key=key, limit_in=limit_in)


@router.get("/{key:path}", response_model=LimitPublic)
async def get_limit(key: Key, session: SessionDep) -> LimitPublic:
    """Get a key's limit, with its running tasks and tokens now."""
    return await service.get_limit(session=session, key=key)


@router.delete("/{key:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_limit(key: Key, session: SessionDep, redis: RedisDep) -> Response:
    """Delete a key's limit.

    Its tasks run unlimited from then on; a task type's declared default comes back with its next submit.
    """
    await service.delete_limit(session=session, redis=redis, key=key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
