"""Bulk actions by filter: POST /api/v1/tasks/bulk, GET /api/v1/bulk/{id}; the batches are run by taskproc.bulk.

A dry run counts the matching tasks. A real run records the operation (its audit record: action, filter, who,
when) and answers at once (202); API processes then apply the action to the matching tasks created before the
operation, newest first, a small batch per short transaction (see taskproc.bulk), so no lock is ever held for
long and a million matching tasks cost a million small steps, not one huge statement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import store
from taskproc.errors import InvalidInputError, NotFoundError
from taskproc.models import (
    BulkAction,
    BulkCount,
    BulkCreate,
    BulkFilter,
    BulkPublic,
    BulkStatus,
    Priority,
)

log = logging.getLogger("taskproc.service")


def requester(authorization: str) -> str:
    """Who asked, for the audit record: a fingerprint of the bearer API key (never the key), or anonymous."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "anonymous"
    return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:12]


def task_filter(f: BulkFilter) -> store.TaskFilter:
    return store.TaskFilter(
        status=None if f.status is None else f.status.value,
        type=f.type,
        priority=None if f.priority is None else f.priority.value,
        queue=f.queue,
        schedule=f.schedule,
        created_before=f.created_before,
        created_after=f.created_after,
    )


def to_public(row: store.BulkRow) -> BulkPublic:
    return BulkPublic(
        id=row.id,
        action=BulkAction(row.action),
        filter=BulkFilter.model_validate(row.filter),
        priority=None if row.priority is None else Priority(row.priority),
        status=BulkStatus(row.status),
        total=row.total,
        done=row.done,
        failed=row.failed,
        requested_by=row.requested_by,
        request_id=row.request_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


async def create_bulk(
    *, session: AsyncSession, bulk_in: BulkCreate, requested_by: str, request_id: str | None
) -> BulkCount | BulkPublic:
    """Count (dry run), or record the operation for the background batches."""
    if bulk_in.action is BulkAction.set_priority and bulk_in.priority is None:
        raise InvalidInputError(field=("priority",), msg="set_priority needs a priority", type="missing")
    if bulk_in.action is not BulkAction.set_priority and bulk_in.priority is not None:
        raise InvalidInputError(field=("priority",), msg="only set_priority takes a priority", type="extra")
    total = await store.count_matching(session, task_filter(bulk_in.filter))
    if bulk_in.dry_run:
        return BulkCount(action=bulk_in.action, filter=bulk_in.filter, total=total)
    row = await store.create_bulk(
        session,
        action=bulk_in.action.value,
        filter_json=json.dumps(bulk_in.filter.model_dump(mode="json", exclude_none=True)),
        priority=None if bulk_in.priority is None else bulk_in.priority.value,
        total=total,
        requested_by=requested_by,
        request_id=request_id,
    )
    await session.commit()
    log.info(
        "bulk operation accepted",
        extra={"bulk_id": str(row.id), "action": row.action, "count": total, "requested_by": requested_by},
    )
    return to_public(row)


async def get_bulk(*, session: AsyncSession, bulk_id: uuid.UUID) -> BulkPublic:
    row = await store.get_bulk(session, bulk_id)
    if row is None:
        raise NotFoundError(f"bulk operation {bulk_id} not found")
    return to_public(row)


async def list_bulk(*, session: AsyncSession, limit: int) -> list[BulkPublic]:
    return [to_public(r) for r in await store.list_bulk(session, limit=limit)]


def event_detail(op: store.BulkRow) -> str:
    """The detail of the events a batch writes, naming the operation."""
    what = {
        BulkAction.retry: "retry requested",
        BulkAction.cancel: "canceled before it ran",
        BulkAction.set_priority: f"priority changed to {op.priority}",
    }.get(BulkAction(op.action), op.action)
    return f"{what} (bulk {op.action} {op.id})"
