"""Tables and API models: TaskBase / TaskCreate / Task (table) / TaskPublic, and the event history."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from pydantic import ConfigDict, field_serializer, field_validator
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

MAX_TIMEOUT_S = 86_400.0
MAX_DELAY_S = 30 * 86_400.0
MAX_RESULT_TTL_S = 365 * 86_400.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


class TaskStatus(StrEnum):
    pending = "pending"
    running = "running"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"


TERMINAL = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.canceled})
WAITING = frozenset({TaskStatus.pending, TaskStatus.retrying})


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


QUEUE_PATTERN = r"^[a-z0-9_-]{1,64}$"
DEFAULT_QUEUE = "default"
MAX_CONCURRENCY_KEY = 200


class TaskBase(SQLModel):
    type: str = Field(min_length=1, max_length=100, description="Registered task type, see /api/v1/task-types.")
    priority: Priority = Field(default=Priority.normal, description="high, normal or low.")
    queue: str = Field(
        default=DEFAULT_QUEUE,
        description="The named queue (`[a-z0-9_-]{1,64}`); priority and FIFO order hold within a queue.",
        schema_extra={"pattern": QUEUE_PATTERN},
    )

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        if not re.fullmatch(QUEUE_PATTERN, value):
            raise ValueError("use 1 to 64 lower-case letters, digits, '_' and '-'")
        return value


class TaskCreate(TaskBase):
    """Body of POST /api/v1/tasks."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    payload: dict[str, Any] = Field(default_factory=dict, description="Input, validated by the type's schema.")
    max_retries: int | None = Field(default=None, ge=0, le=20, description="Retries after the first attempt.")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Per-attempt timeout in seconds.")
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S, description="Run no earlier than this.")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="Same key, same task: never created twice."
    )
    result_ttl_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RESULT_TTL_S,
        description="Drop the result this many seconds after the task finished (the task and its history stay; "
        "`result_expired` says so); default: its task type's `result_ttl_s`, else kept until the task is purged.",
    )
    concurrency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CONCURRENCY_KEY,
        description="The key whose limit (PUT /api/v1/limits/{key}) this task counts against; default: the one its "
        "task type derives from the payload, if it declares one.",
    )
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="An http(s) URL that gets the task's task.completed, task.failed and task.canceled webhooks "
        "(see docs/webhooks.md); private targets are refused unless TASKPROC_WEBHOOK_ALLOW_PRIVATE is set.",
    )


class TaskBatchCreate(SQLModel):
    """Body of POST /api/v1/tasks/batch."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    tasks: list[TaskCreate] = Field(min_length=1, max_length=1000)


class TaskUpdate(SQLModel):
    """Body of PATCH /api/v1/tasks/{id}."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    priority: Priority


