"""Bulk actions by filter: POST /api/v1/tasks/bulk, and the operations at /api/v1/bulk (progress and audit)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from taskproc.api.deps import SessionDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import BulkCount, BulkCreate, BulkPublic
from taskproc.services import bulk as service

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "No such bulk operation."},
}
tasks_router = APIRouter(prefix="/tasks", tags=["bulk"], responses=ERROR_RESPONSES, route_class=DocstringRoute)
router = APIRouter(prefix="/bulk", tags=["bulk"], responses=RESPONSES, route_class=DocstringRoute)


@tasks_router.post(
    "/bulk",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BulkPublic | BulkCount,
    responses={200: {"model": BulkCount, "description": "The dry run's count."}},
)
async def create_bulk(
    bulk_in: BulkCreate, request: Request, response: Response, session: SessionDep
) -> BulkPublic | BulkCount:
    """Apply an action to every task a filter matches.

    `action` is `retry` (failed and canceled tasks), `cancel` (waiting and running ones), `delete` (finished
    ones) or `set_priority` (pending ones, with `priority`); `filter` takes the list's filters. With `dry_run`
    the answer (200) is the number of tasks the filter matches now. Otherwise the operation is recorded (who,
    when, what) and runs in the background (202) over the tasks created before it, in small batches: follow
    it at `GET /api/v1/bulk/{id}` (`Location`) or on the event stream (`event: bulk`).
    """
    result = await service.create_bulk(
        session=session,
        bulk_in=bulk_in,
        requested_by=service.requester(request.headers.get("authorization", "")),
        request_id=request.scope.get("state", {}).get("request_id"),
    )
    if isinstance(result, BulkCount):
        response.status_code = status.HTTP_200_OK
    else:
        response.headers["Location"] = str(request.url_for("get_bulk", bulk_id=result.id).path)
    return result


@router.get("", response_model=list[BulkPublic])
async def list_bulk(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=200, description="How many, newest first.")] = 50
) -> list[BulkPublic]:
    """List bulk operations, newest first (the audit trail: who asked for what, and when)."""
    return await service.list_bulk(session=session, limit=limit)


@router.get("/{bulk_id}", response_model=BulkPublic)
async def get_bulk(bulk_id: uuid.UUID, session: SessionDep) -> BulkPublic:
    """Get a bulk operation and its progress."""
    return await service.get_bulk(session=session, bulk_id=bulk_id)
