"""per-key limits: a task's concurrency key, each key's limit and running count, enforced by the claim itself

Revision ID: 0008
Revises: 0007

- `task.concurrency_key` (NULL: no limit applies): nullable with no default, so adding it rewrote no rows.
- `task_key`: one row per key that was ever claimed or given a limit: `running` (tasks of the key running now),
  `max_running`, the token bucket of its rate (`rate_count` per `rate_per_s`, `tokens` as of `refilled_at`), and
  `origin` ('api': PUT /api/v1/limits/{key}; 'type': a task type's declared default; NULL: no limit).
- The row trigger `taskproc_task_key` fires only when a keyed task's status changes. Into `running` it takes a
  slot and a token in one upsert of the key's row and, if the limit has no room, returns NULL, which makes
  Postgres skip that row of the claim statement: the claim is refused atomically with taking the job, and
  concurrent claims of one key queue on its row lock (each sees the count the one before it left). Out of
  `running`, by whatever statement (completion, failure, timeout, cancel, the reaper after a crash, a shutdown
  requeue), it gives the slot back. So the count is exact by construction, with no code path to forget.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tokens refill continuously at rate_count per rate_per_s, capped at rate_count; statement_timestamp() is the
# claim statement's own start (claims run in autocommit), the same for every row of one claim.
FUNCTION = """
CREATE FUNCTION taskproc_task_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  taken int;
BEGIN
  IF NEW.status = 'running' THEN
    INSERT INTO task_key AS k (key, running, updated_at) VALUES (NEW.concurrency_key, 1, statement_timestamp())
    ON CONFLICT (key) DO UPDATE SET
      running = k.running + 1,
      tokens = CASE WHEN k.rate_count IS NULL THEN NULL ELSE least(k.rate_count::float8,
        coalesce(k.tokens, k.rate_count) + greatest(0, extract(epoch FROM statement_timestamp() - k.refilled_at))
        * k.rate_count / k.rate_per_s) - 1 END,
      refilled_at = CASE WHEN k.rate_count IS NULL THEN NULL ELSE statement_timestamp() END
    WHERE (k.max_running IS NULL OR k.running < k.max_running)
      AND (k.rate_count IS NULL OR least(k.rate_count::float8, coalesce(k.tokens, k.rate_count)
        + greatest(0, extract(epoch FROM statement_timestamp() - k.refilled_at)) * k.rate_count / k.rate_per_s) >= 1)
    RETURNING 1 INTO taken;
    IF taken IS NULL THEN
      RETURN NULL;
    END IF;
  ELSIF OLD.status = 'running' THEN
    UPDATE task_key SET running = greatest(running - 1, 0) WHERE key = OLD.concurrency_key;
  END IF;
  RETURN NEW;
END $$;
"""

TRIGGER = """
CREATE TRIGGER taskproc_task_key BEFORE UPDATE OF status ON task FOR EACH ROW
  WHEN (NEW.concurrency_key IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION taskproc_task_key();
"""


def upgrade() -> None:
    op.add_column("task", sa.Column("concurrency_key", sa.String(200), nullable=True))
    op.create_table(
        "task_key",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("running", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("rate_count", sa.Integer(), nullable=True),
        sa.Column("rate_per_s", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("origin", sa.String(10), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER taskproc_task_key ON task")
    op.execute("DROP FUNCTION taskproc_task_key()")
    op.drop_table("task_key")
    op.drop_column("task", "concurrency_key")
