"""named queues: the queue of a task, pause state per queue, per-queue counters, a worker's queues

Revision ID: 0007
Revises: 0006

- `task.queue` (NOT NULL DEFAULT 'default'): with a constant default Postgres adds it as a catalog change, no
  rewrite of the task table.
- `queue`: one row per queue that was ever paused or resumed (a queue without a row is not paused). The pause
  lives here, not in Redis, so it survives restarts and a Redis flush: the claim statement refuses tasks of a
  paused queue.
- `task_queue_count`: per queue and status, the net number of tasks `pending`, `retrying` or `running`, kept by
  statement triggers like `task_count` (migration 0002), sharded by backend pid, so GET /queues reads counters,
  never the task table.
- `worker.queues`: the queues a worker takes from, written by its heartbeat; NULL for every queue (a worker
  older than this migration, or one started without TASKPROC_WORKER_QUEUES).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = """
CREATE FUNCTION taskproc_queue_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, shard, n)
  SELECT queue, status, pg_backend_pid() % 16, count(*) FROM new_rows
  WHERE status IN ('pending', 'retrying', 'running') GROUP BY queue, status
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_queue_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, shard, n)
  SELECT queue, status, pg_backend_pid() % 16, sum(d) FROM (
    SELECT n.queue, n.status, 1 AS d FROM new_rows n JOIN old_rows o USING (id)
      WHERE n.status IN ('pending', 'retrying', 'running') AND (n.status, n.queue) IS DISTINCT FROM (o.status, o.queue)
    UNION ALL
    SELECT o.queue, o.status, -1 FROM new_rows n JOIN old_rows o USING (id)
      WHERE o.status IN ('pending', 'retrying', 'running') AND (n.status, n.queue) IS DISTINCT FROM (o.status, o.queue)
  ) changes GROUP BY queue, status HAVING sum(d) <> 0
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE FUNCTION taskproc_queue_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, shard, n)
  SELECT queue, status, pg_backend_pid() % 16, -count(*) FROM old_rows
  WHERE status IN ('pending', 'retrying', 'running') GROUP BY queue, status
  ON CONFLICT (queue, status, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER task_queue_count_insert AFTER INSERT ON task
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_queue_count_insert();
CREATE TRIGGER task_queue_count_update AFTER UPDATE ON task
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION taskproc_queue_count_update();
CREATE TRIGGER task_queue_count_delete AFTER DELETE ON task
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION taskproc_queue_count_delete();
"""


def upgrade() -> None:
    op.add_column("task", sa.Column("queue", sa.String(64), nullable=False, server_default="default"))
    op.add_column("worker", sa.Column("queues", sa.ARRAY(sa.Text()), nullable=True))
    op.create_table(
        "queue",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("paused_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "task_queue_count",
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("queue", "status", "shard"),
    )
    # The list filter, and the oldest waiting task of a queue (GET /queues), are index probes.
    op.create_index("ix_task_queue_created", "task", ["queue", sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_index(
        "ix_task_queue_waiting",
        "task",
        ["queue", "run_at"],
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    )
    # Writers wait while the counters are seeded, so no change falls between the count and the triggers.
    op.execute("LOCK TABLE task IN SHARE ROW EXCLUSIVE MODE")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)
    op.execute(
        "INSERT INTO task_queue_count (queue, status, shard, n) SELECT queue, status, 0, count(*) FROM task "
        "WHERE status IN ('pending', 'retrying', 'running') GROUP BY queue, status"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER task_queue_count_delete ON task")
    op.execute("DROP TRIGGER task_queue_count_update ON task")
    op.execute("DROP TRIGGER task_queue_count_insert ON task")
    op.execute(
        "DROP FUNCTION taskproc_queue_count_delete(), taskproc_queue_count_update(), taskproc_queue_count_insert()"
    )
    op.drop_index("ix_task_queue_waiting", table_name="task")
    op.drop_index("ix_task_queue_created", table_name="task")
    op.drop_table("task_queue_count")
    op.drop_table("queue")
    op.drop_column("worker", "queues")
    op.drop_column("task", "queue")
