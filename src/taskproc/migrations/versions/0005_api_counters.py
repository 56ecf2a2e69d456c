"""waiting-task counters per priority, kept by statement triggers, so /stats and /metrics read no task rows

Revision ID: 0005
Revises: 0004

/stats counted the waiting tasks per priority with `count(*) ... GROUP BY priority` on every call, and /metrics
(unauthenticated, scraped by every Prometheus of every API replica) did the same: O(backlog) per scrape.
`task_wait_count` holds, per priority, the net number of tasks that are `pending` or `retrying` (delayed ones
included: a counter can't follow time, so "due now" is not what it counts). Sharded by backend pid like
`task_count` (migration 0002), so concurrent writers rarely wait on the same row; a read sums at most 48 rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = """
CREATE FUNCTION taskproc_wait_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_wait_count (priority, shard, n)
  SELECT priority, pg_backend_pid() % 16, count(*) FROM new_rows WHERE status IN ('pending', 'retrying')
  GROUP BY priority
  ON CONFLICT (priority, shard) DO UPDATE SET n = task_wait_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_wait_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_wait_count (priority, shard, n)
  SELECT priority, pg_backend_pid() % 16, sum(d) FROM (
    SELECT n.priority, 1 AS d FROM new_rows n JOIN old_rows o USING (id)
      WHERE n.status IN ('pending', 'retrying')
        AND NOT (o.status IN ('pending', 'retrying') AND o.priority = n.priority)
    UNION ALL
    SELECT o.priority, -1 FROM new_rows n JOIN old_rows o USING (id)
      WHERE o.status IN ('pending', 'retrying')
        AND NOT (n.status IN ('pending', 'retrying') AND o.priority = n.priority)
  ) changes GROUP BY priority HAVING sum(d) <> 0
  ON CONFLICT (priority, shard) DO UPDATE SET n = task_wait_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_wait_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_wait_count (priority, shard, n)
  SELECT priority, pg_backend_pid() % 16, -count(*) FROM old_rows WHERE status IN ('pending', 'retrying')
  GROUP BY priority
  ON CONFLICT (priority, shard) DO UPDATE SET n = task_wait_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER task_wait_count_insert AFTER INSERT ON task
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_wait_count_insert();
CREATE TRIGGER task_wait_count_update AFTER UPDATE ON task
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION taskproc_wait_count_update();
CREATE TRIGGER task_wait_count_delete AFTER DELETE ON task
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_wait_count_delete();
"""


def upgrade() -> None:
    op.create_table(
        "task_wait_count",
        sa.Column("priority", sa.String(length=10), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("priority", "shard"),
    )
    # Writers wait while the counters are seeded, so no change falls between the count and the triggers.
    op.execute("LOCK TABLE task IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(
        "INSERT INTO task_wait_count (priority, shard, n) "
        "SELECT priority, 0, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY priority"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER task_wait_count_delete ON task")
    op.execute("DROP TRIGGER task_wait_count_update ON task")
    op.execute("DROP TRIGGER task_wait_count_insert ON task")
    op.execute("DROP FUNCTION taskproc_wait_count_delete(), taskproc_wait_count_update(), taskproc_wait_count_insert()")
    op.drop_table("task_wait_count")
