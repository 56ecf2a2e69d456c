"""per-key limits: a task's concurrency key and each key's limit, enforced by the claim itself

Revision ID: 0008
Revises: 0007

- `task.concurrency_key` (NULL: no limit applies): nullable with no default, so adding it rewrote no rows.
- `ix_task_key_running`: the running tasks of each key (a partial index, so it holds running keyed tasks only).
  A key's running count is a count over it: exact by construction, whatever statement took a task out of
  `running` (completion, failure, timeout, cancel, the reaper after a crash, a shutdown requeue), with nothing
  to give back and no row that every completion would have to lock.
- `task_key`: one row per key with a limit: `max_running`, and the token bucket of its rate (`rate_count` per
  `rate_per_s`, `tokens` as of `refilled_at`); `origin` says who set it ('api': PUT /api/v1/limits/{key};
  'type': a task type's declared default).
- The row trigger `taskproc_task_key` fires only when a keyed task starts running. For a key with a limit it
  takes the key's transaction-level advisory lock (so claims of one key queue one behind the other, each seeing
  what the one before it committed), counts the key's running tasks and takes a token; if the limit has no room
  it returns NULL, which makes Postgres skip that row of the claim statement. The claim is refused atomically
  with taking the job, and no number of workers claiming at once can overshoot. The claim statement takes the
  locks of all its keys first, in a fixed order, so two claims never deadlock on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Advisory lock space of the per-key claim locks: pg_advisory_xact_lock(KEY_LOCK, hashtext(key)) (the two-int4
# form, which never collides with the bigint locks of the reconciler and the scheduler).
KEY_LOCK = 7314  # written out in FUNCTION below; store.KEY_LOCK is the same

# Tokens refill continuously at rate_count per rate_per_s, capped at rate_count; statement_timestamp() is the
# claim statement's own start (claims run in autocommit), the same for every row of one claim.
FUNCTION = """
CREATE FUNCTION taskproc_task_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  lim record;
  n bigint;
  taken int;
BEGIN
  SELECT max_running, rate_count, rate_per_s INTO lim FROM task_key WHERE key = NEW.concurrency_key;
  IF NOT FOUND THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(7314, hashtext(NEW.concurrency_key));
  IF lim.max_running IS NOT NULL THEN
    -- A fresh snapshot (this function is volatile): it sees every claim of the key committed before our lock.
    SELECT count(*) INTO n FROM task WHERE concurrency_key = NEW.concurrency_key AND status = 'running';
    IF n >= lim.max_running THEN
      RETURN NULL;
    END IF;
  END IF;
  IF lim.rate_count IS NOT NULL THEN
    UPDATE task_key AS k SET
      tokens = least(k.rate_count::float8, coalesce(k.tokens, k.rate_count)
        + greatest(0, extract(epoch FROM statement_timestamp() - k.refilled_at)) * k.rate_count / k.rate_per_s) - 1,
      refilled_at = statement_timestamp()
    WHERE k.key = NEW.concurrency_key AND least(k.rate_count::float8, coalesce(k.tokens, k.rate_count)
      + greatest(0, extract(epoch FROM statement_timestamp() - k.refilled_at)) * k.rate_count / k.rate_per_s) >= 1
    RETURNING 1 INTO taken;
    IF taken IS NULL THEN
      RETURN NULL;
    END IF;
  END IF;
  RETURN NEW;
END $$;
"""

TRIGGER = """
CREATE TRIGGER taskproc_task_key BEFORE UPDATE OF status ON task FOR EACH ROW
  WHEN (NEW.concurrency_key IS NOT NULL AND NEW.status = 'running' AND OLD.status IS DISTINCT FROM 'running')
  EXECUTE FUNCTION taskproc_task_key();
"""


def upgrade() -> None:
    op.add_column("task", sa.Column("concurrency_key", sa.String(200), nullable=True))
    op.create_index(
        "ix_task_key_running",
        "task",
        ["concurrency_key"],
        postgresql_where=sa.text("status = 'running' AND concurrency_key IS NOT NULL"),
    )
    op.create_table(
        "task_key",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("rate_count", sa.Integer(), nullable=True),
        sa.Column("rate_per_s", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("origin", sa.String(10), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER taskproc_task_key ON task")
    op.execute("DROP FUNCTION taskproc_task_key()")
    op.drop_table("task_key")
    op.drop_index("ix_task_key_running", table_name="task")
    op.drop_column("task", "concurrency_key")
