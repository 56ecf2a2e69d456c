"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 02:13:30.366569
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task",
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("priority", sa.String(length=10), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_task_priority"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'canceled')",
            name="ck_task_status",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_task_created",
        "task",
        [sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_task_running_worker",
        "task",
        ["worker_id"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_task_status_created",
        "task",
        ["status", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_task_terminal_finished",
        "task",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('completed', 'failed', 'canceled')"),
    )
    op.create_index(
        "ix_task_type_created",
        "task",
        ["type", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_task_ready",
        "task",
        ["priority", "run_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    )
    op.create_index(
        "ix_task_waiting",
        "task",
        ["id"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    )
    op.create_index(
        "uq_task_idempotency_key",
        "task",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "task_event",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_task_event_retrying",
        "task_event",
        ["id"],
        unique=False,
        postgresql_where=sa.text("status = 'retrying'"),
    )
    op.create_index("ix_task_event_task", "task_event", ["task_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_task_event_task", table_name="task_event")
    op.drop_index("ix_task_event_retrying", table_name="task_event", postgresql_where=sa.text("status = 'retrying'"))
    op.drop_table("task_event")
    op.drop_table("worker")
    op.drop_index("uq_task_idempotency_key", table_name="task", postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.drop_index("ix_task_ready", table_name="task", postgresql_where=sa.text("status IN ('pending', 'retrying')"))
    op.drop_index("ix_task_waiting", table_name="task", postgresql_where=sa.text("status IN ('pending', 'retrying')"))
    op.drop_index("ix_task_type_created", table_name="task")
    op.drop_index(
        "ix_task_terminal_finished",
        table_name="task",
        postgresql_where=sa.text("status IN ('completed', 'failed', 'canceled')"),
    )
    op.drop_index("ix_task_status_created", table_name="task")
    op.drop_index("ix_task_running_worker", table_name="task", postgresql_where=sa.text("status = 'running'"))
    op.drop_index("ix_task_created", table_name="task")
    op.drop_table("task")
