"""The webhooks resource: /api/v1/webhooks and /api/v1/webhook-deliveries (taskproc.webhooks delivers them)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from taskproc.api.deps import SessionDep, SettingsDep
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.models import WebhookCreate, WebhookCreated, WebhookDeliveryPublic, WebhookPublic
from taskproc.services import webhooks as service

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "No such webhook or delivery."},
}
router = APIRouter(tags=["webhooks"], responses=RESPONSES, route_class=DocstringRoute)

Limit = Annotated[int, Query(ge=1, le=500, description="How many, newest first.")]


@router.post("/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
async def create_webhook(
    webhook_in: WebhookCreate, request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """Create a webhook.

    Every task event of `events` (filtered by `filter`) is POSTed to `url`, signed as Standard Webhooks do
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`), and retried with backoff for a day. The signing
    `secret` is generated when none is given, and returned by this call only. 422 if the URL is not http(s) or
    resolves to a private, loopback or link-local address (unless TASKPROC_WEBHOOK_ALLOW_PRIVATE is set).
    """
    webhook = await service.create_webhook(session=session, settings=settings, webhook_in=webhook_in)
    response.headers["Location"] = str(request.url_for("get_webhook", webhook_id=webhook.id).path)
    return webhook


@router.get("/webhooks", response_model=list[WebhookPublic])
async def list_webhooks(session: SessionDep) -> list[WebhookPublic]:
    """List the webhooks, oldest first (without their secrets)."""
    return await service.list_webhooks(session=session)


@router.get("/webhooks/{webhook_id}", response_model=WebhookPublic)
async def get_webhook(webhook_id: uuid.UUID, session: SessionDep) -> WebhookPublic:
    """Get one webhook (without its secret)."""
    return await service.get_webhook(session=session, webhook_id=webhook_id)


@router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_webhook(webhook_id: uuid.UUID, session: SessionDep) -> Response:
    """Delete a webhook and its deliveries (those not sent yet never are)."""
    await service.delete_webhook(session=session, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[WebhookDeliveryPublic])
async def list_webhook_deliveries(
    webhook_id: uuid.UUID, session: SessionDep, limit: Limit = 50
) -> list[WebhookDeliveryPublic]:
    """A webhook's deliveries, newest first: status, attempts, and each attempt's status code and latency."""
    return await service.list_deliveries(session=session, webhook_id=webhook_id, limit=limit)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
)
async def redeliver_webhook_delivery(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> WebhookDeliveryPublic:
    """Send a delivery again now, whatever became of it (same `webhook-id` and body, a new day of retries)."""
    return await service.redeliver(session=session, settings=settings, delivery_id=delivery_id, webhook_id=webhook_id)


@router.get("/webhook-deliveries", response_model=list[WebhookDeliveryPublic])
async def list_task_deliveries(
    session: SessionDep,
    task_id: Annotated[uuid.UUID, Query(description="The task the deliveries are about.")],
    limit: Limit = 50,
) -> list[WebhookDeliveryPublic]:
    """The deliveries about one task, its `callback_url`'s included, newest first."""
    return await service.list_task_deliveries(session=session, task_id=task_id, limit=limit)


@router.post(
    "/webhook-deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryPublic,
)
async def redeliver_delivery(
    delivery_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> WebhookDeliveryPublic:
    """Send any delivery again now, one to a task's `callback_url` included."""
    return await service.redeliver(session=session, settings=settings, delivery_id=delivery_id, webhook_id=None)
