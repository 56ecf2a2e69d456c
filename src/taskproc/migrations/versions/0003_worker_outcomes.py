"""worker outcomes, cancels and type advertisement

Revision ID: 0003
Revises: 0002

- `worker.task_types`: the task types a worker serves, {name: fingerprint of its payload schema}, written by its
  heartbeat. NULL for a worker that predates it (assumed to serve everything: it cannot say).
- `task.shutdown_requeues`: how often a worker's shutdown handed the task back; past
  TASKPROC_MAX_SHUTDOWN_REQUEUES a shutdown requeue spends an attempt, so a flapping scale cannot restart a
  task forever.
- `task_type_waiting`: waiting (pending or retrying) tasks per type, kept by statement triggers like
  `task_count` (sharded by backend pid), so /stats can count the tasks no live worker serves without a scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = """
CREATE FUNCTION taskproc_type_waiting_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (type, shard, n)
  SELECT type, pg_backend_pid() % 16, count(*) FROM new_rows WHERE status IN ('pending', 'retrying') GROUP BY type
  ON CONFLICT (type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_type_waiting_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (type, shard, n)
  SELECT type, pg_backend_pid() % 16, sum(d) FROM (
    SELECT n.type, CASE WHEN n.status IN ('pending', 'retrying') THEN 1 ELSE -1 END AS d
    FROM new_rows n JOIN old_rows o USING (id)
    WHERE (n.status IN ('pending', 'retrying')) <> (o.status IN ('pending', 'retrying'))
  ) changes GROUP BY type HAVING sum(d) <> 0
  ON CONFLICT (type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_type_waiting_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (type, shard, n)
  SELECT type, pg_backend_pid() % 16, -count(*) FROM old_rows WHERE status IN ('pending', 'retrying') GROUP BY type
  ON CONFLICT (type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER task_type_waiting_insert AFTER INSERT ON task
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_type_waiting_insert();
CREATE TRIGGER task_type_waiting_update AFTER UPDATE ON task
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION taskproc_type_waiting_update();
CREATE TRIGGER task_type_waiting_delete AFTER DELETE ON task
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_type_waiting_delete();
"""


def upgrade() -> None:
    op.add_column("worker", sa.Column("task_types", JSONB(), nullable=True))
    op.add_column("task", sa.Column("shutdown_requeues", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "task_type_waiting",
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("type", "shard"),
    )
    # Writers wait while the counters are seeded, so no change falls between the count and the triggers.
    op.execute("LOCK TABLE task IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(
        "INSERT INTO task_type_waiting (type, shard, n) "
        "SELECT type, 0, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY type"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER task_type_waiting_delete ON task")
    op.execute("DROP TRIGGER task_type_waiting_update ON task")
    op.execute("DROP TRIGGER task_type_waiting_insert ON task")
    op.execute(
        "DROP FUNCTION taskproc_type_waiting_delete(), taskproc_type_waiting_update(), taskproc_type_waiting_insert()"
    )
    op.drop_table("task_type_waiting")
    op.drop_column("task", "shutdown_requeues")
    op.drop_column("worker", "task_types")
