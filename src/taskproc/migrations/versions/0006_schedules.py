"""durable cron schedules: the schedule table, one row per fire time, and the schedule that created a task

Revision ID: 0006
Revises: 0005

`schedule` holds each schedule (cron, zone, the task body, overlap, catch-up window, paused or not), its next
fire time and its counters. `schedule_fire` has one row per fire time of a schedule that was decided (fired,
skipped, missed, invalid); its primary key (schedule, fire_at) is what makes a fire happen exactly once however
many API processes run the scheduler: the fire's row and its task are inserted in one transaction, and a second
scheduler's insert of the same key finds the row and creates nothing. `task.schedule` names the schedule a task
came from (NULL for tasks submitted directly), indexed for the list filter and for the overlap check.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schedule",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("task", JSONB, nullable=False),
        sa.Column("overlap", sa.String(20), nullable=False),
        sa.Column("catchup_s", sa.Float, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True)),
        sa.Column("last_run_at", sa.DateTime(timezone=True)),
        sa.Column("fired_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("skipped_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("missed_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_skipped_at", sa.DateTime(timezone=True)),
        sa.Column("last_skip_reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("overlap IN ('allow', 'skip', 'cancel_previous')", name="ck_schedule_overlap"),
    )
    op.create_index("ix_schedule_due", "schedule", ["next_run_at"], postgresql_where=sa.text("enabled"))
    op.create_table(
        "schedule_fire",
        sa.Column("schedule", sa.String(64), sa.ForeignKey("schedule.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("fire_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_schedule_fire_at", "schedule_fire", ["at"])
    # Nullable without a default: a catalog change only, no rewrite of the task table.
    op.add_column("task", sa.Column("schedule", sa.String(64), nullable=True))
    op.create_index(
        "ix_task_schedule_created",
        "task",
        ["schedule", sa.text("created_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("schedule IS NOT NULL"),
    )
    op.create_index(
        "ix_task_schedule_live",
        "task",
        ["schedule"],
        postgresql_where=sa.text("schedule IS NOT NULL AND status IN ('pending', 'running', 'retrying')"),
    )


def downgrade() -> None:
    op.drop_index("ix_task_schedule_live", table_name="task")
    op.drop_index("ix_task_schedule_created", table_name="task")
    op.drop_column("task", "schedule")
    op.drop_index("ix_schedule_fire_at", table_name="schedule_fire")
    op.drop_table("schedule_fire")
    op.drop_index("ix_schedule_due", table_name="schedule")
    op.drop_table("schedule")
