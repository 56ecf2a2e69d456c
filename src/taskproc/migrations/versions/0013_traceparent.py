"""trace context: the submit's W3C traceparent on the task, and the span of its last failed attempt

Revision ID: 0013
Revises: 0012

- `task.traceparent`: the creation context of the task (taskproc.tracing: the API's producer span, or the
  caller's `traceparent` when the API does not trace); every attempt's span is its child, so the submit and
  the attempts are one trace, and `trace_id` on the task is read from it.
- `task.attempt_traceparent`: the span of the attempt whose failure the task last recorded; the next
  attempt's span links it.
Both nullable with no default, so adding them rewrites no rows, and a task without tracing stores NULLs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task", sa.Column("traceparent", sa.Text(), nullable=True))
    op.add_column("task", sa.Column("attempt_traceparent", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("task", "attempt_traceparent")
    op.drop_column("task", "traceparent")
