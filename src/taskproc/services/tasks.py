"""Task service: every state change is one compare-and-set statement that also appends the event row.

Postgres commits first; Redis is told afterwards, best effort. If that second step fails (Redis down, process
killed), the reconciler finds the pending task missing from the queue and enqueues it, so a 201 is never lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import queue, testhooks
from taskproc.config import Settings
from taskproc.errors import ConflictError, FieldPath, InvalidInputError, NotFoundError, Problem
from taskproc.models import (
    TERMINAL,
    Priority,
    QueueCounts,
    Stats,
    Task,
    TaskCounts,
    TaskCreate,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskStatus,
    TaskUpdate,
    TaskWaiting,
)
from taskproc.tasks.registry import TaskRegistry

log = logging.getLogger("taskproc.service")

TASK_COLUMNS = (
    "id, type, priority, payload, status, attempts, max_retries, timeout_s, result, error, idempotency_key, "
    "generation, run_at, worker_id, cancel_requested, created_at, started_at, finished_at, updated_at"
)


_INSERT_TASKS = sa.text(
    "WITH input AS (SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), "  # noqa: S608 - constant SQL, values bound
    "CAST(:priorities AS text[]), CAST(:payloads AS text[]), CAST(:max_retries AS int[]), "
    "CAST(:timeouts AS float8[]), CAST(:keys AS text[]), CAST(:delays AS float8[])) WITH ORDINALITY "
    "AS i(id, type, priority, payload, max_retries, timeout_s, idempotency_key, delay_s, ord)), "
    "ins AS (INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, "
    "idempotency_key, generation, run_at, cancel_requested, created_at, updated_at) "
    "SELECT id, type, priority, CAST(payload AS jsonb), 'pending', 0, max_retries, timeout_s, idempotency_key, "
    "1, now() + make_interval(secs => delay_s), FALSE, now(), now() FROM input ORDER BY ord "
    "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    f"RETURNING {TASK_COLUMNS}), "
    "ev AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, created_at, 'pending', 0, 'accepted' FROM ins) "
    "SELECT * FROM ins"
)


def _insert_params(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ids": [r["id"] for r in rows],
        "types": [r["type"] for r in rows],
        "priorities": [r["priority"] for r in rows],
        "payloads": [json.dumps(r["payload"], separators=(",", ":")) for r in rows],
        "max_retries": [r["max_retries"] for r in rows],
        "timeouts": [float(r["timeout_s"]) for r in rows],
        "keys": [r["idempotency_key"] for r in rows],
        "delays": [r["delay_s"] for r in rows],
    }


def to_public(row: Any) -> TaskPublic:
    return TaskPublic.model_validate(row._mapping if hasattr(row, "_mapping") else row)


async def transition(
    session: AsyncSession, *, sets: str, where: str, params: dict[str, Any], detail: str | None
) -> list[Any]:
    """UPDATE task ... WHERE <where> and append one event per changed row, in one statement.

    `sets` and `where` are constant SQL fragments written in this package; values only ever travel as
    bound parameters.
    """
    sql = sa.text(
        f"WITH t AS (UPDATE task SET {sets}, updated_at = now() WHERE {where} RETURNING {TASK_COLUMNS}), "  # noqa: S608
        "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
        "SELECT id, updated_at, status, attempts, CAST(:detail AS text) FROM t) "
        "SELECT * FROM t"
    )
    result = await session.execute(sql, {**params, "detail": detail})
    return list(result.fetchall())


async def _redis_best_effort(what: str, coro: Any) -> None:
    try:
        await coro
    except (RedisError, OSError, TimeoutError) as exc:
        # The reconciler repairs the queue from Postgres; the caller's answer does not depend on Redis.
        log.warning("redis unavailable, %s deferred to the reconciler: %s", what, type(exc).__name__)


def enqueue_item(row: Any, db_now: datetime | None = None) -> queue.Enqueue:
    """The queue entry of a task row, its delay computed on Postgres's clock alone.

    `db_now` is Postgres's now() at the time the row was read; without it the row's `updated_at` is used, which
    every statement that returns rows to enqueue (insert, transitions) sets to now() itself.
    """
    m = row._mapping
    now = db_now if db_now is not None else m["updated_at"]
    return queue.Enqueue(
        task_id=m["id"],
        generation=m["generation"],
        priority=Priority(m["priority"]),
        delay_ms=int((m["run_at"] - now).total_seconds() * 1000),
    )


async def create_tasks(
    *,
    session: AsyncSession,
    redis: Redis,
    tasks_in: Sequence[TaskCreate],
    settings: Settings,
    registry: TaskRegistry,
    batch: bool = False,
) -> list[tuple[TaskPublic, bool]]:
    """Validate every payload, then insert all tasks in one transaction; (task, created) per input, in order.

    A task whose idempotency key already exists is returned as it is, not created again, even when concurrent
    requests race on the same key (the unique index decides, ON CONFLICT DO NOTHING yields to the winner).
    """
    problems: list[Problem] = []
    payloads: list[dict[str, Any]] = []
    seen_keys: dict[str, int] = {}
    for index, task_in in enumerate(tasks_in):
        at: FieldPath = ("tasks", index) if batch else ()
        try:
            payloads.append(registry.validate_payload(task_in.type, task_in.payload, at=at))
        except InvalidInputError as exc:
            problems.extend(exc.problems)
            payloads.append({})
        key = task_in.idempotency_key
        if key is not None:
            if key in seen_keys:
                problems.append(
                    Problem(
                        field=(*at, "idempotency_key"),
                        msg=f"duplicate idempotency_key, also used at index {seen_keys[key]}",
                        type="duplicate_idempotency_key",
                    )
                )
            seen_keys.setdefault(key, index)
    if problems:
        raise InvalidInputError(problems)

    # No times from this process's clock: created_at and run_at are Postgres's now() (+ the delay), the one clock
    # every worker's claim and lease compare with.
    rows: list[dict[str, Any]] = []
    for task_in, payload in zip(tasks_in, payloads, strict=True):
        rows.append(
            {
                "id": uuid.uuid4(),
                "type": task_in.type,
                "priority": task_in.priority.value,
                "payload": payload,
                "status": TaskStatus.pending.value,
                "attempts": 0,
                "max_retries": settings.max_retries if task_in.max_retries is None else task_in.max_retries,
                "timeout_s": settings.task_timeout_s if task_in.timeout_s is None else task_in.timeout_s,
                "idempotency_key": task_in.idempotency_key,
                "generation": 1,
                "delay_s": float(task_in.delay_s or 0.0),
                "cancel_requested": False,
            }
        )
    # One fixed statement whatever the batch size (arrays through unnest), so psycopg prepares it once and
    # nothing is compiled per request; the first event rows are written by the same statement. Rows go in key
    # order: two batches racing on the same keys then wait on each other in the same order and never deadlock.
    ordered = sorted(rows, key=lambda r: r["idempotency_key"] or "")
    table = Task.__table__  # type: ignore[attr-defined]
    inserted: dict[uuid.UUID, Any] = {}
    existing: dict[str, Any] = {}
    todo = ordered
    # The insert and the read of the tasks that already had the key are two statements (autocommit: two
    # snapshots), so the existing task can be purged (or deleted) between them. A key found by neither is free
    # again: insert those rows once more. Each round needs another purge of the same key in the same gap, so
    # the loop ends at once in practice; the bound only keeps a pathological case from spinning.
    for _ in range(10):
        result = await session.execute(_INSERT_TASKS, _insert_params(todo))
        inserted.update({r.id: r for r in result.fetchall()})
        missing_keys = [r["idempotency_key"] for r in todo if r["id"] not in inserted and r["idempotency_key"]]
        if not missing_keys:
            break
        await testhooks.point("create.after_insert")
        found = await session.execute(sa.select(table).where(table.c.idempotency_key.in_(missing_keys)))
        existing.update({r.idempotency_key: r for r in found.fetchall()})
        todo = [r for r in todo if r["id"] not in inserted and r["idempotency_key"] not in existing]
        if not todo:
            break
        log.info("idempotency key freed between insert and read; inserting again", extra={"count": len(todo)})
    else:
        raise ConflictError("the idempotency key was taken and freed repeatedly; try again")
    await session.commit()

    out: list[tuple[TaskPublic, bool]] = []
    for r in rows:
        if r["id"] in inserted:
            out.append((to_public(inserted[r["id"]]), True))
        else:
            out.append((to_public(existing[r["idempotency_key"]]), False))
    if inserted:
        await _redis_best_effort("enqueue", queue.enqueue(redis, [enqueue_item(r) for r in inserted.values()]))
    return out


async def served_types(session: AsyncSession) -> set[str] | None:
    """The task types some live worker serves; None if a live worker does not say (it predates migration 0003,
    so it may serve any)."""
    rows = (await session.execute(sa.text("SELECT task_types FROM worker WHERE expires_at > now()"))).fetchall()
    served: set[str] = set()
    for (types,) in rows:
        if types is None:
            return None
        served.update(types)
    return served


def with_waiting(tasks: list[TaskPublic], served: set[str] | None) -> list[TaskPublic]:
    """Mark the waiting tasks whose type no live worker serves (`waiting.reason = "no_worker"`)."""
    if served is None:
        return tasks
    for task in tasks:
        if task.status in (TaskStatus.pending, TaskStatus.retrying) and task.type not in served:
            task.waiting = TaskWaiting(
                reason="no_worker", detail=f"no live worker serves task type {task.type!r}; it runs once one does"
            )
    return tasks


async def get_task(*, session: AsyncSession, task_id: uuid.UUID) -> TaskPublic:
    row = (
        await session.execute(sa.text(f"SELECT {TASK_COLUMNS} FROM task WHERE id = :id"), {"id": task_id})  # noqa: S608
    ).first()
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    task = to_public(row)
    if task.status in (TaskStatus.pending, TaskStatus.retrying):
        with_waiting([task], await served_types(session))
    return task


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = f"{created_at.astimezone(UTC).isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, tid = raw.partition("|")
        created = datetime.fromisoformat(at)
        if created.tzinfo is None:
            raise ValueError("naive time")
        return created, uuid.UUID(tid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(field=("cursor",), msg="invalid cursor", type="invalid_cursor") from None


async def list_tasks(
    *,
    session: AsyncSession,
    status: TaskStatus | None,
    type_: str | None,
    priority: Priority | None,
    limit: int,
    cursor: str | None,
) -> TaskList:
    """Newest first, keyset-paginated on (created_at, id): stable while tasks are being added."""
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
    if status is not None:
        where.append("status = :status")
        params["status"] = status.value
    if type_ is not None:
        where.append("type = :type")
        params["type"] = type_
    if priority is not None:
        where.append("priority = :priority")
        params["priority"] = priority.value
    if cursor is not None:
        params["c_at"], params["c_id"] = decode_cursor(cursor)
        where.append("(created_at, id) < (:c_at, :c_id)")
    sql = sa.text(
        f"SELECT {TASK_COLUMNS} FROM task WHERE {' AND '.join(where)} "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
    rows = (await session.execute(sql, params)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    items = [to_public(r) for r in rows]
    if any(t.status in (TaskStatus.pending, TaskStatus.retrying) for t in items):
        items = with_waiting(items, await served_types(session))
    return TaskList(items=items, next_cursor=next_cursor)


async def _current_status(session: AsyncSession, task_id: uuid.UUID) -> TaskStatus:
    row = (await session.execute(sa.text("SELECT status FROM task WHERE id = :id"), {"id": task_id})).first()
    if row is None:
        raise NotFoundError(f"task {task_id} not found")
    return TaskStatus(row.status)


async def update_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID, task_in: TaskUpdate) -> TaskPublic:
    """Change the priority of a pending task: the job is re-issued under a new generation."""
    rows = await transition(
        session,
        sets="priority = :priority, generation = generation + 1",
        where="id = :id AND status = 'pending'",
        params={"id": task_id, "priority": task_in.priority.value},
        detail=f"priority changed to {task_in.priority.value}",
    )
    if not rows:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only a pending task's priority can change")
    await session.commit()
    row = rows[0]
    old = [(row.id, row.generation - 1, Priority(row.priority))]
    await _redis_best_effort("re-enqueue", queue.enqueue(redis, [enqueue_item(row)]))
    await _redis_best_effort("cleanup", queue.remove_jobs(redis, old))
    return to_public(row)


_CANCEL = sa.text(
    # One statement for both cases, so a task that moves between running and waiting while the cancel is on its
    # way is canceled all the same (a waiting one at once, a running one flagged for its worker): under READ
    # COMMITTED, an UPDATE that waited for a concurrent one evaluates its CASEs on the row that one committed.
    "WITH t AS (UPDATE task SET "  # noqa: S608 - constant SQL, values bound
    "status = CASE WHEN status = 'running' THEN status ELSE 'canceled' END, "
    "finished_at = CASE WHEN status = 'running' THEN finished_at ELSE now() END, "
    "generation = CASE WHEN status = 'running' THEN generation ELSE generation + 1 END, "
    "worker_id = CASE WHEN status = 'running' THEN worker_id END, "
    "cancel_requested = cancel_requested OR status = 'running', updated_at = now() "
    f"WHERE id = :id AND status IN ('pending', 'retrying', 'running') RETURNING {TASK_COLUMNS}), "
    "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, updated_at, status, attempts, 'canceled before it ran' FROM t WHERE status = 'canceled') "
    "SELECT * FROM t"
)


async def cancel_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID) -> TaskPublic:
    """Pending/retrying: canceled now. Running: flagged, and its worker aborts it. Terminal: conflict."""
    await testhooks.point("cancel_task.decide")
    row = (await session.execute(_CANCEL, {"id": task_id})).first()
    if row is None:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is already {status.value}")
    await session.commit()
    if row.status == TaskStatus.canceled.value:
        await _redis_best_effort(
            "cleanup", queue.remove_jobs(redis, [(row.id, row.generation - 1, Priority(row.priority))])
        )
    else:
        # Best effort: the worker also finds the flag in Postgres (once per lease tick) if this request is lost.
        await _redis_best_effort("abort", queue.request_abort(redis, row.id, row.generation))
    return to_public(row)


async def retry_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID) -> TaskPublic:
    """A failed or canceled task goes back to pending with its attempts reset."""
    rows = await transition(
        session,
        sets=(
            "status = 'pending', attempts = 0, generation = generation + 1, run_at = now(), result = NULL, "
            "error = NULL, started_at = NULL, finished_at = NULL, worker_id = NULL, cancel_requested = FALSE, "
            "shutdown_requeues = 0"
        ),
        where="id = :id AND status IN ('failed', 'canceled')",
        params={"id": task_id},
        detail="retry requested",
    )
    if not rows:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only failed or canceled tasks can be retried")
    await session.commit()
    await _redis_best_effort("enqueue", queue.enqueue(redis, [enqueue_item(rows[0])]))
    return to_public(rows[0])


async def delete_task(*, session: AsyncSession, task_id: uuid.UUID) -> None:
    result = await session.execute(
        sa.text("DELETE FROM task WHERE id = :id AND status IN ('completed', 'failed', 'canceled') RETURNING id"),
        {"id": task_id},
    )
    if result.first() is None:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only finished tasks can be deleted")
    await session.commit()


async def list_events(*, session: AsyncSession, task_id: uuid.UUID) -> list[TaskEventPublic]:
    rows = (
        await session.execute(
            sa.text("SELECT at, status, attempt, detail FROM task_event WHERE task_id = :id ORDER BY id"),
            {"id": task_id},
        )
    ).fetchall()
    if not rows:
        await _current_status(session, task_id)
    return [TaskEventPublic.model_validate(r._mapping) for r in rows]


async def get_stats(*, session: AsyncSession) -> Stats:
    """Counts by status (migration 0002) and waiting tasks by priority (migration 0005) from trigger-kept
    counters: never a read of the task table, so the cost is the same at 10 waiting tasks as at 10 million."""
    rows = (
        await session.execute(
            sa.text(
                "SELECT 's' AS kind, status AS k, sum(n)::bigint AS n FROM task_count GROUP BY status "
                "UNION ALL SELECT 'q', priority, sum(n)::bigint FROM task_wait_count GROUP BY priority "
                "UNION ALL SELECT 'w', '', count(*) FROM worker WHERE expires_at > now() "
                # Per-type waiting counters (migration 0003) against what live workers advertise: rows in
                # proportion to types x shards, never to the backlog.
                "UNION ALL SELECT 'n', '', coalesce(sum(c.n), 0)::bigint FROM task_type_waiting c "
                "WHERE NOT EXISTS (SELECT 1 FROM worker w WHERE w.expires_at > now() "
                "AND (w.task_types IS NULL OR w.task_types -> c.type IS NOT NULL))"
            )
        )
    ).fetchall()
    counts = TaskCounts()
    queue_counts = QueueCounts()
    retried = workers = no_worker = 0
    for kind, key, n in rows:
        if kind == "s":
            if key == "_retried":
                retried = n
            elif key in TaskCounts.model_fields:
                setattr(counts, key, n)
                counts.total += n
        elif kind == "q":
            if key in QueueCounts.model_fields:
                setattr(queue_counts, key, n)
        elif kind == "n":
            no_worker = n
        else:
            workers = n
    return Stats(tasks=counts, queue=queue_counts, retried_total=retried, workers=workers, waiting_no_worker=no_worker)


def is_terminal(status: str) -> bool:
    return TaskStatus(status) in TERMINAL