class Task(TaskBase, table=True):
    """A task row: its current state. History lives in `task_event`."""

    __tablename__ = "task"
    __table_args__ = (
        sa.Index("ix_task_created", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index("ix_task_status_created", "status", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index("ix_task_type_created", "type", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index(
            "ix_task_waiting",
            "id",
            postgresql_where=sa.text("status IN ('pending', 'retrying')"),
        ),
        sa.Index(
            "ix_task_ready",
            "priority",
            "run_at",
            postgresql_where=sa.text("status IN ('pending', 'retrying')"),
        ),
        sa.Index("ix_task_running_worker", "worker_id", postgresql_where=sa.text("status = 'running'")),
        # A schedule's history (GET /api/v1/tasks?schedule=...) and its runs still waiting or running (overlap).
        sa.Index(
            "ix_task_schedule_created",
            "schedule",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
            postgresql_where=sa.text("schedule IS NOT NULL"),
        ),
        sa.Index(
            "ix_task_schedule_live",
            "schedule",
            postgresql_where=sa.text("schedule IS NOT NULL AND status IN ('pending', 'running', 'retrying')"),
        ),
        # A queue's tasks (GET /api/v1/tasks?queue=...) and its oldest waiting one (GET /api/v1/queues).
        sa.Index("ix_task_queue_created", "queue", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index(
            "ix_task_queue_waiting", "queue", "run_at", postgresql_where=sa.text("status IN ('pending', 'retrying')")
        ),
        # A key's running tasks (migration 0008): what its limit counts.
        sa.Index(
            "ix_task_key_running",
            "concurrency_key",
            postgresql_where=sa.text("status = 'running' AND concurrency_key IS NOT NULL"),
        ),
        sa.Index(
            "ix_task_terminal_finished",
            "finished_at",
            postgresql_where=sa.text("status IN ('completed', 'failed', 'canceled')"),
        ),
        # Results still waiting to expire (migration 0012): what the retention pass looks at.
        sa.Index(
            "ix_task_result_expiring",
            "finished_at",
            postgresql_where=sa.text("result_ttl_s IS NOT NULL AND result IS NOT NULL AND finished_at IS NOT NULL"),
        ),
        sa.Index(
            "uq_task_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
        sa.CheckConstraint("priority IN ('high', 'normal', 'low')", name="ck_task_priority"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'canceled')",
            name="ck_task_status",
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    type: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    priority: Priority = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(JSONB, nullable=False))
    status: TaskStatus = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False))
    max_retries: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    timeout_s: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    result: Any | None = Field(default=None, sa_column=sa.Column(JSONB, nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    # Bumped whenever the task is (re)enqueued: a worker only acts on the job of the current generation.
    generation: int = Field(default=1, sa_column=sa.Column(sa.Integer, nullable=False))
    run_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    worker_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    cancel_requested: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False))
    # How often a worker's shutdown handed the task back (migration 0003); see TASKPROC_MAX_SHUTDOWN_REQUEUES.
    shutdown_requeues: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    # The schedule whose fire (or trigger) created the task (migration 0006); NULL for a task submitted directly.
    schedule: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    # Migration 0007; a constant default, so adding it rewrote no rows.
    queue: str = Field(
        default=DEFAULT_QUEUE, sa_column=sa.Column(sa.String(64), nullable=False, server_default=DEFAULT_QUEUE)
    )
    # Migration 0008: the per-key limit the task counts against (table task_key), NULL for none.
    concurrency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(200), nullable=True))
    # Migration 0011: where the task's own webhooks go (taskproc.webhooks), NULL for none.
    callback_url: str | None = Field(default=None, sa_column=sa.Column(sa.String(2000), nullable=True))
    # Migration 0012: the result is dropped this long after the task finished (NULL: kept), and when it was.
    result_ttl_s: float | None = Field(default=None, sa_column=sa.Column(sa.Float, nullable=True))
    result_expired_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    # Migration 0012: attempts lost to a worker that died, and whether that failed the task (crash quarantine).
    lost_attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    quarantined: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    # Migration 0013 (taskproc.tracing): the submit's W3C trace context, and the span of the last failed attempt.
    traceparent: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attempt_traceparent: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class TaskWaiting(SQLModel):
    """Why a waiting task is not running yet, when the API knows of a reason."""

    reason: str = Field(
        description="`queue_paused`: its queue is paused; `no_worker`: no live worker serves the task's type (say, "
        "mid rolling upgrade) or takes from its queue; `delayed`: waiting out its delay until `until`; `backoff`: "
        "waiting out a retry backoff until `until`; `concurrency_limited`: its `key` has `running` tasks running "
        "of its limit `limit`; `rate_limited`: its `key` has used its rate, the next token comes at `until`; "
        "`ready`: due, waiting for a free worker slot (`position`: ready jobs of its queue taken before it, on a "
        "single task's read)."
    )
    until: datetime | None = Field(default=None, description="When the wait ends, if known.")
    position: int | None = Field(
        default=None, ge=0, description="For `ready`: how many ready jobs of its queue are taken before it."
    )
    detail: str | None = Field(default=None, description="A sentence for people.")
    key: str | None = Field(default=None, description="For `concurrency_limited` and `rate_limited`: the key.")
    running: int | None = Field(default=None, description="For `concurrency_limited`: tasks of the key running.")
    limit: int | None = Field(default=None, description="For `concurrency_limited`: the key's `max_running`.")

    @field_serializer("until")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class TaskPublic(TaskBase):
    """A task as the API returns it."""

    id: uuid.UUID
    payload: dict[str, Any]
    status: TaskStatus
    attempts: int
    max_retries: int
    timeout_s: float
    result: Any | None
    error: str | None
    idempotency_key: str | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    schedule: str | None = Field(default=None, description="The schedule that created the task, if one did.")
    concurrency_key: str | None = Field(default=None, description="The key whose limit the task counts against.")
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace of the submit and the attempts (W3C, 32 hex digits): the caller's "
        "`traceparent` trace, or the API's when it traces; null when neither.",
    )
    callback_url: str | None = Field(default=None, description="Where the task's own webhooks go, if anywhere.")
    waiting: TaskWaiting | None = Field(
        default=None, description="Set on a pending or retrying task that waits for something besides a free slot."
    )
    result_ttl_s: float | None = Field(default=None, description="The result is dropped this long after finishing.")
    result_expires_at: datetime | None = Field(
        default=None, description="When the result is (or was) dropped: `finished_at` + `result_ttl_s`."
    )
    result_expired: bool = Field(
        default=False, description="The result was dropped after its `result_ttl_s`: `result` is null for good."
    )
    lost_attempts: int = Field(
        default=0, description="Attempts lost to a worker that died while running it (counted in `attempts` too)."
    )
    quarantined: bool = Field(
        default=False,
        description="Failed because it killed its worker TASKPROC_MAX_LOST_ATTEMPTS times (a poison task), not by "
        "a handler error; `error` says so.",
    )

    @field_serializer("run_at", "created_at", "started_at", "finished_at", "updated_at", "result_expires_at")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class TaskList(SQLModel):
    items: list[TaskPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class TaskBatchPublic(SQLModel):
    items: list[TaskPublic]


class TaskEvent(SQLModel, table=True):
    """One state change of a task, appended by whoever made it."""

    __tablename__ = "task_event"
    __table_args__ = (
        sa.Index("ix_task_event_task", "task_id", "id"),
        sa.Index("ix_task_event_retrying", "id", postgresql_where=sa.text("status = 'retrying'")),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    task_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False)
    )
    at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    attempt: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))


