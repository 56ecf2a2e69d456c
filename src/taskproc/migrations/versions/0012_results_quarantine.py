"""results that expire, and crash quarantine: task.result_ttl_s, result_expired_at, lost_attempts, quarantined

Revision ID: 0012
Revises: 0011

- `result_ttl_s` (NULL: kept until the task is purged): once a finished task's result is older than this, the
  worker's retention pass sets `result` to NULL and `result_expired_at` to when it did; the API reports the
  result expired from the moment the TTL has passed, before that pass has run.
- `lost_attempts`: attempts lost to a worker that died (its lease expired with the task running), counted apart
  from `attempts`; at TASKPROC_MAX_LOST_ATTEMPTS the reaper fails the task for good and sets `quarantined`.
Every new column is nullable or has a constant default, so adding them rewrites no rows. The partial index holds
only results still waiting to expire, the rows the retention pass looks at.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPIRING = "result_ttl_s IS NOT NULL AND result IS NOT NULL AND finished_at IS NOT NULL"


def upgrade() -> None:
    op.add_column("task", sa.Column("result_ttl_s", sa.Float, nullable=True))
    op.add_column("task", sa.Column("result_expired_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("task", sa.Column("lost_attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("task", sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_task_result_expiring", "task", ["finished_at"], postgresql_where=sa.text(EXPIRING))


def downgrade() -> None:
    op.drop_index("ix_task_result_expiring", table_name="task")
    op.drop_column("task", "quarantined")
    op.drop_column("task", "lost_attempts")
    op.drop_column("task", "result_expired_at")
    op.drop_column("task", "result_ttl_s")
