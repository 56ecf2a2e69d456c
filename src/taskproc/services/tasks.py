"""Task service: what the API does with tasks, over the statements of taskproc.store (each state change one
compare-and-set statement that also appends the event row).

Postgres commits first; Redis is told afterwards, best effort. If that second step fails (Redis down, process
killed), the reconciler finds the pending task missing from the queue and enqueues it, so a 201 is never lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc import queue, store, testhooks
from taskproc.config import Settings
from taskproc.errors import ConflictError, FieldPath, InvalidInputError, NotFoundError, PayloadTooLargeError, Problem
from taskproc.models import (
    TERMINAL,
    WAITING,
    Priority,
    QueueCounts,
    Stats,
    TaskCounts,
    TaskCreate,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskStatus,
    TaskUpdate,
    TaskWaiting,
)
from taskproc.services import webhooks as webhook_service
from taskproc.store import TaskRow
from taskproc.tasks.registry import TaskRegistry

log = logging.getLogger("taskproc.service")


def to_public(row: TaskRow) -> TaskPublic:
    task = TaskPublic.model_validate(row, from_attributes=True)
    if row.result_ttl_s is not None and row.finished_at is not None:
        task.result_expires_at = row.finished_at + timedelta(seconds=row.result_ttl_s)
    # Expired from the moment the TTL has passed, though the retention pass may not have dropped it yet: a read
    # never shows a result its TTL has ended (compared with this process's clock, a read's courtesy only).
    if row.result_expired_at is not None or (
        task.result_expires_at is not None and task.result_expires_at <= datetime.now(UTC)
    ):
        task.result_expired = True
        task.result = None
    return task


async def _redis_best_effort(what: str, coro: Awaitable[Any]) -> None:
    try:
        await coro
    except (RedisError, OSError, TimeoutError) as exc:
        # The reconciler repairs the queue from Postgres; the caller's answer does not depend on Redis.
        log.warning("redis unavailable, %s deferred to the reconciler: %s", what, type(exc).__name__)


def enqueue_item(row: TaskRow) -> queue.Enqueue:
    """The queue entry of a row a statement just wrote (its `updated_at` is Postgres's now())."""
    return queue.entry(row, row.updated_at)


def _check_payload_sizes(tasks_in: Sequence[TaskCreate], settings: Settings, batch: bool) -> None:
    """PayloadTooLargeError naming the first payload over TASKPROC_MAX_PAYLOAD_BYTES (as compact JSON, the way
    it is stored), and the limit."""
    limit = settings.max_payload_bytes
    for index, task_in in enumerate(tasks_in):
        size = len(json.dumps(task_in.payload, separators=(",", ":"), ensure_ascii=False).encode())
        if size > limit:
            where = f"tasks[{index}].payload" if batch else "payload"
            raise PayloadTooLargeError(f"{where} is {size} bytes, over TASKPROC_MAX_PAYLOAD_BYTES={limit}")


def _validated_payloads(tasks_in: Sequence[TaskCreate], registry: TaskRegistry, batch: bool) -> list[dict[str, Any]]:
    """Every input's payload as its task type validates it; InvalidInputError with all problems at once.

    A key used twice in one batch is a problem too: the second task would silently be the first one.
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
    return payloads


def _concurrency_keys(
    tasks_in: Sequence[TaskCreate], payloads: Sequence[dict[str, Any]], registry: TaskRegistry, batch: bool
) -> list[str | None]:
    """Each task's concurrency key: its own, else the one its type derives from the payload (if it does)."""
    problems: list[Problem] = []
    keys: list[str | None] = []
    for index, (task_in, payload) in enumerate(zip(tasks_in, payloads, strict=True)):
        if task_in.concurrency_key is not None:
            keys.append(task_in.concurrency_key)
            continue
        try:
            keys.append(registry.concurrency_key(task_in.type, payload, at=("tasks", index) if batch else ()))
        except InvalidInputError as exc:
            problems.extend(exc.problems)
            keys.append(None)
    if problems:
        raise InvalidInputError(problems)
    return keys


def _type_limits(
    tasks_in: Sequence[TaskCreate], keys: Sequence[str | None], registry: TaskRegistry
) -> list[store.TypeLimit]:
    """The default limits the tasks' types declare for their keys, one per key (sorted: a fixed lock order)."""
    limits: dict[str, store.TypeLimit] = {}
    for task_in, key in zip(tasks_in, keys, strict=True):
        task_type = registry.get(task_in.type)
        if key is None or task_type is None or not task_type.has_key_limit or key in limits:
            continue
        rate = task_type.rate
        limits[key] = store.TypeLimit(
            key=key,
            max_running=task_type.max_running_per_key,
            rate_count=None if rate is None else rate[0],
            rate_per_s=None if rate is None else rate[1],
        )
    return [limits[k] for k in sorted(limits)]


async def _insert(
    session: AsyncSession, ordered: list[store.NewTask]
) -> tuple[dict[uuid.UUID, TaskRow], dict[str, TaskRow]]:
    """Insert `ordered` (uncommitted): (the rows inserted by id, the tasks that already had a key by key)."""
    inserted: dict[uuid.UUID, TaskRow] = {}
    existing: dict[str, TaskRow] = {}
    todo = ordered
    # The insert and the read of the tasks that already had the key are two statements (autocommit: two
    # snapshots), so the existing task can be purged (or deleted) between them. A key found by neither is free
    # again: insert those rows once more. Each round needs another purge of the same key in the same gap, so
    # the loop ends at once in practice; the bound only keeps a pathological case from spinning.
    for _ in range(10):
        inserted.update({r.id: r for r in await store.create(session, todo)})
        missing_keys = [r.idempotency_key for r in todo if r.id not in inserted and r.idempotency_key]
        if not missing_keys:
            break
        await testhooks.point("create.after_insert")
        found = await store.by_idempotency_keys(session, missing_keys)
        existing.update({r.idempotency_key: r for r in found if r.idempotency_key is not None})
        todo = [r for r in todo if r.id not in inserted and r.idempotency_key not in existing]
        if not todo:
            break
        log.info("idempotency key freed between insert and read; inserting again", extra={"count": len(todo)})
    else:
        raise ConflictError("the idempotency key was taken and freed repeatedly; try again")
    return inserted, existing


async def create_tasks(
    *,
    session: AsyncSession,
    redis: Redis,
    tasks_in: Sequence[TaskCreate],
    settings: Settings,
    registry: TaskRegistry,
    batch: bool = False,
    schedule: str | None = None,
    traceparent: str | None = None,
) -> list[tuple[TaskPublic, bool]]:
    """Validate every payload, then insert all tasks in one transaction; (task, created) per input, in order.

    `schedule` names the schedule whose fire creates them (the scheduler's call, in a transaction of its own
    that the commit here ends, so the fire's record and its task are committed together). `traceparent`: the
    submit's trace context, stored with every task (taskproc.tracing.send).

    A task whose idempotency key already exists is returned as it is, not created again, even when concurrent
    requests race on the same key (the unique index decides, ON CONFLICT DO NOTHING yields to the winner).
    """
    _check_payload_sizes(tasks_in, settings, batch)
    payloads = _validated_payloads(tasks_in, registry, batch)
    keys = _concurrency_keys(tasks_in, payloads, registry, batch)
    for index, task_in in enumerate(tasks_in):
        if task_in.callback_url is not None:  # refused before anything is written, like an invalid payload
            field = ("tasks", index, "callback_url") if batch else ("callback_url",)
            await webhook_service.check_url(task_in.callback_url, settings, field)

    # No times from this process's clock: created_at and run_at are Postgres's now() (+ the delay), the one clock
    # every worker's claim and lease compare with.
    rows = [
        store.NewTask(
            id=uuid.uuid4(),
            type=task_in.type,
            priority=task_in.priority,
            payload=payload,
            max_retries=settings.max_retries if task_in.max_retries is None else task_in.max_retries,
            timeout_s=settings.task_timeout_s if task_in.timeout_s is None else task_in.timeout_s,
            idempotency_key=task_in.idempotency_key,
            delay_s=float(task_in.delay_s or 0.0),
            schedule=schedule,
            queue=task_in.queue,
            concurrency_key=key,
            callback_url=task_in.callback_url,
            traceparent=traceparent,
            result_ttl_s=task_in.result_ttl_s if task_in.result_ttl_s is not None else _type_ttl(registry, task_in),
        )
        for task_in, payload, key in zip(tasks_in, payloads, keys, strict=True)
    ]
    type_limits = _type_limits(tasks_in, keys, registry)
    changed = await store.apply_type_limits(session, type_limits) if type_limits else []
    # One fixed statement whatever the batch size, which also writes the first event rows. Rows go in key
    # order: two batches racing on the same keys then wait on each other in the same order and never deadlock.
    inserted, existing = await _insert(session, sorted(rows, key=lambda r: r.idempotency_key or ""))
    await session.commit()
    if changed:
        mirror = {lim.key: queue.KeyLimit.of(lim) for lim in type_limits}
        await _redis_best_effort("limit mirror", queue.set_limits(redis, {k: mirror[k] for k in changed}))

    out: list[tuple[TaskPublic, bool]] = []
    for r in rows:
        if r.id in inserted:
            out.append((to_public(inserted[r.id]), True))
        else:
            assert r.idempotency_key is not None  # only a task with a key is ever left out by the insert
            out.append((to_public(existing[r.idempotency_key]), False))
    if inserted:
        await _redis_best_effort("enqueue", queue.enqueue(redis, [enqueue_item(r) for r in inserted.values()]))
    return out


def _type_ttl(registry: TaskRegistry, task_in: TaskCreate) -> float | None:
    task_type = registry.get(task_in.type)
    return None if task_type is None else task_type.result_ttl_s


async def served_types(session: AsyncSession) -> frozenset[str] | None:
    """The task types some live worker serves; None if a live worker does not say (it may serve any)."""
    return await store.served_types(session)


def with_waiting(
    tasks: list[TaskPublic],
    served: frozenset[str] | None,
    paused: frozenset[str] = frozenset(),
    queues: frozenset[str] | None = None,
    now: datetime | None = None,
    keys: Mapping[str, store.KeyRow] | None = None,
) -> list[TaskPublic]:
    """Say why each waiting task is not running: its queue is paused (`queue_paused`); no live worker serves its
    type (of the `served` ones) or takes from its queue (of `queues`; `no_worker`; None: every one is served);
    else, given Postgres's `now`, it waits out a delay (`delayed`) or a retry backoff (`backoff`) until `run_at`,
    or, due, its key (of `keys`) has no room (`concurrency_limited`, `rate_limited`), or it waits for a free
    worker slot (`ready`)."""
    for task in tasks:
        if task.status in WAITING:
            task.waiting = _why_waiting(task, served, paused, queues, now)
            if task.waiting is not None and task.waiting.reason == "ready" and keys and task.concurrency_key:
                task.waiting = _limited(task.concurrency_key, keys.get(task.concurrency_key), now) or task.waiting
    return tasks


def _limited(key: str, row: store.KeyRow | None, now: datetime | None) -> TaskWaiting | None:
    if row is None:
        return None
    if row.max_running is not None and row.running >= row.max_running:
        return TaskWaiting(
            reason="concurrency_limited",
            key=key,
            running=row.running,
            limit=row.max_running,
            detail=f"key {key!r} has {row.running} running of its limit {row.max_running}; it starts when one ends",
        )
    if row.next_token_in_s is not None and now is not None:
        until = now + timedelta(seconds=row.next_token_in_s)
        return TaskWaiting(
            reason="rate_limited",
            key=key,
            until=until,
            detail=f"key {key!r} used its rate of {row.rate_count} per {row.rate_per_s:g}s; the next start is "
            "allowed at `until`",
        )
    return None


def _why_waiting(
    task: TaskPublic,
    served: frozenset[str] | None,
    paused: frozenset[str],
    queues: frozenset[str] | None,
    now: datetime | None,
) -> TaskWaiting | None:
    if task.queue in paused:
        return TaskWaiting(
            reason="queue_paused", detail=f"queue {task.queue!r} is paused; it starts once the queue is resumed"
        )
    if served is not None and task.type not in served:
        return TaskWaiting(
            reason="no_worker", detail=f"no live worker serves task type {task.type!r}; it runs once one does"
        )
    if queues is not None and task.queue not in queues:
        return TaskWaiting(
            reason="no_worker", detail=f"no live worker takes from queue {task.queue!r}; it runs once one does"
        )
    if now is None:
        return None
    if task.run_at > now:
        if task.status is TaskStatus.retrying:
            return TaskWaiting(reason="backoff", until=task.run_at, detail="waiting out the retry backoff")
        return TaskWaiting(reason="delayed", until=task.run_at, detail="waiting out its delay")
    return TaskWaiting(reason="ready", detail=f"due; waiting for a free worker slot of queue {task.queue!r}")


async def _with_waiting(session: AsyncSession, tasks: list[TaskPublic]) -> list[TaskPublic]:
    keyed = sorted({t.concurrency_key for t in tasks if t.concurrency_key and t.status in WAITING})
    keys = {r.key: r for r in await store.get_keys(session, keyed)} if keyed else {}
    return with_waiting(
        tasks,
        await served_types(session),
        frozenset(await store.paused_queues(session)),
        await store.served_queues(session),
        await store.db_now(session),
        keys,
    )


async def get_task(*, session: AsyncSession, task_id: uuid.UUID, redis: Redis | None = None) -> TaskPublic:
    """One task; a waiting one with its reason, from one statement (store.get_waiting), plus its key's limit
    for a due keyed task (a second) and its position for a ready one (one Redis call)."""
    found = await store.get_waiting(session, task_id)
    if found is None:
        raise NotFoundError(f"task {task_id} not found")
    row, ctx = found
    task = to_public(row)
    if ctx is not None:
        with_waiting([task], ctx.served_types, ctx.paused_queues, ctx.served_queues, ctx.now)
        if task.waiting is not None and task.waiting.reason == "ready" and task.concurrency_key:
            keys = {r.key: r for r in await store.get_keys(session, [task.concurrency_key])}
            with_waiting([task], ctx.served_types, ctx.paused_queues, ctx.served_queues, ctx.now, keys)
        if redis is not None and task.waiting is not None and task.waiting.reason == "ready":
            task.waiting.position = await _ready_position(redis, row)
    return task


async def _ready_position(redis: Redis, row: TaskRow) -> int | None:
    """How many ready jobs of its queue are taken before it (0: next). None when Redis does not have it (the
    reconciler puts it back) or cannot be asked: the position is a courtesy, never a reason to fail the read."""
    try:
        return await queue.ready_position(redis, row.queue, row.id, row.generation)
    except (RedisError, OSError):
        return None


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
    schedule: str | None = None,
    queue: str | None = None,
) -> TaskList:
    """Newest first, keyset-paginated on (created_at, id): stable while tasks are being added."""
    before = decode_cursor(cursor) if cursor is not None else None
    rows = await store.list_page(
        session,
        status=status,
        type_=type_,
        priority=priority,
        schedule=schedule,
        queue=queue,
        before=before,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    items = [to_public(r) for r in rows]
    if any(t.status in WAITING for t in items):
        items = await _with_waiting(session, items)
    return TaskList(items=items, next_cursor=next_cursor)


async def _current_status(session: AsyncSession, task_id: uuid.UUID) -> TaskStatus:
    status = await store.status_of(session, task_id)
    if status is None:
        raise NotFoundError(f"task {task_id} not found")
    return status


async def update_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID, task_in: TaskUpdate) -> TaskPublic:
    """Change the priority of a pending task: the job is re-issued under a new generation."""
    row = await store.update(session, task_id, priority=task_in.priority)
    if row is None:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only a pending task's priority can change")
    await session.commit()
    await redis_follow_up(redis, "set_priority", [row])
    return to_public(row)


