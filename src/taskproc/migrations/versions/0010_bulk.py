"""bulk actions: one row per operation (POST /api/v1/tasks/bulk), its progress and who asked for it

Revision ID: 0010
Revises: 0009

An operation's tasks are the ones its filter matches among those created before it (`cutoff`); they are
processed newest first in small batches, each in a short transaction of its own, with `cursor` (the last
(created_at, id) done) saved in the same transaction: a restart carries on where it stopped, and no lock is
held for longer than one batch. The row is also the audit record: action, filter, when, and who (a fingerprint
of the API key, never the key).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bulk_operation",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("filter", JSONB(), nullable=False),
        sa.Column("priority", sa.String(10), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor_id", sa.Uuid(), nullable=True),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("action IN ('retry', 'cancel', 'delete', 'set_priority')", name="ck_bulk_action"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name="ck_bulk_status"),
    )
    op.create_index(
        "ix_bulk_operation_running", "bulk_operation", ["created_at"], postgresql_where=sa.text("status = 'running'")
    )
    op.create_index("ix_bulk_operation_created", "bulk_operation", [sa.text("created_at DESC")])
    # The event stream's poller asks for the operations that moved since its last look.
    op.create_index("ix_bulk_operation_updated", "bulk_operation", ["updated_at"])


def downgrade() -> None:
    op.drop_table("bulk_operation")
