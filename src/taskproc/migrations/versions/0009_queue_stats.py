"""per-queue stats: every status, priority and retries per queue; waiting tasks per queue and type

Revision ID: 0009
Revises: 0008

GET /api/v1/stats?queue= answers from counters as the unfiltered call does, never from the task table:
- `task_queue_count` (migration 0007: pending, retrying, running per queue) now counts every status, plus
  `_retried` (transitions into `retrying`, as in `task_count`), per queue *and priority*: a queue's counts by
  status, its waiting tasks by priority and its retries are sums of at most 7 x 3 x 16 rows.
- `task_type_waiting` (migration 0003: waiting tasks per type) gains `queue`, so the waiting tasks of one queue
  that no live worker serves are counted without a scan.
The trigger functions are replaced in place (the triggers that call them stay) and the counters re-seeded while
writers wait, as the migrations that made them did. Sums over every queue are what they were, so the readers
of 0007 and 0003 (GET /queues, /metrics, the unfiltered /stats) filter by status and read the same numbers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = """
CREATE OR REPLACE FUNCTION taskproc_queue_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, priority, shard, n)
  SELECT queue, status, priority, pg_backend_pid() % 16, count(*) FROM new_rows GROUP BY queue, status, priority
  ON CONFLICT (queue, status, priority, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

-- One join of the transition tables: each changed row counts +1 where it is now, -1 where it was, and +1
-- under `_retried` when it went into `retrying`.
CREATE OR REPLACE FUNCTION taskproc_queue_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, priority, shard, n)
  SELECT k.queue, k.status, k.priority, pg_backend_pid() % 16, sum(k.d)
  FROM new_rows n JOIN old_rows o USING (id)
  CROSS JOIN LATERAL (VALUES
    (n.queue, n.status::text, n.priority, 1),
    (o.queue, o.status::text, o.priority, -1),
    (n.queue, '_retried', n.priority, CASE WHEN n.status = 'retrying' AND o.status <> 'retrying' THEN 1 ELSE 0 END)
  ) AS k (queue, status, priority, d)
  WHERE (n.queue, n.status, n.priority) IS DISTINCT FROM (o.queue, o.status, o.priority)
  GROUP BY k.queue, k.status, k.priority HAVING sum(k.d) <> 0
  ON CONFLICT (queue, status, priority, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION taskproc_queue_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_queue_count (queue, status, priority, shard, n)
  SELECT queue, status, priority, pg_backend_pid() % 16, -count(*) FROM old_rows GROUP BY queue, status, priority
  ON CONFLICT (queue, status, priority, shard) DO UPDATE SET n = task_queue_count.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION taskproc_type_waiting_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (queue, type, shard, n)
  SELECT queue, type, pg_backend_pid() % 16, count(*) FROM new_rows
  WHERE status IN ('pending', 'retrying') GROUP BY queue, type
  ON CONFLICT (queue, type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION taskproc_type_waiting_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (queue, type, shard, n)
  SELECT k.queue, k.type, pg_backend_pid() % 16, sum(k.d)
  FROM new_rows n JOIN old_rows o USING (id)
  CROSS JOIN LATERAL (VALUES
    (n.queue, n.type, CASE WHEN n.status IN ('pending', 'retrying') THEN 1 ELSE 0 END),
    (o.queue, o.type, CASE WHEN o.status IN ('pending', 'retrying') THEN -1 ELSE 0 END)
  ) AS k (queue, type, d)
  WHERE (n.status IN ('pending', 'retrying')) <> (o.status IN ('pending', 'retrying'))
    OR (n.queue, n.type) IS DISTINCT FROM (o.queue, o.type)
  GROUP BY k.queue, k.type HAVING sum(k.d) <> 0
  ON CONFLICT (queue, type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION taskproc_type_waiting_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO task_type_waiting (queue, type, shard, n)
  SELECT queue, type, pg_backend_pid() % 16, -count(*) FROM old_rows
  WHERE status IN ('pending', 'retrying') GROUP BY queue, type
  ON CONFLICT (queue, type, shard) DO UPDATE SET n = task_type_waiting.n + EXCLUDED.n;
  RETURN NULL;
END $$;
"""

SEED = """
INSERT INTO task_queue_count (queue, status, priority, shard, n)
SELECT queue, status, priority, 0, count(*) FROM task GROUP BY queue, status, priority;
INSERT INTO task_queue_count (queue, status, priority, shard, n)
SELECT t.queue, '_retried', t.priority, 0, count(*) FROM task_event e JOIN task t ON t.id = e.task_id
WHERE e.status = 'retrying' GROUP BY t.queue, t.priority;
INSERT INTO task_type_waiting (queue, type, shard, n)
SELECT queue, type, 0, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY queue, type;
"""


def _set_keys(table: str, keys: list[str]) -> None:
    op.drop_constraint(f"{table}_pkey", table, type_="primary")
    op.create_primary_key(f"{table}_pkey", table, keys)


def upgrade() -> None:
    # Writers wait while the counters are rebuilt, so no change falls between the count and the new triggers.
    op.execute("LOCK TABLE task IN SHARE ROW EXCLUSIVE MODE")
    op.execute("DELETE FROM task_queue_count")
    op.execute("DELETE FROM task_type_waiting")
    op.add_column("task_queue_count", sa.Column("priority", sa.String(10), nullable=False))
    _set_keys("task_queue_count", ["queue", "status", "priority", "shard"])
    op.add_column("task_type_waiting", sa.Column("queue", sa.String(64), nullable=False))
    # Queue first: a queue's filtered /stats reads one key range.
    _set_keys("task_type_waiting", ["queue", "type", "shard"])
    op.execute(FUNCTIONS)
    op.execute(SEED)


def _revision(filename: str) -> ModuleType:
    """An earlier revision's module, for the trigger functions a downgrade puts back (one copy of each)."""
    spec = importlib.util.spec_from_file_location(
        f"taskproc_revision_{filename[:4]}", Path(__file__).with_name(filename)
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    op.execute("LOCK TABLE task IN SHARE ROW EXCLUSIVE MODE")
    op.execute("DELETE FROM task_queue_count")
    op.execute("DELETE FROM task_type_waiting")
    op.drop_constraint("task_type_waiting_pkey", "task_type_waiting", type_="primary")
    op.drop_column("task_type_waiting", "queue")
    op.create_primary_key("task_type_waiting_pkey", "task_type_waiting", ["type", "shard"])
    op.drop_constraint("task_queue_count_pkey", "task_queue_count", type_="primary")
    op.drop_column("task_queue_count", "priority")
    op.create_primary_key("task_queue_count_pkey", "task_queue_count", ["queue", "status", "shard"])
    for filename in ("0003_worker_outcomes.py", "0007_queues.py"):
        functions = str(_revision(filename).FUNCTIONS)
        op.execute(functions.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(
        "INSERT INTO task_queue_count (queue, status, shard, n) SELECT queue, status, 0, count(*) FROM task "
        "WHERE status IN ('pending', 'retrying', 'running') GROUP BY queue, status"
    )
    op.execute(
        "INSERT INTO task_type_waiting (type, shard, n) "
        "SELECT type, 0, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY type"
    )