class TaskEventPublic(SQLModel):
    at: datetime
    status: TaskStatus
    attempt: int
    detail: str | None

    @field_serializer("at")
    def _utc(self, value: datetime) -> str | None:
        return _iso(value)


class Worker(SQLModel, table=True):
    """A live worker process: its heartbeat is `expires_at` moving forward."""

    __tablename__ = "worker"

    id: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    hostname: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    pid: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    started_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    # The task types it serves, {name: payload schema fingerprint} (migration 0003); NULL: a worker too old to say.
    task_types: dict[str, str] | None = Field(default=None, sa_column=sa.Column(JSONB, nullable=True))
    # The queues it takes from (migration 0007); NULL: every queue.
    queues: list[str] | None = Field(default=None, sa_column=sa.Column(sa.ARRAY(sa.Text()), nullable=True))


class Queue(SQLModel, table=True):
    """Pause state of a named queue (migration 0007); a queue without a row is not paused."""

    __tablename__ = "queue"

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    paused: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    paused_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class TaskQueueCount(SQLModel, table=True):
    """Per queue, status and priority, the net number of tasks (and `_retried`, transitions into retrying), kept
    by statement triggers (migrations 0007, 0009); sharded by backend pid."""

    __tablename__ = "task_queue_count"

    queue: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    status: str = Field(sa_column=sa.Column(sa.String(20), primary_key=True))
    priority: str = Field(sa_column=sa.Column(sa.String(10), primary_key=True))
    shard: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    n: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class TaskTypeWaiting(SQLModel, table=True):
    """Waiting (pending or retrying) tasks per queue and type, kept by statement triggers (migrations 0003,
    0009); sharded."""

    __tablename__ = "task_type_waiting"

    queue: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    type: str = Field(sa_column=sa.Column(sa.String(100), primary_key=True))
    shard: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    n: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class TaskCount(SQLModel, table=True):
    """Per-status task counters kept by statement triggers (migration 0002); sharded by backend pid."""

    __tablename__ = "task_count"

    status: str = Field(sa_column=sa.Column(sa.String(10), primary_key=True))
    shard: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    n: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class TaskWaitCount(SQLModel, table=True):
    """Per-priority count of pending and retrying tasks (delayed included), kept by statement triggers
    (migration 0005); sharded by backend pid."""

    __tablename__ = "task_wait_count"

    priority: str = Field(sa_column=sa.Column(sa.String(10), primary_key=True))
    shard: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    n: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class ReconcileCursor(SQLModel, table=True):
    """Where the reconciler's scan got to (migration 0004), shared by every process that may take its lock."""

    __tablename__ = "reconcile_cursor"

    name: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    last_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    updated_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))
    )


