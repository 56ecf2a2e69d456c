"""The task store: every SQL statement on tasks, their events, workers and the trigger-kept counters.

One module, like procrastinate's job manager: each function below is one atomic statement (or says which
statements it runs in the caller's transaction), its SQL a named constant next to it, and what it returns a
frozen row built by column name. Nothing else in taskproc writes SQL (tests/unit/test_layout.py checks);
alembic's migrations keep their own.

Conventions:
- The first argument is what the statement runs on: an `AsyncSession` or `AsyncConnection` (`Db`), or a
  worker's dedicated autocommit `PgWriter` for the hot path (claims, outcomes, heartbeats). Functions never
  commit: an API session is in autocommit (every statement is its own transaction), a worker commits the
  session it opened, and the reconciler holds one transaction (its advisory lock) across several calls.
- Statuses are bound parameters from `TaskStatus` (`:s_running`, `status = ANY(CAST(:waiting AS text[]))`),
  never literals in the SQL text, so renaming or adding a state is a change to the enum.
- Every change of a task row is a compare-and-set that appends its `task_event` in the same statement; the
  CASEs that decide an outcome read the row as it is when it is written (under READ COMMITTED an UPDATE that
  waited for a concurrent one evaluates them on the row that one committed: issue 12 cases 2 and 14).
- Values only ever travel as bound parameters; the f-strings here only assemble constant fragments at import.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from taskproc.db import PgWriter
from taskproc.models import DEFAULT_QUEUE, TERMINAL, WAITING, BulkStatus, Priority, TaskStatus

Db = AsyncSession | AsyncConnection

MAX_TEXT_CHARS = 4000


def storable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` as a Postgres text column takes it: NUL escaped (text refuses \\x00), lone surrogates escaped (not
    UTF-8), at most `limit` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


# ---- status parameters ----------------------------------------------------------------------------------


def _sorted(statuses: frozenset[TaskStatus]) -> list[str]:
    return sorted(s.value for s in statuses)


# Every statement gets these: one parameter per status (`:s_<name>`) and the sets the SQL tests against.
STATUS_PARAMS: Mapping[str, str | list[str]] = {
    **{f"s_{s.value}": s.value for s in TaskStatus},
    "waiting": _sorted(WAITING),
    "terminal": _sorted(TERMINAL),
    "live": _sorted(WAITING | {TaskStatus.running}),
    "cancelable": _sorted(WAITING | {TaskStatus.running}),
    "retryable": _sorted(frozenset({TaskStatus.failed, TaskStatus.canceled})),
}


def _params(**values: Any) -> dict[str, Any]:
    return {**STATUS_PARAMS, **values}


# ---- rows -------------------------------------------------------------------------------------------------

R = TypeVar("R")


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _make(cls: type[R], m: Mapping[Any, Any]) -> R:
    """A row class filled by column name (a SQLAlchemy row's `_mapping`, or a psycopg dict row)."""
    return cls(**{name: m[name] for name in _names(cls)})


def _rows(cls: type[R], result: sa.Result[Any]) -> list[R]:
    return [_make(cls, r._mapping) for r in result]


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A `task` row as the statements below return it (every column but `shutdown_requeues` and
    `attempt_traceparent`)."""

    id: uuid.UUID
    type: str
    priority: Priority
    payload: dict[str, Any]
    status: TaskStatus
    attempts: int
    max_retries: int
    timeout_s: float
    result: Any  # any JSON value
    error: str | None
    idempotency_key: str | None
    generation: int
    run_at: datetime
    worker_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    schedule: str | None
    queue: str
    concurrency_key: str | None
    callback_url: str | None
    result_ttl_s: float | None
    result_expired_at: datetime | None
    lost_attempts: int
    quarantined: bool
    traceparent: str | None  # W3C trace context of the submit (migration 0013, taskproc.tracing)

    @property
    def trace_id(self) -> str | None:
        return self.traceparent[3:35] if self.traceparent else None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))
        object.__setattr__(self, "priority", Priority(self.priority))


TASK_COLUMNS = ", ".join(_names(TaskRow))


@dataclass(frozen=True, slots=True)
class NewTask:
    """One task to insert: validated and defaulted by the caller; times are Postgres's."""

    id: uuid.UUID
    type: str
    priority: Priority
    payload: dict[str, Any]
    max_retries: int
    timeout_s: float
    idempotency_key: str | None
    delay_s: float
    schedule: str | None = None  # the schedule whose fire or trigger creates it
    queue: str = DEFAULT_QUEUE
    concurrency_key: str | None = None
    callback_url: str | None = None
    result_ttl_s: float | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One entry of a task's history."""

    at: datetime
    status: TaskStatus
    attempt: int
    detail: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A `task_event` row with what the event stream sends about its task (its current status, too)."""

    id: int
    task_id: uuid.UUID
    at: datetime
    status: TaskStatus
    attempt: int
    detail: str | None
    type: str
    priority: Priority
    task_status: TaskStatus
    task_attempts: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))
        object.__setattr__(self, "task_status", TaskStatus(self.task_status))
        object.__setattr__(self, "priority", Priority(self.priority))


@dataclass(frozen=True, slots=True)
class StatsRow:
    """The counters behind /stats: tasks by status, waiting tasks by priority, retries, live workers."""

    by_status: Mapping[str, int]
    waiting_by_priority: Mapping[str, int]
    retried_total: int
    workers: int
    waiting_no_worker: int
    waiting_no_queue_worker: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """One attempt this worker now owns: everything it needs to run it."""

    id: uuid.UUID
    generation: int
    type: str
    priority: Priority
    payload: Any  # the JSON payload, validated by the handler's model before it runs
    attempts: int
    timeout_s: float
    run_at: datetime
    started_at: datetime
    queue: str
    concurrency_key: str | None
    traceparent: str | None  # the submit's trace context; the attempt's span is its child (taskproc.tracing)
    attempt_traceparent: str | None  # the span of the last failed attempt, which this one links

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))


@dataclass(frozen=True, slots=True)
class Unserved:
    """A job this worker could have claimed but does not serve the type of, whose queue is paused, or whose
    concurrency key's limit had no room (`limited`: the claim's trigger refused it)."""

    id: uuid.UUID
    generation: int
    type: str
    priority: Priority
    queue: str
    concurrency_key: str | None
    limited: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))


@dataclass(frozen=True, slots=True)
class JobRef:
    """A task and the generation of its job."""

    id: uuid.UUID
    generation: int


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """A running attempt: the compare-and-set key of everything that records its outcome."""

    id: uuid.UUID
    generation: int
    attempts: int


@dataclass(frozen=True, slots=True)
class WaitingJob:
    """A waiting task as the reconciler sees it; `db_now` is Postgres's clock when it was read."""

    id: uuid.UUID
    generation: int
    priority: Priority
    run_at: datetime
    db_now: datetime
    queue: str
    concurrency_key: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))


@dataclass(frozen=True, slots=True)
class JobState:
    """A task's current generation and status, for a job found in the running set."""

    id: uuid.UUID
    generation: int
    status: TaskStatus
    priority: Priority
    run_at: datetime
    db_now: datetime
    queue: str
    concurrency_key: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))
        object.__setattr__(self, "priority", Priority(self.priority))


class Completion(Protocol):
    """A successful attempt to record (worker.batch.Outcome is one)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def generation(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def result(self) -> str: ...  # JSON text
    @property
    def detail(self) -> str: ...


# ---- shared statement shapes --------------------------------------------------------------------------------

_EVENT_INSERT = "INSERT INTO task_event (task_id, at, status, attempt, detail)"


def _transition(
    *, sets: str, where: str, detail: str, from_: str = "", event_where: str = "", with_: str = "", then: str = ""
) -> sa.TextClause:
    """UPDATE task SET <sets> WHERE <where>, returning the changed rows, plus one task_event per changed row
    whose detail is the SQL expression `detail` (over the updated row), all in one statement (`with_`: CTEs
    the WHERE may use; `then`: CTEs after, which may use `t`)."""
    return sa.text(
        f"WITH {with_}t AS (UPDATE task SET {sets}, updated_at = now() {from_} WHERE {where} "  # noqa: S608 - constant
        f"RETURNING {', '.join(f'task.{c}' for c in _names(TaskRow))}), "
        f"e AS ({_EVENT_INSERT} SELECT id, updated_at, status, attempts, {detail} FROM t {event_where}) "
        f"{then}SELECT * FROM t"
    )


def _detail_by_status(*statuses: TaskStatus) -> str:
    """The event detail chosen by the status the statement gave the row: `:d_<status>` for each."""
    whens = " ".join(f"WHEN :s_{s.value} THEN CAST(:d_{s.value} AS text)" for s in statuses)
    return f"CASE status {whens} END"


# An attempt's compare-and-set key: the row is still the one this attempt started on.
_THIS_ATTEMPT = "id = :id AND generation = :gen AND status = :s_running AND attempts = :attempt"


# ---- creating and reading tasks (API) ----------------------------------------------------------------------

INSERT_TASKS = sql.SQL(
    # One fixed statement whatever the batch size (arrays through unnest): psycopg prepares it once.
    "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(types)s::text[], "  # noqa: S608 - constant SQL
    "%(priorities)s::text[], %(payloads)s::text[], %(max_retries)s::int[], "
    "%(timeouts)s::float8[], %(keys)s::text[], %(delays)s::float8[], %(schedules)s::text[], "
    "%(queues)s::text[], %(ckeys)s::text[], %(callbacks)s::text[], %(ttls)s::float8[], "
    "%(traceparents)s::text[]) "
    "WITH ORDINALITY AS i(id, type, priority, payload, max_retries, timeout_s, idempotency_key, delay_s, schedule, "
    "queue, concurrency_key, callback_url, result_ttl_s, traceparent, ord)), "
    "ins AS (INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, "
    "idempotency_key, generation, run_at, cancel_requested, created_at, updated_at, schedule, queue, "
    "concurrency_key, callback_url, result_ttl_s, traceparent) "
    "SELECT id, type, priority, payload::jsonb, %(s_pending)s::text, 0, max_retries, timeout_s, "
    "idempotency_key, 1, now() + make_interval(secs => delay_s), FALSE, now(), now(), schedule, queue, "
    "concurrency_key, callback_url, result_ttl_s, traceparent FROM input "
    "ORDER BY ord "
    "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    f"RETURNING {TASK_COLUMNS}), "
    f"ev AS ({_EVENT_INSERT} SELECT id, created_at, %(s_pending)s::text, 0, 'accepted' FROM ins) "
    "SELECT * FROM ins"
)


async def _driver_connection(db: Db) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a session or connection (checked out if it was not yet), in the same
    transaction. For the API's hot statements: SQLAlchemy's statement and result machinery cost more CPU than
    the statement itself (about 40 % of a single submit's, profiled), and none of its features are used there."""
    conn = db if isinstance(db, AsyncConnection) else await db.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    return driver


