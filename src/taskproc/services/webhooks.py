"""Webhook service: what the API does with webhooks (create, list, delete, deliveries, redelivery), over the
statements of taskproc.store. Delivering them is taskproc.webhooks' job."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import store, webhooks
from taskproc.config import Settings
from taskproc.errors import FieldPath, InvalidInputError, NotFoundError
from taskproc.models import WebhookCreate, WebhookCreated, WebhookDeliveryPublic, WebhookPublic
from taskproc.store import DeliveryRow, WebhookRow


def to_public(row: WebhookRow) -> WebhookPublic:
    return WebhookPublic.model_validate(row, from_attributes=True)


def delivery_public(row: DeliveryRow) -> WebhookDeliveryPublic:
    public = WebhookDeliveryPublic.model_validate(row, from_attributes=True)
    return public if row.status == "pending" else public.model_copy(update={"next_attempt_at": None})


async def check_url(url: str, settings: Settings, field: FieldPath = ("url",)) -> None:
    """422 for a target deliveries may not go to (see webhooks.check_target)."""
    try:
        await webhooks.check_target(url, allow_private=settings.webhook_allow_private)
    except webhooks.TargetRefusedError as exc:
        raise InvalidInputError(field=field, msg=str(exc), type="url_refused") from None


async def create_webhook(*, session: AsyncSession, settings: Settings, webhook_in: WebhookCreate) -> WebhookCreated:
    await check_url(webhook_in.url, settings)
    secret = webhook_in.secret or webhooks.new_secret()
    flt = None if webhook_in.filter is None else webhook_in.filter.model_dump(exclude_none=True)
    row = await store.create_webhook(
        session,
        id=uuid.uuid4(),
        url=webhook_in.url,
        events=sorted({e.value for e in webhook_in.events}),
        filter=flt or None,
        secret=secret,
    )
    return WebhookCreated.model_validate({**to_public(row).model_dump(), "secret": row.secret})


async def list_webhooks(*, session: AsyncSession) -> list[WebhookPublic]:
    return [to_public(r) for r in await store.list_webhooks(session)]


async def get_webhook(*, session: AsyncSession, webhook_id: uuid.UUID) -> WebhookPublic:
    row = await store.get_webhook(session, webhook_id)
    if row is None:
        raise NotFoundError("webhook not found")
    return to_public(row)


async def delete_webhook(*, session: AsyncSession, webhook_id: uuid.UUID) -> None:
    if not await store.delete_webhook(session, webhook_id):
        raise NotFoundError("webhook not found")


async def list_deliveries(*, session: AsyncSession, webhook_id: uuid.UUID, limit: int) -> list[WebhookDeliveryPublic]:
    await get_webhook(session=session, webhook_id=webhook_id)
    return [delivery_public(r) for r in await store.list_deliveries(session, webhook_id, limit=limit)]


async def list_task_deliveries(*, session: AsyncSession, task_id: uuid.UUID, limit: int) -> list[WebhookDeliveryPublic]:
    return [delivery_public(r) for r in await store.list_task_deliveries(session, task_id, limit=limit)]


async def redeliver(
    *, session: AsyncSession, settings: Settings, delivery_id: uuid.UUID, webhook_id: uuid.UUID | None
) -> WebhookDeliveryPublic:
    """Send a delivery again (its webhook's when `webhook_id` is given, else any, a callback's included)."""
    row = await store.get_delivery(session, delivery_id)
    if row is None or (webhook_id is not None and row.webhook_id != webhook_id):
        raise NotFoundError("delivery not found")
    done = await store.redeliver(session, delivery_id, max_age_s=settings.webhook_max_age_s)
    if done is None:
        raise NotFoundError("delivery not found")
    return delivery_public(done)