class TaskCounts(SQLModel):
    pending: int = 0
    running: int = 0
    retrying: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    total: int = 0


class QueueCounts(SQLModel):
    high: int = 0
    normal: int = 0
    low: int = 0


class Stats(SQLModel):
    """Service-wide numbers, or one queue's with `?queue=` (then every count is of that queue's tasks)."""

    tasks: TaskCounts
    queue: QueueCounts = Field(
        description="Tasks waiting to run, by priority: pending or retrying, including those whose delay or retry "
        "backoff has not run out yet (until 0.1.0 only those due now were counted; that count read every waiting "
        "row, while this one is kept by triggers and costs the same at any backlog)."
    )
    retried_total: int = Field(
        description="Retries scheduled since the database was created (of tasks not deleted since, with `queue`)."
    )
    workers: int = Field(
        description="Live worker processes (heartbeat within the lease); with `queue`, those that take from it."
    )
    waiting_no_worker: int = Field(
        default=0, description="Waiting tasks whose type no live worker serves (they run once one that does starts)."
    )
    waiting_no_queue_worker: int = Field(
        default=0,
        description="Waiting tasks of queues no live worker takes from (they run once one that does starts).",
    )


class QueuePublic(SQLModel):
    """A named queue as GET /api/v1/queues returns it."""

    name: str
    paused: bool = Field(description="Nothing new starts in a paused queue; running tasks finish.")
    paused_at: datetime | None = Field(default=None, description="When it was paused, while it is.")
    ready: int = Field(description="Tasks due and not started (paused queues keep theirs here).")
    deferred: int = Field(description="Tasks waiting out a delay or a retry backoff.")
    running: int
    oldest_ready_age_s: float | None = Field(
        description="How long the queue's longest-waiting due task has been due, in seconds; null if none is."
    )
    workers: int = Field(description="Live workers that take from this queue.")

    @field_serializer("paused_at")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class TaskTypePublic(SQLModel):
    name: str
    description: str
    payload_schema: dict[str, Any]
    result_ttl_s: float | None = Field(
        default=None, description="Its tasks' results are dropped this long after finishing, unless a task says."
    )


# ---- schedules (migration 0006) ---------------------------------------------------------------------------------

SCHEDULE_NAME = r"^[a-z0-9_-]{1,64}$"


class Overlap(StrEnum):
    """What a fire does while the schedule's previous run still waits or runs."""

    allow = "allow"
    skip = "skip"
    cancel_previous = "cancel_previous"