async def _fetch(db: Db, query: sql.SQL, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run one statement (prepared) on the psycopg connection under `db`; its rows by column name."""
    async with (await _driver_connection(db)).cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params, prepare=True)
        return await cur.fetchall()


async def create(db: Db, tasks: Sequence[NewTask]) -> list[TaskRow]:
    """Insert `tasks` (pending, generation 1, due after their delay) with their first event, in the order
    given; returns the rows inserted, which leaves out every task whose idempotency key already exists (the
    unique index decides, ON CONFLICT DO NOTHING yields to the winner). Callers pass the tasks sorted by key:
    two batches racing on the same keys then wait on each other in the same order and never deadlock.
    Runs on the psycopg connection under `db` (_driver_connection): psycopg's own errors come out of it."""
    params = {
        "s_pending": TaskStatus.pending.value,
        "ids": [t.id for t in tasks],
        "types": [t.type for t in tasks],
        "priorities": [t.priority.value for t in tasks],
        "payloads": [json.dumps(t.payload, separators=(",", ":")) for t in tasks],
        "max_retries": [t.max_retries for t in tasks],
        "timeouts": [float(t.timeout_s) for t in tasks],
        "keys": [t.idempotency_key for t in tasks],
        "delays": [t.delay_s for t in tasks],
        "schedules": [t.schedule for t in tasks],
        "queues": [t.queue for t in tasks],
        "ckeys": [t.concurrency_key for t in tasks],
        "callbacks": [t.callback_url for t in tasks],
        "ttls": [t.result_ttl_s for t in tasks],
        "traceparents": [t.traceparent for t in tasks],
    }
    return [_make(TaskRow, r) for r in await _fetch(db, INSERT_TASKS, params)]


BY_KEYS = sql.SQL(f"SELECT {TASK_COLUMNS} FROM task WHERE idempotency_key = ANY(%(keys)s::text[])")  # noqa: S608


async def by_idempotency_keys(db: Db, keys: Sequence[str]) -> list[TaskRow]:
    """The tasks that hold these idempotency keys (on the psycopg connection under `db`, like `create`)."""
    return [_make(TaskRow, r) for r in await _fetch(db, BY_KEYS, {"keys": list(keys)})]


GET_TASK = sa.text(f"SELECT {TASK_COLUMNS} FROM task WHERE id = :id")  # noqa: S608


async def get(db: Db, task_id: uuid.UUID) -> TaskRow | None:
    row = (await db.execute(GET_TASK, {"id": task_id})).first()
    return None if row is None else _make(TaskRow, row._mapping)


@dataclass(frozen=True, slots=True)
class WaitContext:
    """What says why a waiting task is not running, read with it (services.tasks.with_waiting): the types and
    queues live workers serve (None: some live worker serves every one), the paused queues, Postgres's clock."""

    served_types: frozenset[str] | None
    paused_queues: frozenset[str]
    served_queues: frozenset[str] | None
    now: datetime


# The row, and for a waiting task the context of its waiting reason, in one statement (it used to be five): each
# scalar subquery runs only when the CASE needs it, so a finished task's read costs what GET_TASK costs.
_IF_WAITING = "CASE WHEN task.status = ANY(%(waiting)s::text[]) THEN "
GET_TASK_WAITING = sql.SQL(
    f"SELECT {', '.join(f'task.{c}' for c in _names(TaskRow))}, "  # noqa: S608 - constant fragments
    f"{_IF_WAITING}(SELECT CASE WHEN bool_or(w.task_types IS NULL) THEN NULL "
    "ELSE coalesce(array_agg(DISTINCT k.name) FILTER (WHERE k.name IS NOT NULL), ARRAY[]::text[]) END "
    "FROM worker w LEFT JOIN LATERAL jsonb_object_keys(w.task_types) AS k(name) ON TRUE "
    "WHERE w.expires_at > now()) END AS ctx_served_types, "
    f"{_IF_WAITING}(SELECT CASE WHEN bool_or(w.queues IS NULL) THEN NULL "
    "ELSE coalesce(array_agg(DISTINCT q.name) FILTER (WHERE q.name IS NOT NULL), ARRAY[]::text[]) END "
    "FROM worker w LEFT JOIN LATERAL unnest(w.queues) AS q(name) ON TRUE "
    "WHERE w.expires_at > now()) END AS ctx_served_queues, "
    f"{_IF_WAITING}(SELECT coalesce(array_agg(name), ARRAY[]::text[]) FROM queue WHERE paused) END AS ctx_paused, "
    "clock_timestamp() AS ctx_now "
    "FROM task WHERE task.id = %(id)s"
)


async def get_waiting(db: Db, task_id: uuid.UUID) -> tuple[TaskRow, WaitContext | None] | None:
    """A task, and if it waits the context of its waiting reason (one round trip, on the psycopg connection
    under `db`); None if there is no such task."""
    rows = await _fetch(db, GET_TASK_WAITING, {"id": task_id, "waiting": STATUS_PARAMS["waiting"]})
    if not rows:
        return None
    r = rows[0]
    row = _make(TaskRow, r)
    if row.status not in WAITING:
        return row, None
    types, queues = r["ctx_served_types"], r["ctx_served_queues"]
    return row, WaitContext(
        served_types=None if types is None else frozenset(types),
        paused_queues=frozenset(r["ctx_paused"]),
        served_queues=None if queues is None else frozenset(queues),
        now=r["ctx_now"],
    )


STATUS_OF = sa.text("SELECT status FROM task WHERE id = :id")


async def status_of(db: Db, task_id: uuid.UUID) -> TaskStatus | None:
    """The task's status, None if there is no such task (for the message of a refused transition)."""
    status = (await db.execute(STATUS_OF, {"id": task_id})).scalar_one_or_none()
    return None if status is None else TaskStatus(status)


# Constant fragments, one per filter: 32 statements at most, each prepared once, each able to use its index.
_LIST_FILTERS = {
    "status": "status = :status",
    "type": "type = :type",
    "priority": "priority = :priority",
    "schedule": "schedule = :schedule",
    "queue": "queue = :queue",
    "before": "(created_at, id) < (:c_at, :c_id)",
}


async def list_page(
    db: Db,
    *,
    status: TaskStatus | None,
    type_: str | None,
    priority: Priority | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
    schedule: str | None = None,
    queue: str | None = None,
) -> list[TaskRow]:
    """Up to `limit` tasks, newest first, keyset-paginated on (created_at, id) strictly after `before`."""
    params: dict[str, Any] = {"limit": limit}
    where = ["TRUE"]
    if status is not None:
        where.append(_LIST_FILTERS["status"])
        params["status"] = status.value
    if type_ is not None:
        where.append(_LIST_FILTERS["type"])
        params["type"] = type_
    if priority is not None:
        where.append(_LIST_FILTERS["priority"])
        params["priority"] = priority.value
    if schedule is not None:
        where.append(_LIST_FILTERS["schedule"])
        params["schedule"] = schedule
    if queue is not None:
        where.append(_LIST_FILTERS["queue"])
        params["queue"] = queue
    if before is not None:
        where.append(_LIST_FILTERS["before"])
        params["c_at"], params["c_id"] = before
    query = sa.text(
        f"SELECT {TASK_COLUMNS} FROM task WHERE {' AND '.join(where)} "  # noqa: S608 - constant fragments
        "ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
    return _rows(TaskRow, await db.execute(query, params))


LIST_EVENTS = sa.text("SELECT at, status, attempt, detail FROM task_event WHERE task_id = :id ORDER BY id")


async def list_events(db: Db, task_id: uuid.UUID) -> list[EventRow]:
    """A task's history in order (empty for a task that does not exist, too)."""
    return _rows(EventRow, await db.execute(LIST_EVENTS, {"id": task_id}))


SERVED_TYPES = sa.text("SELECT task_types FROM worker WHERE expires_at > now()")
SERVED_QUEUES = sa.text("SELECT queues FROM worker WHERE expires_at > now()")


async def served_queues(db: Db) -> frozenset[str] | None:
    """The queues some live worker takes from; None if a live worker takes from every queue."""
    served: set[str] = set()
    for queues in (await db.execute(SERVED_QUEUES)).scalars():
        if queues is None:
            return None
        served.update(queues)
    return frozenset(served)


async def served_types(db: Db) -> frozenset[str] | None:
    """The task types some live worker serves; None if a live worker does not say (it predates migration 0003,
    so it may serve any)."""
    served: set[str] = set()
    for types in (await db.execute(SERVED_TYPES)).scalars():
        if types is None:
            return None
        served.update(types)
    return frozenset(served)


STATS = sa.text(
    "SELECT 's' AS kind, status AS k, sum(n)::bigint AS n FROM task_count GROUP BY status "
    "UNION ALL SELECT 'q', priority, sum(n)::bigint FROM task_wait_count GROUP BY priority "
    "UNION ALL SELECT 'w', '', count(*) FROM worker WHERE expires_at > now() "
    # Per-type waiting counters (migration 0003) against what live workers advertise: rows in proportion to
    # types x shards, never to the backlog.
    "UNION ALL SELECT 'n', '', coalesce(sum(c.n), 0)::bigint FROM task_type_waiting c "
    "WHERE NOT EXISTS (SELECT 1 FROM worker w WHERE w.expires_at > now() "
    "AND (w.task_types IS NULL OR w.task_types -> c.type IS NOT NULL)) "
    # Per-queue counters (migration 0007) against the queues live workers take from (NULL: every queue).
    "UNION ALL SELECT 'm', '', coalesce(sum(c.n), 0)::bigint FROM task_queue_count c "
    "WHERE c.status = ANY(CAST(:waiting AS text[])) AND NOT EXISTS (SELECT 1 FROM worker w "
    "WHERE w.expires_at > now() AND (w.queues IS NULL OR c.queue = ANY(w.queues)))"
)
# The same numbers for one queue, from the per-queue counters (migration 0009): key-range reads of at most
# 7 statuses x 3 priorities x 16 shards rows, and of types x 16 for the unserved ones.
QUEUE_STATS = sa.text(
    "SELECT 's' AS kind, status AS k, sum(n)::bigint AS n FROM task_queue_count WHERE queue = :queue "
    "GROUP BY status "
    "UNION ALL SELECT 'q', priority, sum(n)::bigint FROM task_queue_count "
    "WHERE queue = :queue AND status = ANY(CAST(:waiting AS text[])) GROUP BY priority "
    "UNION ALL SELECT 'w', '', count(*) FROM worker "
    "WHERE expires_at > now() AND (queues IS NULL OR CAST(:queue AS text) = ANY(queues)) "
    "UNION ALL SELECT 'n', '', coalesce(sum(c.n), 0)::bigint FROM task_type_waiting c WHERE c.queue = :queue "
    "AND NOT EXISTS (SELECT 1 FROM worker w WHERE w.expires_at > now() "
    "AND (w.task_types IS NULL OR w.task_types -> c.type IS NOT NULL)) "
    "UNION ALL SELECT 'm', '', coalesce(sum(c.n), 0)::bigint FROM task_queue_count c WHERE c.queue = :queue "
    "AND c.status = ANY(CAST(:waiting AS text[])) AND NOT EXISTS (SELECT 1 FROM worker w "
    "WHERE w.expires_at > now() AND (w.queues IS NULL OR c.queue = ANY(w.queues)))"
)
# The pseudo-status under which the counter triggers (migrations 0002, 0009) count transitions into `retrying`.
RETRIED_KEY = "_retried"


async def stats(db: Db, *, queue: str | None = None) -> StatsRow:
    """Counts by status (migration 0002), waiting tasks by priority (migration 0005), live workers and waiting
    tasks no live worker serves, from trigger-kept counters: never a read of the task table, so the cost is the
    same at 10 waiting tasks as at 10 million. With `queue`, the same for that queue's tasks (migration 0009),
    and `workers` counts the live workers that take from it."""
    by_status: dict[str, int] = {}
    by_priority: dict[str, int] = {}
    retried = workers = no_worker = no_queue_worker = 0
    query, params = (STATS, STATUS_PARAMS) if queue is None else (QUEUE_STATS, _params(queue=queue))
    for r in (await db.execute(query, params)).mappings():
        kind, key, n = r["kind"], r["k"], int(r["n"])
        if kind == "s":
            if key == RETRIED_KEY:
                retried = n
            else:
                by_status[key] = n
        elif kind == "q":
            by_priority[key] = n
        elif kind == "n":
            no_worker = n
        elif kind == "m":
            no_queue_worker = n
        else:
            workers = n
    return StatsRow(
        by_status=by_status,
        waiting_by_priority=by_priority,
        retried_total=retried,
        workers=workers,
        waiting_no_worker=no_worker,
        waiting_no_queue_worker=no_queue_worker,
    )


# ---- changing tasks (API) ------------------------------------------------------------------------------------

# Each transition's SET and WHERE, shared by the single-task statements here and the bulk steps below, so a bulk
# retry resets exactly what a retry does.
_RETRY_SETS = (
    "status = :s_pending, attempts = 0, generation = generation + 1, run_at = now(), result = NULL, "
    "error = NULL, started_at = NULL, finished_at = NULL, worker_id = NULL, cancel_requested = FALSE, "
    "shutdown_requeues = 0, lost_attempts = 0, quarantined = FALSE, result_expired_at = NULL"
)
# One statement for both cases, so a task that moves between running and waiting while the cancel is on its way
# is canceled all the same (a waiting one at once, a running one flagged for its worker).
_CANCEL_SETS = (
    "status = CASE WHEN status = :s_running THEN status ELSE :s_canceled END, "
    "finished_at = CASE WHEN status = :s_running THEN finished_at ELSE now() END, "
    "generation = CASE WHEN status = :s_running THEN generation ELSE generation + 1 END, "
    "worker_id = CASE WHEN status = :s_running THEN worker_id END, "
    "cancel_requested = cancel_requested OR status = :s_running"
)
_PRIORITY_SETS = "priority = :priority, generation = generation + 1"
_RETRY_WHERE = "status = ANY(CAST(:retryable AS text[]))"
_CANCEL_WHERE = "status = ANY(CAST(:cancelable AS text[]))"
_PRIORITY_WHERE = "status = :s_pending AND priority <> :priority"

UPDATE_PRIORITY = _transition(
    sets=_PRIORITY_SETS,
    where="id = :id AND status = :s_pending",
    detail="CAST(:detail AS text)",
)


async def update(db: Db, task_id: uuid.UUID, *, priority: Priority) -> TaskRow | None:
    """A pending task's new priority, under a new generation (its job is issued again); None if it is not
    pending (or does not exist)."""
    rows = _rows(
        TaskRow,
        await db.execute(
            UPDATE_PRIORITY,
            _params(id=task_id, priority=priority.value, detail=f"priority changed to {priority.value}"),
        ),
    )
    return rows[0] if rows else None


CANCEL = _transition(
    sets=_CANCEL_SETS,
    where=f"id = :id AND {_CANCEL_WHERE}",
    detail="'canceled before it ran'",
    event_where="WHERE status = :s_canceled",
)


async def cancel(db: Db, task_id: uuid.UUID) -> TaskRow | None:
    """Waiting: canceled now (new generation). Running: `cancel_requested`, for its worker to abort it (no event
    yet: the worker's outcome writes it). None if the task is finished (or does not exist)."""
    rows = _rows(TaskRow, await db.execute(CANCEL, _params(id=task_id)))
    return rows[0] if rows else None


RETRY = _transition(
    sets=_RETRY_SETS,
    where=f"id = :id AND {_RETRY_WHERE}",
    detail="'retry requested'",
)


async def retry(db: Db, task_id: uuid.UUID) -> TaskRow | None:
    """A failed or canceled task pending again with fresh attempts; None if it is neither."""
    rows = _rows(TaskRow, await db.execute(RETRY, _params(id=task_id)))
    return rows[0] if rows else None


DELETE_TASK = sa.text("DELETE FROM task WHERE id = :id AND status = ANY(CAST(:terminal AS text[])) RETURNING id")


async def delete(db: Db, task_id: uuid.UUID) -> bool:
    """Delete a finished task and (by cascade) its history; False if it is not finished (or does not exist)."""
    return (await db.execute(DELETE_TASK, _params(id=task_id))).first() is not None


# ---- the event stream -----------------------------------------------------------------------------------------

_STREAM_COLUMNS = (
    "e.id, e.task_id, e.at, e.status, e.attempt, e.detail, t.type, t.priority, t.status AS task_status, "
    "t.attempts AS task_attempts"
)
_STREAM_FROM = "FROM task_event e JOIN task t ON t.id = e.task_id"
EVENTS_AFTER = sa.text(f"SELECT {_STREAM_COLUMNS} {_STREAM_FROM} WHERE e.id > :pos ORDER BY e.id LIMIT :limit")
EVENTS_AFTER_AND_GAPS = sa.text(
    f"(SELECT {_STREAM_COLUMNS} {_STREAM_FROM} WHERE e.id > :pos ORDER BY e.id LIMIT :limit) "
    f"UNION ALL (SELECT {_STREAM_COLUMNS} {_STREAM_FROM} WHERE e.id = ANY(CAST(:gaps AS bigint[])))"
)
EVENTS_REPLAY = sa.text(
    f"SELECT {_STREAM_COLUMNS} {_STREAM_FROM} WHERE e.id > :after AND e.id <= :upto ORDER BY e.id LIMIT :limit"
)
EVENTS_REPLAY_TASK = sa.text(
    f"SELECT {_STREAM_COLUMNS} {_STREAM_FROM} WHERE e.id > :after AND e.id <= :upto AND e.task_id = :task_id "
    "ORDER BY e.id LIMIT :limit"
)
MAX_EVENT_ID = sa.text("SELECT coalesce(max(id), 0) FROM task_event")


async def max_event_id(db: Db) -> int:
    """The newest event id (0 when there is none)."""
    return int((await db.execute(MAX_EVENT_ID)).scalar_one())


async def events_after(db: Db, position: int, *, limit: int, gaps: Sequence[int] = ()) -> list[StreamEvent]:
    """The SSE poller's read: up to `limit` events after `position` in id order, plus the events with the ids in
    `gaps` (holes in the id sequence below `position` that may have been filled since), in no given order."""
    if gaps:
        result = await db.execute(EVENTS_AFTER_AND_GAPS, {"pos": position, "limit": limit, "gaps": list(gaps)})
    else:
        result = await db.execute(EVENTS_AFTER, {"pos": position, "limit": limit})
    return _rows(StreamEvent, result)


async def events_between(
    db: Db, *, after: int, upto: int, limit: int, task_id: uuid.UUID | None = None
) -> list[StreamEvent]:
    """A replay: events with after < id <= upto in id order (of one task if `task_id`), at most `limit`."""
    params = {"after": after, "upto": upto, "limit": limit, "task_id": task_id}
    return _rows(StreamEvent, await db.execute(EVENTS_REPLAY if task_id is None else EVENTS_REPLAY_TASK, params))


# ---- the worker's hot path (one autocommit psycopg connection each, prepared statements) ------------------------


def _claim_sql(locks: str, lock_guard: str) -> sql.SQL:
    return sql.SQL(
        "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(gens)s::int[]) AS i(id, gen)), "  # noqa: S608 - constant fragments
        + locks
        + "t AS (UPDATE task SET status = %(s_running)s, attempts = task.attempts + 1, started_at = now(), "
        "worker_id = %(worker)s, finished_at = NULL, updated_at = now() FROM input "
        "WHERE task.id = input.id AND task.generation = input.gen AND task.status = ANY(%(waiting)s::text[]) "
        "AND NOT task.cancel_requested AND task.type = ANY(%(types)s::text[]) "
        # A paused queue starts nothing (migration 0007): the pause is in Postgres, so no Redis state can bypass it.
        "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.name = task.queue AND q.paused) " + lock_guard +
        # A keyed task's row is skipped by the trigger taskproc_task_key (migration 0008) if its key has no room.
        "RETURNING task.id, task.generation, task.type, task.priority, task.payload, task.attempts, task.timeout_s, "
        "task.run_at, task.started_at, task.queue, task.concurrency_key, task.traceparent, task.attempt_traceparent), "
        "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
        "SELECT id, started_at, %(s_running)s::text, attempts, %(detail)s FROM t), "
        # Jobs this worker would claim if it served their type, if their queue were not paused, or if their key had
        # room: left untouched, for a worker that does, for the resume, or for a free slot of the key.
        # Only the jobs the claim did not take are looked up again (usually none).
        "u AS (SELECT task.id, task.generation, task.type, task.priority, task.queue, task.concurrency_key, "
        "(task.type = ANY(%(types)s::text[]) "
        "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.name = task.queue AND q.paused)) AS limited "
        "FROM input JOIN task ON task.id = input.id AND task.generation = input.gen "
        "WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = input.id) "
        "AND task.status = ANY(%(waiting)s::text[]) AND NOT task.cancel_requested "
        "AND (NOT (task.type = ANY(%(types)s::text[])) OR task.concurrency_key IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM queue q WHERE q.name = task.queue AND q.paused))) "
        "SELECT TRUE AS claimed, *, NULL::boolean AS limited FROM t "
        "UNION ALL SELECT FALSE, u.id, u.generation, u.type, u.priority, NULL::jsonb, NULL::int, NULL::float8, "
        "NULL::timestamptz, NULL::timestamptz, u.queue, u.concurrency_key, NULL::text, NULL::text, u.limited FROM u"
    )


# The plain claim, and the claim of a batch with keyed jobs: that one first takes the advisory locks of its keys
# that have a limit (migration 0008: the trigger takes them again, re-entrantly), in hash order, so that two
# claims of overlapping keys queue one behind the other instead of deadlocking. The guard makes the UPDATE wait
# for them before its first row.
CLAIM_SQL = _claim_sql("", "")
KEY_LOCK = 7314  # the two-int4 advisory lock space of the keys (migration 0008's trigger uses the same)
CLAIM_KEYED_SQL = _claim_sql(
    f"lk AS (SELECT count(*) AS n FROM (SELECT pg_advisory_xact_lock({KEY_LOCK}, h) FROM (SELECT DISTINCT "  # noqa: S608
    "hashtext(k.key) AS h FROM input JOIN task ON task.id = input.id JOIN task_key k ON k.key = task.concurrency_key"
    ") d ORDER BY h) x), ",
    "AND (SELECT n FROM lk) >= 0 ",
)


async def claim_batch(
    writer: PgWriter, jobs: Sequence[JobRef], *, worker_id: str, types: Sequence[str], keyed: bool = True
) -> tuple[list[Claimed], list[Unserved]]:
    """Claim the jobs whose task waits on that generation, has no cancel request and has a type in `types`:
    running under `worker_id`, one more attempt; a job whose key's limit has no room is refused (`limited`).
    Also returns the waiting ones of other types or paused queues, untouched. `keyed`: some job may have a
    concurrency key (False only when the caller knows none has: then no key's lock is taken up front)."""
    rows = await writer.fetch(
        CLAIM_KEYED_SQL if keyed else CLAIM_SQL,
        _params(
            ids=[j.id for j in jobs],
            gens=[j.generation for j in jobs],
            worker=worker_id,
            detail=f"started by {worker_id}",
            types=list(types),
        ),
    )
    claimed = [_make(Claimed, r) for r in rows if r["claimed"]]
    unserved = [_make(Unserved, r) for r in rows if not r["claimed"]]
    return claimed, unserved


COMPLETE_SQL = sql.SQL(
    "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(gens)s::int[], %(attempts)s::int[], "
    "%(results)s::text[], %(details)s::text[]) AS i(id, gen, attempt, result, detail)), "
    # Postgres is the truth for cancels: an attempt that finishes after a cancel was accepted (its Redis abort
    # lost, or too late) ends `canceled`, never `completed`. Its result is kept, as the record of what ran.
    "t AS (UPDATE task SET status = CASE WHEN task.cancel_requested THEN %(s_canceled)s ELSE %(s_completed)s END, "
    "result = input.result::jsonb, error = NULL, finished_at = now(), "
    "worker_id = NULL, updated_at = now() FROM input "
    "WHERE task.id = input.id AND task.generation = input.gen AND task.attempts = input.attempt "
    "AND task.status = %(s_running)s "
    "RETURNING task.id, task.status, task.updated_at, task.attempts, input.detail), "
    "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, updated_at, status, attempts, CASE WHEN status = %(s_canceled)s "
    "THEN 'canceled: a cancel was requested while it ran; ' || detail || ', result kept' ELSE detail END FROM t) "
    "SELECT id, status FROM t"
)


async def complete_batch(writer: PgWriter, outcomes: Sequence[Completion]) -> dict[uuid.UUID, TaskStatus]:
    """Record successful attempts: `completed`, or `canceled` (result kept) for a task with a cancel request.
    Returns the status given to each row written; an attempt whose row moved on (stale) is left out."""
    rows = await writer.fetch(
        COMPLETE_SQL,
        _params(
            ids=[o.id for o in outcomes],
            gens=[o.generation for o in outcomes],
            attempts=[o.attempt for o in outcomes],
            results=[o.result for o in outcomes],
            details=[o.detail for o in outcomes],
        ),
    )
    return {r["id"]: TaskStatus(r["status"]) for r in rows}


HEARTBEAT_SQL = sql.SQL(
    "INSERT INTO worker (id, hostname, pid, started_at, expires_at, task_types, queues) "
    "VALUES (%(id)s, %(host)s, %(pid)s, now(), now() + make_interval(secs => %(lease)s), %(types)s::jsonb, "
    "%(queues)s::text[]) "
    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, task_types = EXCLUDED.task_types, "
    "queues = EXCLUDED.queues "
    # The paused queues ride along (migration 0007): the worker's tick skips them, learnt once per lease tick.
    "RETURNING expires_at, ARRAY(SELECT name FROM queue WHERE paused ORDER BY name) AS paused"
)


async def heartbeat(
    writer: PgWriter,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    lease_s: float,
    task_types: Mapping[str, str],
    queues: Sequence[str] | None = None,
) -> datetime:
    """Register the worker or renew its lease (`expires_at` = now + lease) with the types it serves
    ({type: payload schema fingerprint}) and the queues it takes from (None: every queue); returns the new
    expiry."""
    expires_at, _ = await heartbeat_paused(
        writer, worker_id, hostname=hostname, pid=pid, lease_s=lease_s, task_types=task_types, queues=queues
    )
    return expires_at


async def heartbeat_paused(
    writer: PgWriter,
    worker_id: str,
    *,
    hostname: str,
    pid: int,
    lease_s: float,
    task_types: Mapping[str, str],
    queues: Sequence[str] | None = None,
) -> tuple[datetime, list[str]]:
    """heartbeat(), also returning the names of the paused queues, in the same statement."""
    [row] = await writer.fetch(
        HEARTBEAT_SQL,
        {
            "id": worker_id,
            "host": hostname,
            "pid": pid,
            "lease": lease_s,
            "types": json.dumps(dict(task_types), separators=(",", ":")),
            "queues": None if queues is None else list(queues),
        },
    )
    expires_at: datetime = row["expires_at"]
    return expires_at, list(row["paused"])


UNREGISTER_SQL = sql.SQL("DELETE FROM worker WHERE id = %(id)s RETURNING id")


async def unregister_worker(writer: PgWriter, worker_id: str) -> bool:
    """Remove the worker's row (a clean shutdown); False if it had none."""
    return bool(await writer.fetch(UNREGISTER_SQL, {"id": worker_id}))


# ---- attempt outcomes that leave the hot path (the worker's session) -------------------------------------------

_RETRY_LEFT = "(NOT cancel_requested AND CAST(:retry AS boolean) AND attempts < max_retries + 1)"
FAIL_ATTEMPT = _transition(
    sets=(
        f"status = CASE WHEN cancel_requested THEN :s_canceled WHEN {_RETRY_LEFT} THEN :s_retrying "
        "ELSE :s_failed END, "
        f"error = :error, worker_id = NULL, finished_at = CASE WHEN {_RETRY_LEFT} THEN NULL ELSE now() END, "
        f"generation = CASE WHEN {_RETRY_LEFT} THEN generation + 1 ELSE generation END, "
        f"run_at = CASE WHEN {_RETRY_LEFT} THEN now() + make_interval(secs => :delay) ELSE run_at END, "
        "attempt_traceparent = CAST(:span AS text)"
    ),
    where=_THIS_ATTEMPT,
    detail=_detail_by_status(TaskStatus.canceled, TaskStatus.retrying, TaskStatus.failed),
)


async def fail_attempt(
    db: Db,
    attempt: AttemptRef,
    *,
    error: str,
    delay_s: float,
    retry: bool = True,
    span: str | None = None,
) -> TaskRow | None:
    """A failed attempt: `canceled` if a cancel was requested, else `retrying` (due in `delay_s`, new
    generation) if `retry` and attempts are left, else `failed`. `retry=False` is a permanent failure.
    `span`: the attempt's traceparent, which the next attempt's span links. None if the attempt is stale (its
    row moved on)."""
    n = attempt.attempts
    params = _params(
        id=attempt.id,
        gen=attempt.generation,
        attempt=n,
        error=error,
        retry=retry,
        delay=delay_s,
        span=span,
        d_canceled="canceled while running",
        d_retrying=f"attempt {n} failed: {error[:500]}; retry in {delay_s:.2f}s",
        d_failed=f"attempt {n} failed: {error[:500]}; "
        + ("no retries left" if retry else "not retried (permanent failure)"),
    )
    rows = _rows(TaskRow, await db.execute(FAIL_ATTEMPT, params))
    return rows[0] if rows else None


_SPEND = "(NOT cancel_requested AND shutdown_requeues >= :max_requeues)"
_FINAL = f"(cancel_requested OR ({_SPEND} AND attempts >= max_retries + 1))"
REQUEUE = _transition(
    sets=(
        f"status = CASE WHEN cancel_requested THEN :s_canceled WHEN {_FINAL} THEN :s_failed "
        f"WHEN {_SPEND} THEN :s_retrying ELSE :s_pending END, "
        f"attempts = CASE WHEN cancel_requested OR {_SPEND} THEN attempts ELSE attempts - 1 END, "
        f"generation = CASE WHEN {_FINAL} THEN generation ELSE generation + 1 END, "
        f"started_at = CASE WHEN cancel_requested OR {_SPEND} THEN started_at END, "
        f"finished_at = CASE WHEN {_FINAL} THEN now() END, "
        f"run_at = CASE WHEN {_FINAL} THEN run_at ELSE now() END, "
        f"error = CASE WHEN {_SPEND} THEN CAST(:error AS text) ELSE error END, "
        "shutdown_requeues = CASE WHEN cancel_requested THEN shutdown_requeues "
        "ELSE shutdown_requeues + 1 END, worker_id = NULL"
    ),
    where=_THIS_ATTEMPT,
    detail=_detail_by_status(TaskStatus.canceled, TaskStatus.pending, TaskStatus.retrying, TaskStatus.failed),
)


async def requeue(db: Db, attempt: AttemptRef, *, worker_id: str, max_requeues: int) -> TaskRow | None:
    """An attempt whose worker stopped it: `canceled` if a cancel was requested (the user's abort), else handed
    back for a shutdown: the first `max_requeues` hand-backs give the attempt back (`pending`, due now), later
    ones spend it (`retrying`, or `failed` once none is left). None if the attempt is stale."""
    error = (
        f"attempt {attempt.attempts} interrupted: worker {worker_id} shut down, and the task was handed back by "
        f"shutdowns more than {max_requeues} times (TASKPROC_MAX_SHUTDOWN_REQUEUES), so the attempt counts"
    )
    params = _params(
        id=attempt.id,
        gen=attempt.generation,
        attempt=attempt.attempts,
        max_requeues=max_requeues,
        error=error,
        d_canceled="aborted by its worker after a cancel request",
        d_pending=f"requeued: worker {worker_id} shut down before the task finished",
        d_retrying=error,
        d_failed=f"{error}; no retries left",
    )
    rows = _rows(TaskRow, await db.execute(REQUEUE, params))
    return rows[0] if rows else None


HAND_BACK = _transition(
    sets=(
        "status = CASE WHEN cancel_requested THEN :s_canceled ELSE :s_pending END, "
        "attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, "
        "generation = CASE WHEN cancel_requested THEN generation ELSE generation + 1 END, "
        "finished_at = CASE WHEN cancel_requested THEN now() END, "
        "started_at = CASE WHEN cancel_requested THEN started_at END, worker_id = NULL, "
        "run_at = CASE WHEN cancel_requested THEN run_at ELSE now() + make_interval(secs => :delay) END"
    ),
    where=_THIS_ATTEMPT,
    detail=_detail_by_status(TaskStatus.canceled, TaskStatus.pending),
)


async def hand_back(db: Db, attempt: AttemptRef, *, worker_id: str, reason: str, delay_s: float) -> TaskRow | None:
    """Give a claimed attempt back without spending it (version skew): `pending` under a new generation, due in
    `delay_s`; `canceled` instead if a cancel was requested. None if the attempt is stale."""
    params = _params(
        id=attempt.id,
        gen=attempt.generation,
        attempt=attempt.attempts,
        delay=delay_s,
        d_canceled="canceled while running",
        d_pending=storable(f"handed back by {worker_id}, attempt not counted: {reason}", 1000),
    )
    rows = _rows(TaskRow, await db.execute(HAND_BACK, params))
    return rows[0] if rows else None


OTHER_SCHEMA = sa.text(
    "SELECT EXISTS (SELECT 1 FROM worker WHERE expires_at > now() "
    "AND task_types ->> CAST(:type AS text) IS DISTINCT FROM CAST(:mine AS text) "
    "AND task_types ->> CAST(:type AS text) IS NOT NULL)"
)


async def other_schema_advertised(db: Db, type_: str, fingerprint: str | None) -> bool:
    """Whether a live worker advertises a payload schema for `type_` other than `fingerprint`."""
    return bool((await db.execute(OTHER_SCHEMA, {"type": type_, "mine": fingerprint})).scalar_one())


CANCEL_REQUESTED = sa.text(
    "SELECT id, generation FROM task WHERE id = ANY(CAST(:ids AS uuid[])) AND status = :s_running AND cancel_requested"
)


async def check_cancels(db: Db, task_ids: Sequence[uuid.UUID]) -> list[JobRef]:
    """Of these tasks, the running ones with a cancel request (the Redis abort request may have been lost)."""
    return _rows(JobRef, await db.execute(CANCEL_REQUESTED, _params(ids=list(task_ids))))


# ---- recovery (the worker's reaper) ---------------------------------------------------------------------------

RUNNING_ON = sa.text("SELECT id, generation, attempts FROM task WHERE status = :s_running AND worker_id = :worker")


async def running_on(db: Db, worker_id: str) -> list[AttemptRef]:
    """The attempts Postgres has running under `worker_id`."""
    return _rows(AttemptRef, await db.execute(RUNNING_ON, _params(worker=worker_id)))


REAP_ORPHANS = _transition(
    sets=(
        "status = CASE WHEN cancel_requested THEN :s_canceled ELSE :s_pending END, "
        "finished_at = CASE WHEN cancel_requested THEN now() END, "
        "attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, "
        "started_at = CASE WHEN cancel_requested THEN started_at END, "
        "generation = generation + 1, worker_id = NULL, run_at = now()"
    ),
    from_="FROM unnest(CAST(:ids AS uuid[]), CAST(:gens AS int[]), CAST(:attempts AS int[])) AS o(o_id, o_gen, o_n)",
    where=(
        "task.id = o.o_id AND task.generation = o.o_gen AND task.attempts = o.o_n AND task.status = :s_running "
        "AND task.worker_id = :worker"
    ),
    detail="CAST(:detail AS text)",
)


async def reap_orphans(db: Db, worker_id: str, orphans: Sequence[AttemptRef]) -> list[TaskRow]:
    """Hand back attempts running under `worker_id` that its process is not running (a claim whose answer was
    lost): `pending`, the attempt given back, or `canceled` if a cancel was requested. Each row is a
    compare-and-set on the attempt, so one recorded meanwhile is left alone."""
    if not orphans:
        return []
    params = _params(
        ids=[o.id for o in orphans],
        gens=[o.generation for o in orphans],
        attempts=[o.attempts for o in orphans],
        worker=worker_id,
        detail=f"requeued: claimed by {worker_id} but no longer running there",
    )
    return _rows(TaskRow, await db.execute(REAP_ORPHANS, params))


# A task whose attempts have killed their worker :max_lost times is quarantined: failed whatever retries it has
# left, so one poison payload cannot crash-loop a pool. (In SET, lost_attempts is the value before this reap.)
_POISON = "(NOT cancel_requested AND lost_attempts + 1 >= :max_lost)"
REAP_EXPIRED = _transition(
    sets=(
        "status = CASE WHEN cancel_requested THEN :s_canceled "
        f"WHEN attempts >= max_retries + 1 OR {_POISON} THEN :s_failed ELSE :s_retrying END, "
        f"error = CASE WHEN cancel_requested THEN error WHEN {_POISON} THEN "
        "'worker died during ' || (lost_attempts + 1) || ' attempts' ELSE 'worker lost: its lease expired' END, "
        "finished_at = CASE WHEN cancel_requested OR attempts >= max_retries + 1 OR "
        f"{_POISON} THEN now() END, "
        f"lost_attempts = lost_attempts + 1, quarantined = {_POISON}, "
        "generation = generation + 1, worker_id = NULL, run_at = now()"
    ),
    # The rows are picked once, in a materialized CTE: as an IN (subquery) the planner may rescan the locking
    # subquery, and each rescan skips the rows this statement already changed, so LIMIT would bound nothing.
    with_=(
        "lost AS MATERIALIZED (SELECT l.id FROM task l WHERE l.status = :s_running "
        "AND l.worker_id IS DISTINCT FROM :me AND NOT EXISTS "
        "(SELECT 1 FROM worker w WHERE w.id = l.worker_id AND w.expires_at > now()) "
        "ORDER BY l.id LIMIT :limit FOR UPDATE SKIP LOCKED), "
    ),
    where="id IN (SELECT id FROM lost) AND status = :s_running",
    detail="CASE WHEN quarantined THEN 'quarantined: ' || error || ' (TASKPROC_MAX_LOST_ATTEMPTS); not retried' "
    "ELSE 'worker lost (lease expired); attempt counted' END",
)
DELETE_DEAD_WORKERS = sa.text("DELETE FROM worker WHERE expires_at < now() - interval '1 hour'")


async def reap_expired(db: Db, worker_id: str, *, limit: int = 500, max_lost: int = 3) -> list[TaskRow]:
    """Two statements for the caller's transaction: up to `limit` running tasks of workers whose lease expired
    (never `worker_id`'s own) are retried now, the lost attempt counted in `attempts` and `lost_attempts`
    (`retrying`, `failed` with none left, `canceled` if a cancel was requested; rows another reaper holds are
    skipped), or, at their `max_lost`th lost attempt, failed and `quarantined`; then worker rows expired for an
    hour are deleted."""
    rows = _rows(TaskRow, await db.execute(REAP_EXPIRED, _params(me=worker_id, limit=limit, max_lost=max_lost)))
    await db.execute(DELETE_DEAD_WORKERS)
    return rows


PURGE = sa.text(
    # Picked once, in a materialized CTE, so that `batch` bounds the rows (see REAP_EXPIRED).
    "WITH old AS MATERIALIZED (SELECT id FROM task "
    "WHERE status = ANY(CAST(:terminal AS text[])) AND finished_at < now() - make_interval(secs => :secs) "
    "LIMIT :batch FOR UPDATE SKIP LOCKED), "
    "d AS (DELETE FROM task WHERE id IN (SELECT id FROM old) RETURNING 1) SELECT count(*) FROM d"
)


async def purge(db: Db, *, older_than_s: float, batch: int) -> int:
    """Delete up to `batch` finished tasks (and their history) finished over `older_than_s` ago, skipping rows
    someone holds a lock on; returns how many."""
    return int((await db.execute(PURGE, _params(secs=older_than_s, batch=batch))).scalar_one())


# ---- the reconciler (one transaction that holds its advisory lock) ---------------------------------------------

RECONCILE_LOCK = 7314250001
TRY_RECONCILE_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")


async def try_reconcile_lock(db: Db) -> bool:
    """Take the reconciler's transaction-level advisory lock if no other process holds it."""
    return bool((await db.execute(TRY_RECONCILE_LOCK, {"k": RECONCILE_LOCK})).scalar_one())


# Where the scan starts, before the first task id.
NIL_ID = uuid.UUID(int=0)
RECONCILE_CURSOR = sa.text("SELECT last_id FROM reconcile_cursor WHERE name = 'waiting'")
SAVE_RECONCILE_CURSOR = sa.text(
    "INSERT INTO reconcile_cursor (name, last_id, updated_at) VALUES ('waiting', :last, now()) "
    "ON CONFLICT (name) DO UPDATE SET last_id = EXCLUDED.last_id, updated_at = EXCLUDED.updated_at"
)


async def reconcile_cursor(db: Db) -> uuid.UUID:
    """Where the last pass of the reconciler's scan stopped (the nil UUID: at the beginning)."""
    last: uuid.UUID | None = (await db.execute(RECONCILE_CURSOR)).scalar_one_or_none()
    return last or NIL_ID


async def save_reconcile_cursor(db: Db, last: uuid.UUID) -> None:
    """Where the next pass, of whichever process, carries on."""
    await db.execute(SAVE_RECONCILE_CURSOR, {"last": last})


RECONCILE_PAGE = sa.text(
    "SELECT id, generation, priority, run_at, clock_timestamp() AS db_now, queue, concurrency_key FROM task "
    "WHERE status = ANY(CAST(:waiting AS text[])) AND id > :last AND (NOT :wrapped OR id <= :start) "
    "AND updated_at < now() - interval '2 seconds' ORDER BY id LIMIT :limit"
)


async def reconcile_page(
    db: Db, *, after: uuid.UUID, limit: int, wrapped: bool = False, start: uuid.UUID = NIL_ID
) -> list[WaitingJob]:
    """Up to `limit` waiting tasks with id > `after`, in id order (after wrapping around, only up to `start`,
    where the pass began); tasks changed in the last two seconds are left out, their enqueue may be on its way."""
    params = _params(last=after, wrapped=wrapped, start=start, limit=limit)
    return _rows(WaitingJob, await db.execute(RECONCILE_PAGE, params))


JOB_STATES = sa.text(
    "SELECT id, generation, status, priority, run_at, clock_timestamp() AS db_now, queue, concurrency_key FROM task "
    "WHERE id = ANY(CAST(:ids AS uuid[]))"
)


async def job_states(db: Db, task_ids: Sequence[uuid.UUID]) -> list[JobState]:
    """The current generation and status of these tasks (those that still exist)."""
    return _rows(JobState, await db.execute(JOB_STATES, {"ids": list(task_ids)}))


LIVE_COUNT = sa.text("SELECT coalesce(sum(n), 0) FROM task_count WHERE status = ANY(CAST(:live AS text[]))")


async def live_count(db: Db) -> int:
    """Tasks waiting or running, from the counters (not a scan)."""
    return int((await db.execute(LIVE_COUNT, _params())).scalar_one())


# ---- schedules (migration 0006; the scheduler runs them under SCHEDULER_LOCK) ------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A `schedule` row, with the newest task it created (`last_task_*`, None before its first)."""

    name: str
    cron: str
    timezone: str
    task: dict[str, Any]
    overlap: str
    catchup_s: float
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    fired_total: int
    skipped_total: int
    missed_total: int
    last_skipped_at: datetime | None
    last_skip_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_task_id: uuid.UUID | None
    last_task_status: TaskStatus | None

    def __post_init__(self) -> None:
        if self.last_task_status is not None:
            object.__setattr__(self, "last_task_status", TaskStatus(self.last_task_status))


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule to insert, validated by the caller; `next_run_at` None while it is paused."""

    name: str
    cron: str
    timezone: str
    task: dict[str, Any]
    overlap: str
    catchup_s: float
    enabled: bool
    next_run_at: datetime | None


@dataclass(frozen=True, slots=True)
class FireRow:
    """One decided fire time of a schedule."""

    fire_at: datetime
    outcome: str
    detail: str | None
    at: datetime


_SCHEDULE_COLUMNS = ", ".join(f"s.{n}" for n in _names(ScheduleRow) if not n.startswith("last_task_"))
# The newest task of the schedule, through ix_task_schedule_created: one index probe per schedule.
_LAST_TASK = (
    "LEFT JOIN LATERAL (SELECT t.id AS last_task_id, t.status AS last_task_status FROM task t "
    "WHERE t.schedule = s.name ORDER BY t.created_at DESC, t.id DESC LIMIT 1) lt ON TRUE"
)


def _schedules(source: str, tail: str = "") -> sa.TextClause:
    """The schedule rows of `source` (the table, or a CTE named `s` before it) with their newest task."""
    table = "s" if source else "schedule s"
    return sa.text(f"{source} SELECT {_SCHEDULE_COLUMNS}, lt.* FROM {table} {_LAST_TASK} {tail}")  # noqa: S608


INSERT_SCHEDULE = _schedules(
    "WITH s AS (INSERT INTO schedule (name, cron, timezone, task, overlap, catchup_s, enabled, next_run_at, "
    "created_at, updated_at) VALUES (:name, :cron, :tz, CAST(:task AS jsonb), :overlap, :catchup, :enabled, "
    "CAST(:next AS timestamptz), now(), now()) ON CONFLICT (name) DO NOTHING RETURNING *)"
)


async def create_schedule(db: Db, new: NewSchedule) -> ScheduleRow | None:
    """Insert a schedule; None if one of that name exists (nothing is changed then)."""
    params = {
        "name": new.name,
        "cron": new.cron,
        "tz": new.timezone,
        "task": json.dumps(new.task, separators=(",", ":")),
        "overlap": new.overlap,
        "catchup": new.catchup_s,
        "enabled": new.enabled,
        "next": new.next_run_at,
    }
    rows = _rows(ScheduleRow, await db.execute(INSERT_SCHEDULE, params))
    return rows[0] if rows else None


GET_SCHEDULE = _schedules("", "WHERE s.name = :name")
LIST_SCHEDULES = _schedules("", "ORDER BY s.name")


async def get_schedule(db: Db, name: str) -> ScheduleRow | None:
    rows = _rows(ScheduleRow, await db.execute(GET_SCHEDULE, {"name": name}))
    return rows[0] if rows else None


async def list_schedules(db: Db) -> list[ScheduleRow]:
    """Every schedule, by name."""
    return _rows(ScheduleRow, await db.execute(LIST_SCHEDULES))


UPDATE_SCHEDULE = _schedules(
    "WITH s AS (UPDATE schedule SET cron = :cron, timezone = :tz, task = CAST(:task AS jsonb), overlap = :overlap, "
    "catchup_s = :catchup, enabled = :enabled, "
    "next_run_at = CASE WHEN :reschedule THEN CAST(:next AS timestamptz) ELSE next_run_at END, updated_at = now() "
    "WHERE name = :name RETURNING *)"
)


async def update_schedule(db: Db, new: NewSchedule, *, reschedule: bool) -> ScheduleRow | None:
    """Replace the schedule's settings with `new`'s; its next_run_at too if `reschedule` (else the scheduler's
    value stays, whatever it moved to meanwhile). None if there is no such schedule."""
    params = {
        "name": new.name,
        "cron": new.cron,
        "tz": new.timezone,
        "task": json.dumps(new.task, separators=(",", ":")),
        "overlap": new.overlap,
        "catchup": new.catchup_s,
        "enabled": new.enabled,
        "next": new.next_run_at,
        "reschedule": reschedule,
    }
    rows = _rows(ScheduleRow, await db.execute(UPDATE_SCHEDULE, params))
    return rows[0] if rows else None


DELETE_SCHEDULE = sa.text("DELETE FROM schedule WHERE name = :name RETURNING name")


async def delete_schedule(db: Db, name: str) -> bool:
    """Delete a schedule and its fire records; its tasks stay (with `schedule` still naming it)."""
    return (await db.execute(DELETE_SCHEDULE, {"name": name})).first() is not None


CLOCK = sa.text("SELECT clock_timestamp()")


async def db_now(db: Db) -> datetime:
    """Postgres's clock, now (not the start of the transaction): the scheduler's time."""
    now: datetime = (await db.execute(CLOCK)).scalar_one()
    return now


SCHEDULER_LOCK = 7314250002
TRY_SCHEDULER_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")


async def try_scheduler_lock(db: Db) -> bool:
    """Take the scheduler's transaction-level advisory lock if no other process holds it."""
    return bool((await db.execute(TRY_SCHEDULER_LOCK, {"k": SCHEDULER_LOCK})).scalar_one())


DUE_SCHEDULES = sa.text(
    "SELECT name FROM schedule WHERE enabled AND next_run_at <= :now ORDER BY next_run_at LIMIT :limit"
)


async def due_schedules(db: Db, now: datetime, *, limit: int = 100) -> list[str]:
    """Names of the enabled schedules due at `now`, the most overdue first."""
    return list((await db.execute(DUE_SCHEDULES, {"now": now, "limit": limit})).scalars())


LOCK_DUE_SCHEDULE = _schedules(
    "", "WHERE s.name = :name AND s.enabled AND s.next_run_at <= :now FOR UPDATE OF s SKIP LOCKED"
)


async def lock_due_schedule(db: Db, name: str, now: datetime) -> ScheduleRow | None:
    """The schedule, row-locked for the caller's transaction, if it is enabled, due at `now` and no other
    transaction holds it."""
    rows = _rows(ScheduleRow, await db.execute(LOCK_DUE_SCHEDULE, {"name": name, "now": now}))
    return rows[0] if rows else None


RECORD_FIRE = sa.text(
    "INSERT INTO schedule_fire (schedule, fire_at, outcome, detail, at) VALUES (:name, :fire_at, :outcome, "
    "CAST(:detail AS text), now()) ON CONFLICT (schedule, fire_at) DO NOTHING RETURNING fire_at"
)


async def record_fire(db: Db, name: str, fire_at: datetime, *, outcome: str, detail: str | None = None) -> bool:
    """Claim the fire time (schedule, fire_at) with its outcome; False if it was decided before (by another
    scheduler, or before a restart): then the caller does nothing for it."""
    params = {"name": name, "fire_at": fire_at, "outcome": outcome, "detail": detail}
    return (await db.execute(RECORD_FIRE, params)).first() is not None


ADVANCE_SCHEDULE = sa.text(
    "UPDATE schedule SET next_run_at = CASE WHEN :set_next THEN CAST(:next AS timestamptz) ELSE next_run_at END, "
    "fired_total = fired_total + :fired, skipped_total = skipped_total + :skipped, "
    "missed_total = missed_total + :missed, last_run_at = CASE WHEN :fired > 0 THEN now() ELSE last_run_at END, "
    "last_skipped_at = coalesce(CAST(:skipped_at AS timestamptz), last_skipped_at), "
    "last_skip_reason = CASE WHEN CAST(:skipped_at AS timestamptz) IS NULL THEN last_skip_reason "
    "ELSE CAST(:reason AS text) END WHERE name = :name"
)


async def advance_schedule(
    db: Db,
    name: str,
    *,
    next_run_at: datetime | None = None,
    set_next: bool = True,
    fired: int = 0,
    skipped: int = 0,
    missed: int = 0,
    skipped_at: datetime | None = None,
    reason: str | None = None,
) -> None:
    """After a fire (or a trigger: `set_next=False`): the next fire time, the counters, `last_run_at` = now when
    it `fired`, and the last skipped or missed fire time with its reason."""
    params = {
        "name": name,
        "next": next_run_at,
        "set_next": set_next,
        "fired": fired,
        "skipped": skipped,
        "missed": missed,
        "skipped_at": skipped_at,
        "reason": reason,
    }
    await db.execute(ADVANCE_SCHEDULE, params)


LIVE_SCHEDULE_TASKS = sa.text(
    "SELECT id FROM task WHERE schedule = :name AND status = ANY(CAST(:live AS text[])) ORDER BY created_at"
)


async def live_schedule_tasks(db: Db, name: str) -> list[uuid.UUID]:
    """The schedule's tasks still waiting or running, oldest first."""
    return list((await db.execute(LIVE_SCHEDULE_TASKS, _params(name=name))).scalars())


LIST_FIRES = sa.text(
    "SELECT fire_at, outcome, detail, at FROM schedule_fire WHERE schedule = :name ORDER BY fire_at DESC LIMIT :limit"
)


async def list_fires(db: Db, name: str, *, limit: int = 50) -> list[FireRow]:
    """The schedule's decided fire times, newest first."""
    return _rows(FireRow, await db.execute(LIST_FIRES, {"name": name, "limit": limit}))


PURGE_FIRES = sa.text(
    "WITH old AS MATERIALIZED (SELECT schedule, fire_at FROM schedule_fire "
    "WHERE at < now() - make_interval(secs => :secs) LIMIT :batch), "
    "d AS (DELETE FROM schedule_fire f USING old WHERE f.schedule = old.schedule AND f.fire_at = old.fire_at "
    "RETURNING 1) SELECT count(*) FROM d"
)


async def purge_fires(db: Db, *, older_than_s: float, batch: int = 1000) -> int:
    """Delete up to `batch` fire records decided over `older_than_s` ago (their fire times lie before every
    schedule's next_run_at, so no scheduler looks at them again); returns how many."""
    return int((await db.execute(PURGE_FIRES, {"secs": older_than_s, "batch": batch})).scalar_one())


# ---- probes --------------------------------------------------------------------------------------------------

PING = sa.text("SELECT 1")


async def ping(db: Db) -> None:
    """One round trip: Postgres answers."""
    await db.execute(PING)


def ping_sync(conn: sa.Connection) -> None:
    """`ping` for the synchronous migration tooling."""
    conn.execute(PING)


def schema_revisions(conn: sa.Connection) -> set[str]:
    """The alembic revision(s) the database is at (empty before the first migration)."""
    from alembic.runtime.migration import MigrationContext  # only the migration tooling needs alembic

    return set(MigrationContext.configure(conn).get_current_heads())


# ---- named queues (migration 0007) -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A queue as GET /api/v1/queues shows it: pause state, trigger-kept counters, live workers taking from it."""

    name: str
    paused: bool
    paused_at: datetime | None
    pending: int
    retrying: int
    running: int
    oldest_due_at: datetime | None
    workers: int
    now: datetime


def _list_queues(oldest: str) -> sa.TextClause:
    """Every queue that has a row (paused or resumed once) or a live task, plus `default`, with its counters (at
    most queues x 3 statuses x 3 priorities x 16 shards rows) and live workers; `oldest` is the expression for
    oldest_due_at."""
    return sa.text(
        # The counters hold every status (migration 0009): a queue is known by its live tasks, as before.
        "WITH names AS (SELECT name FROM queue UNION SELECT DISTINCT queue FROM task_queue_count "  # noqa: S608 - constant fragments
        "WHERE n <> 0 AND status = ANY(CAST(:live AS text[])) UNION SELECT CAST(:default AS text)), "
        "c AS (SELECT queue, status, sum(n)::bigint AS n FROM task_queue_count "
        "WHERE status = ANY(CAST(:live AS text[])) GROUP BY queue, status) "
        "SELECT names.name, coalesce(q.paused, FALSE) AS paused, "
        "CASE WHEN q.paused THEN q.paused_at END AS paused_at, "
        "coalesce((SELECT n FROM c WHERE c.queue = names.name AND c.status = :s_pending), 0) AS pending, "
        "coalesce((SELECT n FROM c WHERE c.queue = names.name AND c.status = :s_retrying), 0) AS retrying, "
        "coalesce((SELECT n FROM c WHERE c.queue = names.name AND c.status = :s_running), 0) AS running, "
        f"{oldest} AS oldest_due_at, "
        "(SELECT count(*) FROM worker w WHERE w.expires_at > now() "
        "AND (w.queues IS NULL OR names.name = ANY(w.queues))) AS workers, now() AS now "
        "FROM names LEFT JOIN queue q ON q.name = names.name ORDER BY names.name"
    )


# GET /api/v1/queues also wants the oldest due task of each queue: one probe of ix_task_queue_waiting per queue.
LIST_QUEUES = _list_queues(
    "(SELECT min(t.run_at) FROM task t WHERE t.queue = names.name AND t.status IN (:s_pending, :s_retrying) "
    "AND t.run_at <= now())"
)
# /metrics reads no task row at all (tests/integration/test_stats_cost.py).
QUEUE_COUNTS = _list_queues("CAST(NULL AS timestamptz)")


async def list_queues(db: Db, *, oldest: bool = True) -> list[QueueRow]:
    """Every known queue (see _list_queues) with its counts, by name; without `oldest` (and oldest_due_at None)
    it reads counters only."""
    return _rows(QueueRow, await db.execute(LIST_QUEUES if oldest else QUEUE_COUNTS, _params(default=DEFAULT_QUEUE)))


SET_QUEUE_PAUSED = sa.text(
    "INSERT INTO queue (name, paused, paused_at, updated_at) "
    "VALUES (:name, :paused, CASE WHEN :paused THEN now() END, now()) "
    "ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now(), "
    "paused_at = CASE WHEN EXCLUDED.paused AND queue.paused THEN queue.paused_at ELSE EXCLUDED.paused_at END"
)


async def set_queue_paused(db: Db, name: str, *, paused: bool) -> None:
    """Pause or resume a queue (creating its row); pausing a paused queue keeps its `paused_at`."""
    await db.execute(SET_QUEUE_PAUSED, {"name": name, "paused": paused})


PAUSED_QUEUES = sa.text("SELECT name FROM queue WHERE paused ORDER BY name")


async def paused_queues(db: Db) -> list[str]:
    """Names of the paused queues."""
    return list((await db.execute(PAUSED_QUEUES)).scalars())


# ---- per-key limits (migration 0008) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A key's limit (a `task_key` row), its running tasks and its rate's tokens now."""

    key: str
    running: int
    max_running: int | None
    rate_count: int | None
    rate_per_s: float | None
    tokens_now: float | None
    next_token_in_s: float | None  # with a rate and under one token: how long until one
    origin: str
    updated_at: datetime


# The bucket as of now: the trigger's refill formula (migration 0008), read without taking a token.
_TOKENS_NOW = (
    "CASE WHEN k.rate_count IS NULL THEN NULL ELSE least(k.rate_count::float8, coalesce(k.tokens, k.rate_count) "
    "+ greatest(0, extract(epoch FROM clock_timestamp() - k.refilled_at)) * k.rate_count / k.rate_per_s) END"
)
_KEY_COLUMNS = (
    "k.key, (SELECT count(*) FROM task t WHERE t.concurrency_key = k.key AND t.status = :s_running) AS running, "  # noqa: S608
    f"k.max_running, k.rate_count, k.rate_per_s, {_TOKENS_NOW} AS tokens_now, "
    f"CASE WHEN k.rate_count IS NULL OR {_TOKENS_NOW} >= 1 THEN NULL "
    f"ELSE (1 - {_TOKENS_NOW}) * k.rate_per_s / k.rate_count END AS next_token_in_s, k.origin, k.updated_at"
)
# A new or changed rate starts with a full bucket; an unchanged one keeps its tokens.
_UPSERT_LIMIT = (
    "ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running, rate_count = EXCLUDED.rate_count, "
    "rate_per_s = EXCLUDED.rate_per_s, origin = EXCLUDED.origin, updated_at = now(), "
    "tokens = CASE WHEN (k.rate_count, k.rate_per_s) IS NOT DISTINCT FROM (EXCLUDED.rate_count, EXCLUDED.rate_per_s) "
    "THEN k.tokens ELSE EXCLUDED.tokens END, "
    "refilled_at = CASE WHEN (k.rate_count, k.rate_per_s) IS NOT DISTINCT FROM "
    "(EXCLUDED.rate_count, EXCLUDED.rate_per_s) THEN k.refilled_at ELSE EXCLUDED.refilled_at END "
)

PUT_LIMIT = sa.text(
    "WITH k AS (INSERT INTO task_key AS k (key, max_running, rate_count, rate_per_s, tokens, refilled_at, origin, "  # noqa: S608 - constant
    "updated_at) VALUES (:key, CAST(:max_running AS int), CAST(:rate_count AS int), CAST(:rate_per_s AS float8), "
    "CAST(:rate_count AS int), clock_timestamp(), 'api', now()) "
    f"{_UPSERT_LIMIT}RETURNING k.*) SELECT {_KEY_COLUMNS} FROM k"
)


async def put_limit(
    db: Db, key: str, *, max_running: int | None, rate_count: int | None, rate_per_s: float | None
) -> KeyRow:
    """Set a key's limit (origin 'api'); a new or changed rate starts with a full bucket."""
    params = _params(key=key, max_running=max_running, rate_count=rate_count, rate_per_s=rate_per_s)
    return _rows(KeyRow, await db.execute(PUT_LIMIT, params))[0]


APPLY_TYPE_LIMITS = sa.text(
    # A type's default never replaces a limit a PUT set; it does follow a changed default of the type.
    "INSERT INTO task_key AS k (key, max_running, rate_count, rate_per_s, tokens, refilled_at, origin, updated_at) "  # noqa: S608 - constant
    "SELECT key, max_running, rate_count, rate_per_s, rate_count, clock_timestamp(), 'type', now() FROM unnest("
    "CAST(:keys AS text[]), CAST(:max_running AS int[]), CAST(:rate_count AS int[]), CAST(:rate_per_s AS float8[])) "
    f"AS i(key, max_running, rate_count, rate_per_s) ORDER BY key {_UPSERT_LIMIT}"
    "WHERE k.origin <> 'api' AND (k.max_running, k.rate_count, k.rate_per_s) "
    "IS DISTINCT FROM (EXCLUDED.max_running, EXCLUDED.rate_count, EXCLUDED.rate_per_s) "
    "RETURNING key"
)
# Reading first spares the common case (every key already has its default) the upsert's row locks.
TYPE_LIMITS_MISSING = sa.text(
    "SELECT i.key FROM unnest(CAST(:keys AS text[]), CAST(:max_running AS int[]), CAST(:rate_count AS int[]), "
    "CAST(:rate_per_s AS float8[])) AS i(key, max_running, rate_count, rate_per_s) LEFT JOIN task_key k "
    "ON k.key = i.key WHERE k.key IS NULL OR (k.origin <> 'api' AND (k.max_running, k.rate_count, k.rate_per_s) "
    "IS DISTINCT FROM (i.max_running, i.rate_count, i.rate_per_s))"
)


@dataclass(frozen=True, slots=True)
class TypeLimit:
    """The default limit a task type declares for each of its keys."""

    key: str
    max_running: int | None
    rate_count: int | None
    rate_per_s: float | None


async def apply_type_limits(db: Db, limits: Sequence[TypeLimit]) -> list[str]:
    """Give keys the default limit of their task type, unless a PUT set theirs; returns the keys changed (written
    in key order, so two submits of the same keys lock them in the same order)."""
    if not limits:
        return []
    params = {
        "keys": [lim.key for lim in limits],
        "max_running": [lim.max_running for lim in limits],
        "rate_count": [lim.rate_count for lim in limits],
        "rate_per_s": [lim.rate_per_s for lim in limits],
    }
    if not (await db.execute(TYPE_LIMITS_MISSING, params)).scalars().all():
        return []
    return sorted((await db.execute(APPLY_TYPE_LIMITS, params)).scalars())


GET_KEY = sa.text(f"SELECT {_KEY_COLUMNS} FROM task_key k WHERE k.key = :key")  # noqa: S608 - constant
GET_KEYS = sa.text(f"SELECT {_KEY_COLUMNS} FROM task_key k WHERE k.key = ANY(CAST(:keys AS text[]))")  # noqa: S608
LIST_LIMITS = sa.text(f"SELECT {_KEY_COLUMNS} FROM task_key k ORDER BY k.key")  # noqa: S608 - constant


async def get_key(db: Db, key: str) -> KeyRow | None:
    """A key's limit with its running tasks; None for a key without a limit."""
    rows = _rows(KeyRow, await db.execute(GET_KEY, _params(key=key)))
    return rows[0] if rows else None


async def get_keys(db: Db, keys: Sequence[str]) -> list[KeyRow]:
    """The limits of these keys (those that have one)."""
    return _rows(KeyRow, await db.execute(GET_KEYS, _params(keys=list(keys))))


async def list_limits(db: Db) -> list[KeyRow]:
    """Every key with a limit, by key."""
    return _rows(KeyRow, await db.execute(LIST_LIMITS, STATUS_PARAMS))


DELETE_LIMIT = sa.text("DELETE FROM task_key WHERE key = :key RETURNING key")


async def delete_limit(db: Db, key: str) -> bool:
    """Remove a key's limit; False if it had none."""
    return (await db.execute(DELETE_LIMIT, {"key": key})).scalar_one_or_none() is not None


# ---- webhooks (migration 0011; the dispatcher runs under WEBHOOK_LOCK, taskproc.webhooks) -----------------------


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """A `webhook` row."""

    id: uuid.UUID
    url: str
    events: list[str]
    filter: dict[str, Any] | None
    secret: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A `webhook_delivery` row without its body."""

    id: uuid.UUID
    webhook_id: uuid.UUID | None
    task_id: uuid.UUID | None
    url: str
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime
    expires_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: float | None
    last_error: str | None
    attempt_log: list[dict[str, Any]]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery this process has leased to attempt now: what it sends, and the secret that signs it."""

    id: uuid.UUID
    webhook_id: uuid.UUID | None
    url: str
    event: str
    body: str
    attempts: int
    secret: str | None  # the webhook's; None for a task's callback_url


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: uuid.UUID
    webhook_id: uuid.UUID | None
    task_id: uuid.UUID
    url: str
    event: str
    body: str


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A `task_event` row the dispatcher read; `task` is set for the events some target may want."""

    id: int
    status: TaskStatus
    at: datetime
    task: TaskRow | None


WEBHOOK_COLUMNS = ", ".join(_names(WebhookRow))
DELIVERY_COLUMNS = ", ".join(_names(DeliveryRow))
DELIVERY_PARAMS = {"d_pending": "pending", "d_delivered": "delivered", "d_failed": "failed"}

INSERT_WEBHOOK = sa.text(
    "INSERT INTO webhook (id, url, events, filter, secret, created_at) VALUES (:id, :url, CAST(:events AS jsonb), "  # noqa: S608
    f"CAST(:filter AS jsonb), :secret, now()) RETURNING {WEBHOOK_COLUMNS}"
)


async def create_webhook(
    db: Db, *, id: uuid.UUID, url: str, events: Sequence[str], filter: Mapping[str, Any] | None, secret: str
) -> WebhookRow:
    params = {
        "id": id,
        "url": url,
        "events": json.dumps(list(events)),
        "filter": None if filter is None else json.dumps(dict(filter)),
        "secret": secret,
    }
    return _make(WebhookRow, (await db.execute(INSERT_WEBHOOK, params)).one()._mapping)


GET_WEBHOOK = sa.text(f"SELECT {WEBHOOK_COLUMNS} FROM webhook WHERE id = :id")  # noqa: S608
LIST_WEBHOOKS = sa.text(f"SELECT {WEBHOOK_COLUMNS} FROM webhook ORDER BY created_at, id")  # noqa: S608
DELETE_WEBHOOK = sa.text("DELETE FROM webhook WHERE id = :id")


async def get_webhook(db: Db, webhook_id: uuid.UUID) -> WebhookRow | None:
    row = (await db.execute(GET_WEBHOOK, {"id": webhook_id})).first()
    return None if row is None else _make(WebhookRow, row._mapping)


async def list_webhooks(db: Db) -> list[WebhookRow]:
    """Every webhook, oldest first (they are few: operators make them)."""
    return _rows(WebhookRow, await db.execute(LIST_WEBHOOKS))


async def delete_webhook(db: Db, webhook_id: uuid.UUID) -> bool:
    """Delete a webhook and its deliveries (pending ones are never sent); False if there was none."""
    return bool(getattr(await db.execute(DELETE_WEBHOOK, {"id": webhook_id}), "rowcount", 0))


WEBHOOK_LOCK = 7314250004
TRY_WEBHOOK_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")


async def try_webhook_lock(db: Db) -> bool:
    """Take the webhook dispatcher's transaction-level advisory lock if no other process holds it."""
    return bool((await db.execute(TRY_WEBHOOK_LOCK, {"k": WEBHOOK_LOCK})).scalar_one())


WEBHOOK_CURSOR = sa.text("SELECT last_id, gaps FROM webhook_cursor WHERE name = 'dispatcher'")
SAVE_WEBHOOK_CURSOR = sa.text(
    "INSERT INTO webhook_cursor (name, last_id, gaps, updated_at) VALUES ('dispatcher', :last, CAST(:gaps AS jsonb), "
    "now()) ON CONFLICT (name) DO UPDATE SET last_id = EXCLUDED.last_id, gaps = EXCLUDED.gaps, "
    "updated_at = EXCLUDED.updated_at"
)


async def webhook_cursor(db: Db) -> tuple[int, dict[int, float]]:
    """The last task_event id the dispatcher read, and the ids below it it still waits for (id -> until, epoch
    seconds); a missing row (never the case after migration 0011) starts at the newest event."""
    row = (await db.execute(WEBHOOK_CURSOR)).first()
    if row is None:
        return await max_event_id(db), {}
    return int(row.last_id), {int(k): float(v) for k, v in dict(row.gaps).items()}


async def save_webhook_cursor(db: Db, last: int, gaps: Mapping[int, float]) -> None:
    await db.execute(SAVE_WEBHOOK_CURSOR, {"last": last, "gaps": json.dumps({str(k): v for k, v in gaps.items()})})


WEBHOOK_EVENTS = sa.text(
    # The task is joined only for the events a target may want: a status some webhook subscribes to, or a final
    # status of a task that has a callback_url. The other rows still come back, for the cursor and its gaps.
    "SELECT e.id AS e_id, e.status AS e_status, e.at AS e_at, "  # noqa: S608 - constant SQL
    f"{', '.join(f't.{c}' for c in _names(TaskRow))} "
    "FROM task_event e LEFT JOIN task t ON t.id = e.task_id AND (e.status = ANY(CAST(:wanted AS text[])) "
    "OR (e.status = ANY(CAST(:terminal AS text[])) AND t.callback_url IS NOT NULL)) "
    "WHERE e.id > :after OR e.id = ANY(CAST(:gaps AS bigint[])) ORDER BY e.id LIMIT :limit"
)


async def webhook_events(
    db: Db, after: int, *, wanted: Sequence[TaskStatus], gaps: Sequence[int] = (), limit: int = 500
) -> list[WebhookEvent]:
    """The task_event rows after `after` (and those of `gaps`), oldest first, each with its task as it is now
    when a webhook wants the status or the task has a callback_url and the status is final."""
    params = _params(after=after, wanted=[s.value for s in wanted], gaps=list(gaps), limit=limit)
    out: list[WebhookEvent] = []
    for r in await db.execute(WEBHOOK_EVENTS, params):
        m = r._mapping
        task = None if m["id"] is None else _make(TaskRow, m)
        out.append(WebhookEvent(id=int(m["e_id"]), status=TaskStatus(m["e_status"]), at=m["e_at"], task=task))
    return out


INSERT_DELIVERIES = sa.text(
    "INSERT INTO webhook_delivery (id, webhook_id, task_id, url, event, body, status, attempts, next_attempt_at, "
    "expires_at, created_at) "
    "SELECT id, webhook_id, task_id, url, event, body, :d_pending, 0, now(), now() + make_interval(secs => :max_age), "
    "now() FROM unnest(CAST(:ids AS uuid[]), CAST(:webhooks AS uuid[]), CAST(:tasks AS uuid[]), "
    "CAST(:urls AS text[]), CAST(:events AS text[]), CAST(:bodies AS text[])) "
    "AS i(id, webhook_id, task_id, url, event, body)"
)


async def insert_deliveries(db: Db, deliveries: Sequence[NewDelivery], *, max_age_s: float) -> None:
    """Queue deliveries, due now, that give up `max_age_s` from now."""
    params = {
        **DELIVERY_PARAMS,
        "max_age": max_age_s,
        "ids": [d.id for d in deliveries],
        "webhooks": [d.webhook_id for d in deliveries],
        "tasks": [d.task_id for d in deliveries],
        "urls": [d.url for d in deliveries],
        "events": [d.event for d in deliveries],
        "bodies": [d.body for d in deliveries],
    }
    await db.execute(INSERT_DELIVERIES, params)


LEASE_DUE_DELIVERIES = sa.text(
    # SKIP LOCKED and the lease (next_attempt_at moved past the attempt's timeout) let every API process send:
    # none takes a row another one is sending, and a process that dies mid-attempt leaves its rows due again.
    "WITH due AS (SELECT id FROM webhook_delivery WHERE status = :d_pending AND next_attempt_at <= now() "
    "ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
    "UPDATE webhook_delivery d SET next_attempt_at = now() + make_interval(secs => :lease) FROM due "
    "WHERE d.id = due.id RETURNING d.id, d.webhook_id, d.url, d.event, d.body, d.attempts, "
    "(SELECT w.secret FROM webhook w WHERE w.id = d.webhook_id) AS secret"
)


async def lease_due_deliveries(db: Db, *, limit: int, lease_s: float) -> list[DueDelivery]:
    """Up to `limit` due deliveries, leased to the caller for `lease_s` seconds."""
    params = {**DELIVERY_PARAMS, "limit": limit, "lease": lease_s}
    return _rows(DueDelivery, await db.execute(LEASE_DUE_DELIVERIES, params))


# The latest attempts a delivery keeps in its attempt_log.
ATTEMPT_LOG_MAX = 20

RECORD_ATTEMPT = sa.text(
    # A compare-and-set on the attempt count: a lease that ran out (the row was sent again elsewhere) or a
    # redelivery in between records nothing twice. A failure whose retry would come after expires_at is final.
    "UPDATE webhook_delivery SET attempts = attempts + 1, last_attempt_at = now(), last_status_code = :code, "  # noqa: S608
    "last_latency_ms = :latency, last_error = :error, "
    "attempt_log = (SELECT coalesce(jsonb_agg(x ORDER BY n), '[]'::jsonb) FROM (SELECT x, n FROM "
    "jsonb_array_elements(attempt_log || jsonb_build_array(jsonb_build_object('at', now(), 'status_code', "
    "CAST(:code AS int), 'latency_ms', CAST(:latency AS float8), 'error', CAST(:error AS text)))) "
    f"WITH ORDINALITY AS a(x, n) ORDER BY n DESC LIMIT {ATTEMPT_LOG_MAX}) AS kept), "
    "status = CASE WHEN :delivered THEN :d_delivered "
    "WHEN now() + make_interval(secs => :delay) > expires_at THEN :d_failed ELSE :d_pending END, "
    "next_attempt_at = CASE WHEN :delivered THEN next_attempt_at ELSE now() + make_interval(secs => :delay) END "
    "WHERE id = :id AND attempts = :attempts AND status = :d_pending RETURNING status"
)


async def record_attempt(
    db: Db,
    delivery_id: uuid.UUID,
    *,
    attempts: int,
    delivered: bool,
    status_code: int | None,
    latency_ms: float,
    error: str | None,
    retry_in_s: float,
) -> str | None:
    """Record the attempt made after `attempts` earlier ones: delivered, or due again in `retry_in_s` (failed
    when that is past its expiry). Returns the delivery's new status, None if the row moved on meanwhile."""
    params = {
        **DELIVERY_PARAMS,
        "id": delivery_id,
        "attempts": attempts,
        "delivered": delivered,
        "code": status_code,
        "latency": latency_ms,
        "error": None if error is None else storable(error, 1000),
        "delay": retry_in_s,
    }
    status: str | None = (await db.execute(RECORD_ATTEMPT, params)).scalar_one_or_none()
    return status


LIST_DELIVERIES = sa.text(
    f"SELECT {DELIVERY_COLUMNS} FROM webhook_delivery WHERE webhook_id = :webhook "  # noqa: S608
    "ORDER BY created_at DESC, id DESC LIMIT :limit"
)
LIST_TASK_DELIVERIES = sa.text(
    f"SELECT {DELIVERY_COLUMNS} FROM webhook_delivery WHERE task_id = :task "  # noqa: S608
    "ORDER BY created_at DESC, id DESC LIMIT :limit"
)
GET_DELIVERY = sa.text(f"SELECT {DELIVERY_COLUMNS} FROM webhook_delivery WHERE id = :id")  # noqa: S608


async def list_deliveries(db: Db, webhook_id: uuid.UUID, *, limit: int = 50) -> list[DeliveryRow]:
    """A webhook's deliveries, newest first."""
    return _rows(DeliveryRow, await db.execute(LIST_DELIVERIES, {"webhook": webhook_id, "limit": limit}))


async def list_task_deliveries(db: Db, task_id: uuid.UUID, *, limit: int = 50) -> list[DeliveryRow]:
    """The deliveries about one task (its webhooks' and its callback_url's), newest first."""
    return _rows(DeliveryRow, await db.execute(LIST_TASK_DELIVERIES, {"task": task_id, "limit": limit}))


async def get_delivery(db: Db, delivery_id: uuid.UUID) -> DeliveryRow | None:
    row = (await db.execute(GET_DELIVERY, {"id": delivery_id})).first()
    return None if row is None else _make(DeliveryRow, row._mapping)


REDELIVER = sa.text(
    "UPDATE webhook_delivery SET status = :d_pending, next_attempt_at = now(), "  # noqa: S608
    f"expires_at = now() + make_interval(secs => :max_age) WHERE id = :id RETURNING {DELIVERY_COLUMNS}"
)


async def redeliver(db: Db, delivery_id: uuid.UUID, *, max_age_s: float) -> DeliveryRow | None:
    """Make a delivery due now again, whatever became of it, with a new day of retries (same id, same body:
    receivers deduplicate on webhook-id). None if there is no such delivery."""
    params = {**DELIVERY_PARAMS, "id": delivery_id, "max_age": max_age_s}
    row = (await db.execute(REDELIVER, params)).first()
    return None if row is None else _make(DeliveryRow, row._mapping)


PURGE_DELIVERIES = sa.text(
    "WITH old AS (SELECT id FROM webhook_delivery WHERE status <> :d_pending "
    "AND created_at < now() - make_interval(secs => :secs) LIMIT :batch), "
    "d AS (DELETE FROM webhook_delivery w USING old WHERE w.id = old.id RETURNING 1) SELECT count(*) FROM d"
)


async def purge_deliveries(db: Db, *, older_than_s: float, batch: int = 1000) -> int:
    """Delete up to `batch` finished deliveries created over `older_than_s` ago; returns how many."""
    params = {**DELIVERY_PARAMS, "secs": older_than_s, "batch": batch}
    return int((await db.execute(PURGE_DELIVERIES, params)).scalar_one())


# ---- bulk actions (migration 0010) -------------------------------------------------------------------------------

# The single-task transitions above, for a batch of ids: each row is still a compare-and-set on its status.
_MANY = "id = ANY(CAST(:ids AS uuid[]))"

# A bulk operation's statuses, bound like the tasks' (BulkStatus has some of the same words).
BULK_PARAMS = {"bulk_running": BulkStatus.running.value, "bulk_completed": BulkStatus.completed.value}

# One step of a bulk operation as ONE statement (run in autocommit): it takes the operation's row (SKIP LOCKED,
# and only if its cursor is still where this step read its page: two API replicas never apply one batch twice),
# applies the action to the batch, and records the counts and the new cursor. The task rows' locks and the
# counters' rows the statement's triggers write live for this statement only, never across a round trip.
_STEP_LOCK = (
    "op AS (SELECT id FROM bulk_operation WHERE id = :op_id AND status = :bulk_running "
    "AND (cursor_at, cursor_id) IS NOT DISTINCT FROM (CAST(:old_at AS timestamptz), CAST(:old_id AS uuid)) "
    "FOR UPDATE SKIP LOCKED), "
)
_STEP_GUARD = " AND EXISTS (SELECT 1 FROM op)"


def _step_record(applied: str) -> str:
    """The CTE recording a step's outcome, counting the rows of the CTE `applied` (a constant name)."""
    return (
        f"rec AS (UPDATE bulk_operation SET done = done + (SELECT count(*) FROM {applied}), "  # noqa: S608 - constant
        f"failed = failed + CAST(:matched AS int) - (SELECT count(*) FROM {applied}), "
        "cursor_at = CAST(:new_at AS timestamptz), cursor_id = CAST(:new_id AS uuid), "
        "status = CASE WHEN :finished THEN :bulk_completed ELSE status END, "
        "finished_at = CASE WHEN :finished THEN now() END, updated_at = clock_timestamp() "
        "WHERE id IN (SELECT id FROM op)) "
    )


BULK_STEP = {
    "retry": _transition(
        sets=_RETRY_SETS,
        where=f"{_MANY} AND {_RETRY_WHERE}{_STEP_GUARD}",
        detail="CAST(:detail AS text)",
        with_=_STEP_LOCK,
        then=", " + _step_record("t"),
    ),
    "cancel": _transition(
        sets=_CANCEL_SETS,
        where=f"{_MANY} AND {_CANCEL_WHERE}{_STEP_GUARD}",
        detail="CAST(:detail AS text)",
        event_where="WHERE status = :s_canceled",
        with_=_STEP_LOCK,
        then=", " + _step_record("t"),
    ),
    "set_priority": _transition(
        sets=_PRIORITY_SETS,
        where=f"{_MANY} AND {_PRIORITY_WHERE}{_STEP_GUARD}",
        detail="CAST(:detail AS text)",
        with_=_STEP_LOCK,
        then=", " + _step_record("t"),
    ),
    "delete": sa.text(
        f"WITH {_STEP_LOCK}d AS (DELETE FROM task WHERE {_MANY} AND status = ANY(CAST(:terminal AS text[]))"  # noqa: S608
        f"{_STEP_GUARD} RETURNING id), {_step_record('d')}SELECT id FROM d"
    ),
}


async def bulk_step(
    db: Db,
    op: BulkRow,
    ids: Sequence[uuid.UUID],
    *,
    last: tuple[datetime, uuid.UUID] | None,
    finished: bool,
    detail: str,
) -> list[TaskRow]:
    """Apply `op`'s action to `ids` (its page after its cursor) and advance the cursor to `last`, in one
    statement; the task rows changed (none for a delete). Does nothing if another process holds or moved the
    operation meanwhile."""
    params = _params(
        **BULK_PARAMS,
        op_id=op.id,
        old_at=op.cursor_at,
        old_id=op.cursor_id,
        new_at=None if last is None else last[0],
        new_id=None if last is None else last[1],
        matched=len(ids),
        finished=finished,
        ids=list(ids),
        detail=detail,
        priority=op.priority,
    )
    result = await db.execute(BULK_STEP[op.action], params)
    return [] if op.action == "delete" else _rows(TaskRow, result)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """The list filters, as a bulk operation stores them (None: any)."""

    status: str | None = None
    type: str | None = None
    priority: str | None = None
    queue: str | None = None
    schedule: str | None = None
    created_before: datetime | None = None
    created_after: datetime | None = None


_FILTER_SQL = {
    "status": "status = :status",
    "type": "type = :type",
    "priority": "priority = :priority",
    "queue": "queue = :queue",
    "schedule": "schedule = :schedule",
    "created_before": "created_at < :created_before",
    "created_after": "created_at >= :created_after",
}


def _filter_where(f: TaskFilter, cutoff: datetime | None) -> tuple[list[str], dict[str, Any]]:
    """The WHERE fragments (constants, one per filter set) and their parameters."""
    where, params = ["TRUE"], {}
    for name, fragment in _FILTER_SQL.items():
        value = getattr(f, name)
        if value is not None:
            where.append(fragment)
            params[name] = value
    if cutoff is not None:
        where.append("created_at < :cutoff")
        params["cutoff"] = cutoff
    return where, params


async def count_matching(db: Db, f: TaskFilter) -> int:
    """How many tasks the filter matches now."""
    where, params = _filter_where(f, None)
    query = sa.text(f"SELECT count(*) FROM task WHERE {' AND '.join(where)}")  # noqa: S608 - constant fragments
    return int((await db.execute(query, params)).scalar_one())


async def matching_page(
    db: Db, f: TaskFilter, *, cutoff: datetime, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[tuple[datetime, uuid.UUID]]:
    """(created_at, id) of up to `limit` matching tasks created before `cutoff`, newest first, after `after`
    (the list's keyset order, so each filter walks the index the list uses)."""
    where, params = _filter_where(f, cutoff)
    if after is not None:
        where.append("(created_at, id) < (:c_at, :c_id)")
        params["c_at"], params["c_id"] = after
    params["limit"] = limit
    query = sa.text(
        f"SELECT created_at, id FROM task WHERE {' AND '.join(where)} "  # noqa: S608 - constant fragments
        "ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
    return [(r[0], r[1]) for r in await db.execute(query, params)]


@dataclass(frozen=True, slots=True)
class BulkRow:
    """A `bulk_operation` row."""

    id: uuid.UUID
    action: str
    filter: dict[str, Any]
    priority: str | None
    status: str
    total: int
    done: int
    failed: int
    cutoff: datetime
    cursor_at: datetime | None
    cursor_id: uuid.UUID | None
    requested_by: str
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


_BULK_COLUMNS = ", ".join(_names(BulkRow))

INSERT_BULK = sa.text(
    "INSERT INTO bulk_operation (id, action, filter, priority, status, total, cutoff, requested_by, request_id, "  # noqa: S608
    "created_at, updated_at) VALUES (:id, :action, CAST(:filter AS jsonb), :priority, :bulk_running, :total, now(), "
    f":requested_by, :request_id, now(), now()) RETURNING {_BULK_COLUMNS}"
)


async def create_bulk(
    db: Db,
    *,
    action: str,
    filter_json: str,
    priority: str | None,
    total: int,
    requested_by: str,
    request_id: str | None,
) -> BulkRow:
    """A running operation over the tasks created before now()."""
    params = {
        **BULK_PARAMS,
        "id": uuid.uuid4(),
        "action": action,
        "filter": filter_json,
        "priority": priority,
        "total": total,
        "requested_by": requested_by,
        "request_id": request_id,
    }
    return _rows(BulkRow, await db.execute(INSERT_BULK, params))[0]


GET_BULK = sa.text(f"SELECT {_BULK_COLUMNS} FROM bulk_operation WHERE id = :id")  # noqa: S608 - constant
LIST_BULK = sa.text(f"SELECT {_BULK_COLUMNS} FROM bulk_operation ORDER BY created_at DESC LIMIT :limit")  # noqa: S608
# The oldest running operation (a step claims it in its own statement, see BULK_STEP).
NEXT_BULK = sa.text(
    f"SELECT {_BULK_COLUMNS} FROM bulk_operation WHERE status = :bulk_running ORDER BY created_at LIMIT 1"  # noqa: S608
)
CHANGED_BULK = sa.text(
    f"SELECT {_BULK_COLUMNS} FROM bulk_operation WHERE updated_at > :since ORDER BY updated_at LIMIT 100"  # noqa: S608
)


async def get_bulk(db: Db, bulk_id: uuid.UUID) -> BulkRow | None:
    rows = _rows(BulkRow, await db.execute(GET_BULK, {"id": bulk_id}))
    return rows[0] if rows else None


async def list_bulk(db: Db, *, limit: int = 50) -> list[BulkRow]:
    """The newest operations first (the audit trail)."""
    return _rows(BulkRow, await db.execute(LIST_BULK, {"limit": limit}))


async def next_bulk(db: Db) -> BulkRow | None:
    """The oldest running operation; None if there is none."""
    rows = _rows(BulkRow, await db.execute(NEXT_BULK, BULK_PARAMS))
    return rows[0] if rows else None


async def bulk_changed_since(db: Db, since: datetime) -> list[BulkRow]:
    """Operations whose progress moved after `since` (for the event stream), oldest change first."""
    return _rows(BulkRow, await db.execute(CHANGED_BULK, {"since": since}))


# ---- results that expire (migration 0012) ------------------------------------------------------------------

EXPIRE_RESULTS = sa.text(
    # Picked once, in a materialized CTE, so that `batch` bounds the rows (see REAP_EXPIRED); the partial index
    # ix_task_result_expiring holds exactly the results still to expire, oldest first.
    "WITH due AS MATERIALIZED (SELECT id FROM task "
    "WHERE result_ttl_s IS NOT NULL AND result IS NOT NULL AND finished_at IS NOT NULL "
    "AND finished_at + make_interval(secs => result_ttl_s) <= now() "
    "ORDER BY finished_at LIMIT :batch FOR UPDATE SKIP LOCKED), "
    "x AS (UPDATE task SET result = NULL, result_expired_at = now(), updated_at = now() "
    "WHERE id IN (SELECT id FROM due) AND result IS NOT NULL RETURNING 1) SELECT count(*) FROM x"
)


async def expire_results(db: Db, *, batch: int) -> int:
    """Drop the results of up to `batch` finished tasks whose `result_ttl_s` has passed (the row and its history
    stay, `result_expired_at` says when), skipping rows someone holds a lock on; returns how many."""
    return int((await db.execute(EXPIRE_RESULTS, {"batch": batch})).scalar_one())


# ---- stats history (migration 0016) ----------------------------------------------------------------------------

STATS_SAMPLE_LOCK = 7314250016
TRY_STATS_SAMPLE_LOCK = sa.text("SELECT pg_try_advisory_xact_lock(:k)")


@dataclass(frozen=True, slots=True)
class StatsSampleRow:
    """A `stats_sample` row: one interval's finished tasks and percentiles, and the backlog at its end."""

    at: datetime
    interval_s: float
    completed: int
    failed: int
    canceled: int
    ready: int
    running: int
    wait_p50_s: float | None
    wait_p95_s: float | None
    wait_p99_s: float | None
    run_p50_s: float | None
    run_p95_s: float | None
    run_p99_s: float | None


STATS_SAMPLE_COLUMNS = ", ".join(_names(StatsSampleRow))
_PERCENTILES = "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {}) FILTER (WHERE {})"
_RAN = "started_at IS NOT NULL AND status <> :s_canceled"
TAKE_STATS_SAMPLE = sa.text(
    # The interval ends `:lag_s` ago, so that a completion whose transaction commits just after this statement
    # began (its finished_at is its own now()) still falls into the next interval instead of none.
    "WITH prev AS (SELECT max(at) AS at FROM stats_sample), "  # noqa: S608 - constant fragments
    "b AS (SELECT now() - make_interval(secs => :lag_s) AS until, greatest(coalesce(prev.at, now() - "
    "make_interval(secs => :lag_s + :first_s)), now() - make_interval(secs => :lag_s + :max_s)) AS since, "
    "prev.at AS prev_at FROM prev), "
    # Bounded by the partial index on finished_at (ix_task_terminal_finished): only the interval's rows are read.
    "fin AS (SELECT t.status, t.run_at, t.started_at, t.finished_at FROM task t, b "
    "WHERE t.status = ANY(CAST(:terminal AS text[])) AND t.finished_at > b.since AND t.finished_at <= b.until), "
    "agg AS (SELECT count(*) FILTER (WHERE status = :s_completed) AS completed, "
    "count(*) FILTER (WHERE status = :s_failed) AS failed, count(*) FILTER (WHERE status = :s_canceled) AS canceled, "
    + _PERCENTILES.format("greatest(extract(epoch FROM started_at - run_at), 0)", _RAN)
    + " AS wait, "
    + _PERCENTILES.format("greatest(extract(epoch FROM finished_at - started_at), 0)", _RAN)
    + " AS run FROM fin), "
    # The backlog from the trigger-kept counters (migration 0002), never from the task table.
    "c AS (SELECT coalesce(sum(n) FILTER (WHERE status = ANY(CAST(:waiting AS text[]))), 0)::bigint AS ready, "
    "coalesce(sum(n) FILTER (WHERE status = :s_running), 0)::bigint AS running FROM task_count) "
    "INSERT INTO stats_sample (" + STATS_SAMPLE_COLUMNS + ") "
    "SELECT b.until, extract(epoch FROM b.until - b.since), agg.completed, agg.failed, agg.canceled, c.ready, "
    "c.running, agg.wait[1], agg.wait[2], agg.wait[3], agg.run[1], agg.run[2], agg.run[3] FROM b, agg, c "
    # Another API process took a sample a moment ago (the lock is held only while one is taken).
    "WHERE b.prev_at IS NULL OR b.prev_at <= b.until - make_interval(secs => :min_gap_s) "
    "ON CONFLICT (at) DO NOTHING RETURNING " + STATS_SAMPLE_COLUMNS
)
PRUNE_STATS_SAMPLES = sa.text("DELETE FROM stats_sample WHERE at < now() - make_interval(secs => :keep_s)")
STATS_SAMPLES = sa.text(
    "SELECT " + STATS_SAMPLE_COLUMNS + " FROM stats_sample "  # noqa: S608 - constant fragments
    "WHERE at > now() - make_interval(secs => :window_s) ORDER BY at"
)


async def try_stats_sample_lock(db: Db) -> bool:
    """Take the stats sampler's transaction-level advisory lock if no other process holds it."""
    return bool((await db.execute(TRY_STATS_SAMPLE_LOCK, {"k": STATS_SAMPLE_LOCK})).scalar_one())


async def take_stats_sample(
    db: Db, *, interval_s: float, lag_s: float = 1.0, max_interval_s: float = 300.0
) -> StatsSampleRow | None:
    """Record the interval since the last sample (the first one covers `interval_s`, none more than
    `max_interval_s`): its completed, failed and canceled tasks, their wait and run percentiles, and the waiting
    and running counters now. None if another process sampled less than half an interval ago."""
    params = _params(lag_s=lag_s, first_s=interval_s, max_s=max_interval_s, min_gap_s=interval_s / 2)
    rows = _rows(StatsSampleRow, await db.execute(TAKE_STATS_SAMPLE, params))
    return rows[0] if rows else None


async def prune_stats_samples(db: Db, *, keep_s: float) -> int:
    """Delete the samples older than `keep_s`; how many."""
    return int(getattr(await db.execute(PRUNE_STATS_SAMPLES, {"keep_s": keep_s}), "rowcount", 0))


async def stats_samples(db: Db, *, window_s: float) -> list[StatsSampleRow]:
    """The samples of the last `window_s` seconds, oldest first (at most window / sample interval rows)."""
    return _rows(StatsSampleRow, await db.execute(STATS_SAMPLES, {"window_s": window_s}))