async def cancel_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID) -> TaskPublic:
    """Pending/retrying: canceled now. Running: flagged, and its worker aborts it. Terminal: conflict."""
    await testhooks.point("cancel_task.decide")
    row = await store.cancel(session, task_id)
    if row is None:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is already {status.value}")
    await session.commit()
    await redis_follow_up(redis, "cancel", [row])
    return to_public(row)


async def retry_task(*, session: AsyncSession, redis: Redis, task_id: uuid.UUID) -> TaskPublic:
    """A failed or canceled task goes back to pending with its attempts reset."""
    row = await store.retry(session, task_id)
    if row is None:
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only failed or canceled tasks can be retried")
    await session.commit()
    await redis_follow_up(redis, "retry", [row])
    return to_public(row)


async def redis_follow_up(redis: Redis, action: str, rows: list[store.TaskRow]) -> None:
    """Redis's side of committed retries, cancels or priority changes (one task's or a bulk batch's): best
    effort, as the reconciler repairs what is lost."""
    if not rows:
        return
    if action in ("retry", "set_priority"):
        await _redis_best_effort("enqueue", queue.enqueue(redis, [enqueue_item(r) for r in rows]))
    if action in ("cancel", "set_priority"):
        # A canceled or re-prioritised task's job of the generation before is dead; a running one keeps its job.
        old = [(r.id, r.generation - 1, r.priority, r.queue) for r in rows if r.status != TaskStatus.running]
        if old:
            await _redis_best_effort("cleanup", queue.remove_jobs(redis, old))
    if action == "cancel":
        for r in rows:
            if r.status == TaskStatus.running:
                # The worker also finds the flag in Postgres (once per lease tick) if this request is lost.
                await _redis_best_effort("abort", queue.request_abort(redis, r.id, r.generation))