class ScheduleTask(TaskBase):
    """The task each fire creates: a task submission without delay or idempotency key (the scheduler's own
    key, one task per schedule and fire time, stands in for it)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    payload: dict[str, Any] = Field(default_factory=dict, description="Input, validated by the type's schema.")
    max_retries: int | None = Field(default=None, ge=0, le=20, description="Retries after the first attempt.")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Per-attempt timeout in seconds.")


def _cron(value: str) -> str:
    from taskproc.cron import CronError, parse_expression

    try:
        return parse_expression(value)
    except CronError as exc:
        raise ValueError(str(exc)) from None


def _timezone(value: str) -> str:
    from taskproc.cron import CronError, zone

    try:
        zone(value)
    except CronError as exc:
        raise ValueError(str(exc)) from None
    return value


class ScheduleCreate(SQLModel):
    """Body of POST /api/v1/schedules."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    name: str = Field(
        min_length=1, max_length=64, description="Unique name: 1 to 64 lower-case letters, digits, `_` and `-`."
    )
    cron: str = Field(
        min_length=1,
        max_length=200,
        description="Five cron fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, "
        "@monthly, @yearly.",
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA time zone of the cron times.")
    task: ScheduleTask
    overlap: Overlap = Field(default=Overlap.allow, description="allow, skip or cancel_previous.")
    catchup_s: float = Field(
        default=0.0, ge=0, le=MAX_DELAY_S, description="A fire missed by up to this long (downtime) still runs, once."
    )
    enabled: bool = Field(default=True, description="false: paused, no fires until enabled again.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(SCHEDULE_NAME, value):
            raise ValueError("use 1 to 64 lower-case letters, digits, '_' and '-'")
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        return _cron(value)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        return _timezone(value)


class ScheduleUpdate(SQLModel):
    """Body of PATCH /api/v1/schedules/{name}: the fields to change."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    cron: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    task: ScheduleTask | None = None
    overlap: Overlap | None = None
    catchup_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S)
    enabled: bool | None = None

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        return None if value is None else _cron(value)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        return None if value is None else _timezone(value)


class SchedulePublic(SQLModel):
    """A schedule as the API returns it."""

    name: str
    cron: str
    timezone: str
    task: ScheduleTask
    overlap: Overlap
    catchup_s: float
    enabled: bool
    next_run_at: datetime | None = Field(description="The next fire time (UTC); null while paused.")
    last_run_at: datetime | None = Field(description="When a fire or a trigger last created a task.")
    last_task_id: uuid.UUID | None = Field(default=None, description="The newest task the schedule created.")
    last_task_status: TaskStatus | None = Field(default=None, description="That task's status now.")
    fired_total: int = Field(description="Fires that created a task (triggers included).")
    skipped_total: int = Field(description="Fires skipped by `overlap: skip`, or refused (an invalid payload).")
    missed_total: int = Field(description="Fire times that passed while no scheduler ran, beyond `catchup_s`.")
    last_skipped_at: datetime | None = Field(description="The fire time of the last skipped or missed fire.")
    last_skip_reason: str | None = Field(description="Why it did not run.")
    created_at: datetime
    updated_at: datetime

    @field_serializer("next_run_at", "last_run_at", "last_skipped_at", "created_at", "updated_at")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class ScheduleFirePublic(SQLModel):
    """One fire time of a schedule and what became of it."""

    fire_at: datetime
    outcome: str = Field(description="fired, skipped (overlap), missed (downtime) or invalid (payload refused).")
    detail: str | None
    at: datetime

    @field_serializer("fire_at", "at")
    def _utc(self, value: datetime) -> str | None:
        return _iso(value)


class Schedule(SQLModel, table=True):
    """A durable cron schedule (migration 0006)."""

    __tablename__ = "schedule"
    __table_args__ = (
        sa.Index("ix_schedule_due", "next_run_at", postgresql_where=sa.text("enabled")),
        sa.CheckConstraint("overlap IN ('allow', 'skip', 'cancel_previous')", name="ck_schedule_overlap"),
    )

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    cron: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    timezone: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    task: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))
    overlap: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    catchup_s: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    next_run_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    last_run_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    fired_total: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    skipped_total: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    missed_total: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    last_skipped_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    last_skip_reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class ScheduleFire(SQLModel, table=True):
    """One fire time of a schedule and its outcome: the primary key makes each fire happen at most once."""

    __tablename__ = "schedule_fire"
    __table_args__ = (sa.Index("ix_schedule_fire_at", "at"),)

    schedule: str = Field(
        sa_column=sa.Column(sa.String(64), sa.ForeignKey("schedule.name", ondelete="CASCADE"), primary_key=True)
    )
    fire_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    outcome: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


# ---- per-key limits (migration 0008) ----------------------------------------------------------------------------


class LimitOrigin(StrEnum):
    """Who set a key's limit: a PUT, or the default a task type declares (applied when one of its tasks is
    submitted, never over a PUT)."""

    api = "api"
    type = "type"


class Rate(SQLModel):
    """At most `count` tasks of the key start per `per_s` seconds (a token bucket: bursts up to `count`)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    count: int = Field(ge=1, le=1_000_000)
    per_s: float = Field(gt=0, le=86_400.0 * 366)


class LimitPut(SQLModel):
    """Body of PUT /api/v1/limits/{key}: at least one of the two."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    max_running: int | None = Field(default=None, ge=1, le=1_000_000, description="Most tasks of the key running.")
    rate: Rate | None = Field(default=None, description="Most tasks of the key started per period.")


class LimitPublic(SQLModel):
    """A key's limit and where it stands now."""

    key: str
    max_running: int | None
    rate: Rate | None
    running: int = Field(description="Tasks of the key running now.")
    tokens: float | None = Field(description="Starts the rate allows right now (null without a rate).")
    origin: LimitOrigin
    updated_at: datetime

    @field_serializer("updated_at")
    def _utc(self, value: datetime) -> str | None:
        return _iso(value)


class TaskKey(SQLModel, table=True):
    """A concurrency key's limit (migration 0008). The row trigger taskproc_task_key on task enforces it in the
    claim statement, under the key's advisory lock, against a count of the key's running tasks."""

    __tablename__ = "task_key"

    key: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    max_running: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    rate_count: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    rate_per_s: float | None = Field(default=None, sa_column=sa.Column(sa.Float, nullable=True))
    tokens: float | None = Field(default=None, sa_column=sa.Column(sa.Float, nullable=True))
    refilled_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    origin: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


# ---- webhooks (migration 0011) ----------------------------------------------------------------------------------


class WebhookEventType(StrEnum):
    """What a webhook subscribes to: a task entering one of these states."""

    running = "task.running"
    retrying = "task.retrying"
    completed = "task.completed"
    failed = "task.failed"
    canceled = "task.canceled"


class DeliveryStatus(StrEnum):
    pending = "pending"  # not delivered yet: its next attempt is due at `next_attempt_at`
    delivered = "delivered"  # the receiver answered 2xx
    failed = "failed"  # every attempt failed until the delivery expired (a day by default)


class WebhookFilter(SQLModel):
    """Only tasks that match every list given (a list given is one of its values)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    type: list[str] | None = Field(default=None, min_length=1, max_length=100, description="Task types.")
    queue: list[str] | None = Field(default=None, min_length=1, max_length=100, description="Queues.")


WEBHOOK_SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{32,128}={0,2}$"  # noqa: S105 - a pattern, not a secret


class WebhookCreate(SQLModel):
    """Body of POST /api/v1/webhooks."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="The http(s) URL that gets the deliveries; private, loopback and link-local targets are refused "
        "unless TASKPROC_WEBHOOK_ALLOW_PRIVATE is set.",
    )
    events: list[WebhookEventType] = Field(min_length=1, max_length=5, description="The event types to deliver.")
    filter: WebhookFilter | None = Field(default=None, description="Only the tasks that match it.")
    secret: str | None = Field(
        default=None,
        schema_extra={"pattern": WEBHOOK_SECRET_PATTERN},
        description="The Standard Webhooks signing secret (`whsec_` and base64 of 24 to 96 bytes); one is generated "
        "when none is given. Returned only by this call.",
    )

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(WEBHOOK_SECRET_PATTERN, value):
            raise ValueError("use whsec_ and the base64 of 24 to 96 random bytes")
        return value


