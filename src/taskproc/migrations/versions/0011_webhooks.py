"""webhooks: subscriptions, an outbox of deliveries, the dispatcher's cursor, and a task's callback_url

Revision ID: 0011
Revises: 0010

`webhook` holds each subscription (target URL, event types, filter, signing secret). `webhook_delivery` is the
outbox: one row per event to deliver to one target (a webhook's, or the task's own `callback_url`), with its
signed body, its attempts and when the next one is due; API processes send the due rows (taskproc.webhooks),
so a delivery survives any restart. `webhook_cursor` is where the dispatcher, which turns `task_event` rows into
deliveries, got to (and the ids below it still uncommitted when it read): it starts at the newest event, so the
history before the upgrade is not delivered. `task.callback_url` is nullable without a default: a catalog change
only, no rewrite of the task table, and nothing on the workers' path reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", JSONB, nullable=False),
        sa.Column("filter", JSONB, nullable=True),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("webhook_id", sa.Uuid(), sa.ForeignKey("webhook.id", ondelete="CASCADE"), nullable=True),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_latency_ms", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempt_log", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_delivery_status"),
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_delivery_webhook", "webhook_delivery", ["webhook_id", sa.text("created_at DESC")], unique=False
    )
    op.create_index("ix_webhook_delivery_created", "webhook_delivery", ["created_at"])
    op.create_table(
        "webhook_cursor",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("gaps", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.execute("INSERT INTO webhook_cursor (name, last_id) SELECT 'dispatcher', coalesce(max(id), 0) FROM task_event")
    op.add_column("task", sa.Column("callback_url", sa.String(2000), nullable=True))


def downgrade() -> None:
    op.drop_column("task", "callback_url")
    op.drop_table("webhook_cursor")
    op.drop_index("ix_webhook_delivery_created", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_webhook", table_name="webhook_delivery")
    op.drop_index(
        "ix_webhook_delivery_due", table_name="webhook_delivery", postgresql_where=sa.text("status = 'pending'")
    )
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