async def delete_task(*, session: AsyncSession, task_id: uuid.UUID) -> None:
    if not await store.delete(session, task_id):
        await session.rollback()
        status = await _current_status(session, task_id)
        raise ConflictError(f"task {task_id} is {status.value}; only finished tasks can be deleted")
    await session.commit()


async def list_events(*, session: AsyncSession, task_id: uuid.UUID) -> list[TaskEventPublic]:
    rows = await store.list_events(session, task_id)
    if not rows:
        await _current_status(session, task_id)
    return [TaskEventPublic.model_validate(r, from_attributes=True) for r in rows]


async def get_stats(*, session: AsyncSession, queue: str | None = None) -> Stats:
    """Counts by status (migration 0002) and waiting tasks by priority (migration 0005) from trigger-kept
    counters: never a read of the task table, so the cost is the same at 10 waiting tasks as at 10 million.
    With `queue`, those of that queue only (migration 0008), at the same cost."""
    row = await store.stats(session, queue=queue)
    counts = TaskCounts()
    for status in TaskStatus:
        n = row.by_status.get(status.value, 0)
        setattr(counts, status.value, n)
        counts.total += n
    queue_counts = QueueCounts(**{p.value: row.waiting_by_priority.get(p.value, 0) for p in Priority})
    return Stats(
        tasks=counts,
        queue=queue_counts,
        retried_total=row.retried_total,
        workers=row.workers,
        waiting_no_worker=row.waiting_no_worker,
        waiting_no_queue_worker=row.waiting_no_queue_worker,
    )


def is_terminal(status: str) -> bool:
    return TaskStatus(status) in TERMINAL