class WebhookPublic(SQLModel):
    """A webhook as the API returns it (without its secret)."""

    id: uuid.UUID
    url: str
    events: list[WebhookEventType]
    filter: WebhookFilter | None
    created_at: datetime

    @field_serializer("created_at")
    def _utc(self, value: datetime) -> str | None:
        return _iso(value)


class WebhookCreated(WebhookPublic):
    """The webhook just created, with the secret that signs its deliveries (shown this once)."""

    secret: str


class DeliveryAttempt(SQLModel):
    """One attempt at a delivery."""

    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null if there was no answer.")
    latency_ms: float
    error: str | None = Field(description="Why it failed, when it did.")

    @field_serializer("at")
    def _utc(self, value: datetime) -> str | None:
        return _iso(value)


class WebhookDeliveryPublic(SQLModel):
    """One event to deliver to one target, and what became of it."""

    id: uuid.UUID = Field(description="Also its `webhook-id` header: the same on every attempt and redelivery.")
    webhook_id: uuid.UUID | None = Field(description="Null for a delivery to a task's `callback_url`.")
    task_id: uuid.UUID | None
    url: str
    event: WebhookEventType
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending deliveries only).")
    expires_at: datetime = Field(description="No attempt is made after this; the delivery is then failed.")
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    attempt_log: list[DeliveryAttempt] = Field(description="The latest attempts, oldest first.")
    created_at: datetime

    @field_serializer("next_attempt_at", "expires_at", "last_attempt_at", "created_at")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class Webhook(SQLModel, table=True):
    """A webhook subscription (migration 0011)."""

    __tablename__ = "webhook"

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, primary_key=True))
    url: str = Field(sa_column=sa.Column(sa.String(2000), nullable=False))
    events: list[str] = Field(sa_column=sa.Column(JSONB, nullable=False))
    filter: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(JSONB, nullable=True))
    # Kept as given: HMAC signing needs the secret itself, not a hash of it.
    secret: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """The outbox (migration 0011): one event for one target, with its attempts so far."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.Index("ix_webhook_delivery_due", "next_attempt_at", postgresql_where=sa.text("status = 'pending'")),
        sa.Index("ix_webhook_delivery_webhook", "webhook_id", sa.text("created_at DESC")),
        sa.Index("ix_webhook_delivery_created", "created_at"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_delivery_status"),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, primary_key=True))
    webhook_id: uuid.UUID | None = Field(
        default=None, sa_column=sa.Column(sa.Uuid, sa.ForeignKey("webhook.id", ondelete="CASCADE"), nullable=True)
    )
    # No foreign key: a delivery's record outlives a deleted task.
    task_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid, nullable=True))
    url: str = Field(sa_column=sa.Column(sa.String(2000), nullable=False))
    event: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    last_attempt_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    last_status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    last_latency_ms: float | None = Field(default=None, sa_column=sa.Column(sa.Float, nullable=True))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attempt_log: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"))
    )
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


class WebhookCursor(SQLModel, table=True):
    """Where the webhook dispatcher's read of task_event got to (migration 0011), and the ids below it that were
    still uncommitted then (`gaps`: id -> until when they are waited for, epoch seconds)."""

    __tablename__ = "webhook_cursor"

    name: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    last_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    gaps: dict[str, float] = Field(
        default_factory=dict, sa_column=sa.Column(JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    updated_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()"))
    )


# ---- bulk actions (migration 0010) ------------------------------------------------------------------------------


class BulkAction(StrEnum):
    retry = "retry"
    cancel = "cancel"
    delete = "delete"
    set_priority = "set_priority"


class BulkStatus(StrEnum):
    running = "running"
    completed = "completed"
    failed = "failed"


class BulkFilter(SQLModel):
    """Which tasks: the list's filters (all optional; AND-ed)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    status: TaskStatus | None = None
    type: str | None = Field(default=None, min_length=1, max_length=100)
    priority: Priority | None = None
    queue: str | None = Field(default=None, schema_extra={"pattern": QUEUE_PATTERN})
    schedule: str | None = Field(default=None, min_length=1, max_length=64)
    created_before: datetime | None = None
    created_after: datetime | None = None

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(QUEUE_PATTERN, value):
            raise ValueError("use 1 to 64 lower-case letters, digits, '_' and '-'")
        return value

    @field_validator("created_before", "created_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. a trailing Z)")
        return value

    @field_serializer("created_before", "created_after")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class BulkCreate(SQLModel):
    """Body of POST /api/v1/tasks/bulk."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    action: BulkAction
    filter: BulkFilter = Field(default_factory=BulkFilter)
    priority: Priority | None = Field(default=None, description="For `set_priority`: the new priority.")
    dry_run: bool = Field(default=False, description="Only count the tasks the filter matches now.")


class BulkCount(SQLModel):
    """What a dry run answers."""

    action: BulkAction
    filter: BulkFilter
    total: int = Field(description="Tasks the filter matches now.")
    dry_run: bool = True


class BulkPublic(SQLModel):
    """A bulk operation: its progress, and the audit record of who asked for what and when."""

    id: uuid.UUID
    action: BulkAction
    filter: BulkFilter
    priority: Priority | None
    status: BulkStatus
    total: int = Field(description="Tasks the filter matched when the operation was created.")
    done: int = Field(description="Tasks the action was applied to so far.")
    failed: int = Field(description="Matched tasks whose state no longer allowed the action when their turn came.")
    requested_by: str = Field(description="Who asked: `key:<fingerprint of the API key>`, or `anonymous`.")
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @field_serializer("created_at", "updated_at", "finished_at")
    def _utc(self, value: datetime | None) -> str | None:
        return _iso(value)


class BulkOperation(SQLModel, table=True):
    """A bulk operation's row (migration 0011)."""

    __tablename__ = "bulk_operation"
    __table_args__ = (
        sa.Index("ix_bulk_operation_running", "created_at", postgresql_where=sa.text("status = 'running'")),
        sa.Index("ix_bulk_operation_created", sa.text("created_at DESC")),
        sa.Index("ix_bulk_operation_updated", "updated_at"),
        sa.CheckConstraint("action IN ('retry', 'cancel', 'delete', 'set_priority')", name="ck_bulk_action"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name="ck_bulk_status"),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, primary_key=True))
    action: str = Field(sa_column=sa.Column(sa.String(20), nullable=False))
    filter: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))
    priority: str | None = Field(default=None, sa_column=sa.Column(sa.String(10), nullable=True))
    status: str = Field(sa_column=sa.Column(sa.String(10), nullable=False))
    total: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    done: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    failed: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    cutoff: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    cursor_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    cursor_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid, nullable=True))
    requested_by: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    request_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))


