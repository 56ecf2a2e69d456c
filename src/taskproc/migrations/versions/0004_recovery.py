"""recovery: where the reconciler's scan of waiting tasks got to, shared by every process that runs it

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per scan ('waiting'); it lives in Postgres because the advisory lock that picks the process doing
    # a pass moves between API and worker processes.
    op.execute(
        "CREATE TABLE reconcile_cursor (name text PRIMARY KEY, last_id uuid NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now())"
    )


def downgrade() -> None:
    op.execute("DROP TABLE reconcile_cursor")
