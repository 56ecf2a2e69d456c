"""stats samples: the numbers behind the dashboard's charts, one row every few seconds, kept for a day

Revision ID: 0016
Revises: 0013

`stats_sample`: written every TASKPROC_STATS_SAMPLE_S (10 s) by one API process at a time (advisory lock
7314250016, taskproc.samples) from the trigger-kept counters (ready and running now) and the tasks finished
since the previous sample (read over ix_task_terminal_finished: completed, failed and canceled counts, wait and
run time percentiles), and pruned beyond 24 h. GET /api/v1/stats/history reads only this table, so the charts
cost the same at 10 tasks as at 10 million.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stats_sample",
        sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("completed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("canceled", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ready", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("running", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("wait_p50_s", sa.Float(), nullable=True),
        sa.Column("wait_p95_s", sa.Float(), nullable=True),
        sa.Column("wait_p99_s", sa.Float(), nullable=True),
        sa.Column("run_p50_s", sa.Float(), nullable=True),
        sa.Column("run_p95_s", sa.Float(), nullable=True),
        sa.Column("run_p99_s", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("stats_sample")