# ---- stats history (migration 0016) -------------------------------------------------------------------------------


def _float_col() -> Any:
    return sa.Column(sa.Float, nullable=True)


class StatsSample(SQLModel, table=True):
    """One sample of the service's numbers (migration 0016): what the dashboard's charts draw."""

    __tablename__ = "stats_sample"

    at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    interval_s: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    completed: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    failed: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    canceled: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    ready: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    running: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))
    wait_p50_s: float | None = Field(default=None, sa_column=_float_col())
    wait_p95_s: float | None = Field(default=None, sa_column=_float_col())
    wait_p99_s: float | None = Field(default=None, sa_column=_float_col())
    run_p50_s: float | None = Field(default=None, sa_column=_float_col())
    run_p95_s: float | None = Field(default=None, sa_column=_float_col())
    run_p99_s: float | None = Field(default=None, sa_column=_float_col())


class StatsPoint(SQLModel):
    """The numbers of one interval: tasks that finished in it, and the backlog at its end."""

    at: datetime = Field(description="The end of the interval (the sample's time, Postgres's clock).")
    interval_s: float = Field(description="Its length: the time since the previous sample.")
    completed: int = Field(description="Tasks that completed in the interval.")
    failed: int = Field(description="Tasks that failed in the interval (their last attempt).")
    canceled: int = Field(description="Tasks canceled in the interval.")
    completed_per_s: float
    failed_per_s: float
    ready: int = Field(description="Tasks waiting (pending or retrying, delayed ones included) at the end.")
    running: int = Field(description="Tasks running at the end.")
    wait_p50_s: float | None = Field(
        description="Median wait of the tasks that finished in the interval: from due (run_at) to their last start; "
        "null if none finished."
    )
    wait_p95_s: float | None
    wait_p99_s: float | None
    run_p50_s: float | None = Field(
        description="Median run time (last start to finish) of the completed and failed tasks of the interval."
    )
    run_p95_s: float | None
    run_p99_s: float | None


class StatsHistory(SQLModel):
    """GET /api/v1/stats/history: samples oldest first."""

    window_s: int
    sample_s: float = Field(description="How often samples are taken (TASKPROC_STATS_SAMPLE_S).")
    points: list[StatsPoint]
