"""What a worker process does with a job: claim it in Postgres, run the handler, record the outcome.

Every write is a compare-and-set on (id, generation, status, attempts): a job whose generation is stale, a
worker that was declared dead, or a task that was canceled meanwhile can never overwrite a newer state.
Handlers run at least once; terminal states are recorded exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import metrics, queue
from taskproc.config import Settings
from taskproc.models import Priority
from taskproc.services.tasks import TASK_COLUMNS, enqueue_item, transition
from taskproc.tasks.registry import TaskContext, TaskRegistry
from taskproc.worker.backoff import backoff_s

log = logging.getLogger("taskproc.worker")

MAX_ERROR_CHARS = 4000
TRANSIENT = (SQLAlchemyError, DBAPIError, RedisError, OSError, TimeoutError)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerRuntime:
    """Resources of one worker process, opened in on_startup and kept in arq's ctx."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    registry: TaskRegistry
    # Sessions in autocommit mode for the single-statement claim and completion: each is one compare-and-set
    # statement, atomic on its own, so BEGIN and COMMIT would only add two round trips per write.
    autocommit_sessions: async_sessionmaker[AsyncSession] | None = None
    worker_id: str = field(default_factory=new_worker_id)
    shutting_down: bool = False
    last_loop_at: float = field(default_factory=time.monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    promoter: queue.Promoter = field(init=False)
    # Task ids this process is claiming, running or recording (a multiset: a stale duplicate job of a task may
    # overlap with the real one). A row that is `running` under our worker id but not in here is an orphan.
    active: Counter[uuid.UUID] = field(default_factory=Counter)
    # Since when (monotonic) every heartbeat has succeeded; None right after a failed one. Other workers' tasks
    # are only reaped after a full lease of our own good heartbeats, so a Postgres outage that kept everyone
    # from renewing does not make live workers look dead the moment it ends.
    lease_ok_since: float | None = float("-inf")

    def __post_init__(self) -> None:
        self.promoter = queue.Promoter(self.redis)

    # ---- one job -------------------------------------------------------------------------------------

    async def run(self, task_id: uuid.UUID, generation: int) -> None:
        self.active[task_id] += 1
        try:
            await self._run(task_id, generation)
        finally:
            self.active[task_id] -= 1
            if self.active[task_id] <= 0:
                del self.active[task_id]

    async def _run(self, task_id: uuid.UUID, generation: int) -> None:
        # A claim that fails on a transient error propagates (the job is retried shortly); if it had in fact
        # committed, the row is an orphan of this worker and reap_lost() hands it back.
        row = await self._claim(task_id, generation)
        if row is None:
            return
        m = row._mapping
        attempt: int = m["attempts"]
        type_name: str = m["type"]
        label = metrics.type_label(type_name)
        ready_at: datetime = m["run_at"]
        started_at: datetime = m["started_at"]
        metrics.TASK_QUEUE_WAIT.labels(m["priority"]).observe(max(0.0, (started_at - ready_at).total_seconds()))
        log.info(
            "task started",
            extra={"task_id": str(task_id), "type": type_name, "attempt": attempt, "status": "running"},
        )
        key = (task_id, generation, attempt)
        task_type = self.registry.get(type_name)
        if task_type is None:
            error = f"unknown task type {type_name!r}"
            await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
            return
        try:
            payload = task_type.payload_model.model_validate(m["payload"])
        except ValidationError as exc:
            error = f"invalid payload: {exc}"[:MAX_ERROR_CHARS]
            await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
            return

        ctx = TaskContext(task_id=task_id, type=type_name, attempt=attempt)
        t0 = time.perf_counter()
        metrics.TASKS_RUNNING.inc()
        timeout = asyncio.timeout(float(m["timeout_s"]))
        try:
            async with timeout:
                result = await task_type.handler(payload, ctx)
            # Serialise here, so a result that is not JSON fails the attempt instead of the worker.
            result_text = _json(to_jsonable_python(result))
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling() == 0:
                # Raised by the handler itself, nobody cancelled us: a failed attempt like any other (requeueing
                # it as for a shutdown would run it again and again).
                metrics.TASK_DURATION.labels(label).observe(time.perf_counter() - t0)
                metrics.TASK_ATTEMPTS.labels(label, "error").inc()
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                await self._record(key, lambda: self._finish_failed(key, label, error))
                return
            metrics.TASK_ATTEMPTS.labels(label, "aborted").inc()
            metrics.TASK_DURATION.labels(label).observe(time.perf_counter() - t0)
            await asyncio.shield(self._after_cancel(key, label))
            raise
        except TimeoutError as exc:
            elapsed = time.perf_counter() - t0
            metrics.TASK_DURATION.labels(label).observe(elapsed)
            if timeout.expired():
                metrics.TASK_ATTEMPTS.labels(label, "timeout").inc()
                error = f"timed out after {float(m['timeout_s']):g}s"
            else:
                # The handler's own timeout (e.g. asyncio.wait_for inside it), not ours: an ordinary error.
                metrics.TASK_ATTEMPTS.labels(label, "error").inc()
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            await self._record(key, lambda: self._finish_failed(key, label, error))
        except Exception as exc:
            elapsed = time.perf_counter() - t0
            metrics.TASK_DURATION.labels(label).observe(elapsed)
            metrics.TASK_ATTEMPTS.labels(label, "error").inc()
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            await self._record(key, lambda: self._finish_failed(key, label, error))
        else:
            elapsed = time.perf_counter() - t0
            metrics.TASK_DURATION.labels(label).observe(elapsed)
            metrics.TASK_ATTEMPTS.labels(label, "success").inc()
            await self._record(key, lambda: self._finish_completed(key, label, result_text, elapsed))
        finally:
            metrics.TASKS_RUNNING.dec()
            # A slot is free: look at the queue now rather than at the next poll.
            self.wake.set()

    async def _record(self, key: tuple[uuid.UUID, int, int], write: Callable[[], Awaitable[None]]) -> None:
        """Write an attempt's outcome, retrying while Postgres is unreachable.

        The outcome exists only in this process, so it is kept until it can be written: re-running the job
        instead would find the row `running` and could neither claim it nor finish it. Every write is a
        compare-and-set, so repeating one that did commit (but whose answer was lost) changes nothing, and if
        the lease ran out meanwhile and another worker took the task over, the late write is ignored.
        """
        delay = 0.2
        while True:
            try:
                await write()
                return
            except TRANSIENT as exc:
                log.warning(
                    "postgres unavailable (%s); outcome of task %s kept, retrying in %.1fs",
                    type(exc).__name__,
                    key[0],
                    delay,
                    extra={"task_id": str(key[0]), "attempt": key[2]},
                )
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _claim(self, task_id: uuid.UUID, generation: int) -> Any | None:
        async with (self.autocommit_sessions or self.sessions)() as session:
            rows = await transition(
                session,
                sets=(
                    "status = 'running', attempts = attempts + 1, started_at = now(), worker_id = :worker, "
                    "finished_at = NULL"
                ),
                where=("id = :id AND generation = :gen AND status IN ('pending', 'retrying') AND NOT cancel_requested"),
                params={"id": task_id, "gen": generation, "worker": self.worker_id},
                detail=f"started by {self.worker_id}",
            )
            await session.commit()
        if not rows:
            log.debug("stale job skipped", extra={"task_id": str(task_id)})
            return None
        return rows[0]

    async def _finish_completed(
        self, key: tuple[uuid.UUID, int, int], label: str, result_text: str, elapsed: float
    ) -> None:
        task_id, generation, attempt = key
        async with (self.autocommit_sessions or self.sessions)() as session:
            rows = await transition(
                session,
                sets="status = 'completed', result = CAST(:result AS jsonb), error = NULL, finished_at = now(), "
                "worker_id = NULL",
                where="id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt",
                params={"id": task_id, "gen": generation, "attempt": attempt, "result": result_text},
                detail=f"completed in {elapsed * 1000:.1f} ms",
            )
            await session.commit()
        if rows:
            metrics.TASKS_FINISHED.labels(label, "completed").inc()
        log.info(
            "task completed" if rows else "stale completion ignored",
            extra={
                "task_id": str(task_id),
                "type": label,
                "attempt": attempt,
                "status": "completed",
                "duration_ms": round(elapsed * 1000, 2),
            },
        )

    async def _finish_failed(
        self, key: tuple[uuid.UUID, int, int], label: str, error: str, *, permanent: bool = False
    ) -> None:
        task_id, generation, attempt = key
        where = "id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt"
        params: dict[str, Any] = {"id": task_id, "gen": generation, "attempt": attempt, "error": error}
        async with self.sessions() as session:
            canceled = await transition(
                session,
                sets="status = 'canceled', error = :error, finished_at = now(), worker_id = NULL",
                where=where + " AND cancel_requested",
                params=params,
                detail="canceled while running",
            )
            if canceled:
                await session.commit()
                metrics.TASKS_FINISHED.labels(label, "canceled").inc()
                return
            row = (
                await session.execute(sa.text("SELECT max_retries FROM task WHERE id = :id"), {"id": task_id})
            ).first()
            if row is not None and not permanent and attempt < row.max_retries + 1:
                delay = backoff_s(attempt, base_s=self.settings.retry_base_s, cap_s=self.settings.retry_max_s)
                rows = await transition(
                    session,
                    sets=(
                        "status = 'retrying', error = :error, worker_id = NULL, generation = generation + 1, "
                        "run_at = now() + make_interval(secs => :delay)"
                    ),
                    where=where,
                    params={**params, "delay": delay},
                    detail=f"attempt {attempt} failed: {error[:500]}; retry in {delay:.2f}s",
                )
                await session.commit()
                if rows:
                    metrics.TASKS_RETRIED.labels(label).inc()
                    await self._enqueue_rows(rows)
                status = "retrying"
            else:
                rows = await transition(
                    session,
                    sets="status = 'failed', error = :error, finished_at = now(), worker_id = NULL",
                    where=where,
                    params=params,
                    detail=f"attempt {attempt} failed: {error[:500]}; no retries left",
                )
                await session.commit()
                if rows:
                    metrics.TASKS_FINISHED.labels(label, "failed").inc()
                status = "failed"
        log.info(
            "task attempt failed",
            extra={"task_id": str(task_id), "type": label, "attempt": attempt, "status": status, "error": error},
        )

    async def _after_cancel(self, key: tuple[uuid.UUID, int, int], label: str) -> None:
        """The job's asyncio task was cancelled: a user's cancel, or this worker shutting down."""
        task_id, generation, attempt = key
        where = "id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt"
        params = {"id": task_id, "gen": generation, "attempt": attempt}
        try:
            async with self.sessions() as session:
                rows = await transition(
                    session,
                    sets="status = 'canceled', finished_at = now(), worker_id = NULL",
                    where=where + " AND cancel_requested",
                    params=params,
                    detail="aborted by its worker after a cancel request",
                )
                if rows:
                    await session.commit()
                    metrics.TASKS_FINISHED.labels(label, "canceled").inc()
                    log.info("task canceled", extra={"task_id": str(task_id), "status": "canceled"})
                    return
                # Shutdown (or any other cancellation): give the attempt back and let another worker run it.
                rows = await transition(
                    session,
                    sets=(
                        "status = 'pending', attempts = attempts - 1, generation = generation + 1, "
                        "worker_id = NULL, started_at = NULL, run_at = now()"
                    ),
                    where=where,
                    params=params,
                    detail=f"requeued: worker {self.worker_id} shut down before the task finished",
                )
                await session.commit()
            if rows:
                await self._enqueue_rows(rows)
                log.info("task requeued on shutdown", extra={"task_id": str(task_id), "status": "pending"})
        except TRANSIENT as exc:
            # The lease will expire and the reaper will re-run it; nothing is lost.
            log.warning("could not record cancellation, the reaper will recover the task: %s", exc)

    async def _enqueue_rows(self, rows: list[Any]) -> None:
        try:
            await queue.enqueue(self.redis, [enqueue_item(r) for r in rows])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, Priority(r.priority)) for r in rows])
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable; the reconciler will enqueue: %s", type(exc).__name__)

    # ---- background duties ---------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Keep this worker's lease alive: a row whose expires_at moves forward."""
        t0 = time.monotonic()
        try:
            await self._heartbeat()
        except BaseException:
            self.lease_ok_since = None
            raise
        now = time.monotonic()
        if self.lease_ok_since is None or now - t0 > self.settings.lease_s / 2:
            # Back after a failure, or after a heartbeat so slow (a frozen or unreachable database) that the
            # others' leases may have lapsed meanwhile just like ours: start a fresh healthy period.
            self.lease_ok_since = now

    async def _heartbeat(self) -> None:
        async with self.sessions() as session:
            await session.execute(
                sa.text(
                    "INSERT INTO worker (id, hostname, pid, started_at, expires_at) "
                    "VALUES (:id, :host, :pid, now(), now() + make_interval(secs => :lease)) "
                    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                ),
                {
                    "id": self.worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "lease": self.settings.lease_s,
                },
            )
            await session.commit()

    async def unregister(self) -> None:
        async with self.sessions() as session:
            await session.execute(sa.text("DELETE FROM worker WHERE id = :id"), {"id": self.worker_id})
            await session.commit()

    def may_reap_others(self) -> bool:
        """True once our own heartbeats have succeeded for a whole lease (or never failed)."""
        since = self.lease_ok_since
        return since is not None and time.monotonic() - since >= self.settings.lease_s

    async def reap_lost(self) -> int:
        """Hand back running tasks that nobody is running any more.

        - Another worker's, once its lease expired: retried now, the lost attempt counts (it may have crashed
          the worker; max_retries bounds that).
        - Our own that this process is not running (a claim whose answer was lost, an outcome that could not
          be written before a cancellation): back to pending, the attempt given back.
        """
        orphans = await self._reap_orphans()
        if not self.may_reap_others():
            return orphans
        return orphans + await self._reap_expired()

    async def _reap_orphans(self) -> int:
        async with self.sessions() as session:
            candidates = (
                await session.execute(
                    sa.text(
                        "SELECT id, generation, attempts FROM task WHERE status = 'running' AND worker_id = :worker"
                    ),
                    {"worker": self.worker_id},
                )
            ).fetchall()
            # Checked after the read: a task that was being run when the row was read and is not any more has
            # been recorded since (its row changed, so the compare-and-set below skips it).
            orphans = [c for c in candidates if c.id not in self.active]
            rows: list[Any] = []
            for c in orphans:
                rows += await transition(
                    session,
                    sets=(
                        "status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'pending' END, "
                        "finished_at = CASE WHEN cancel_requested THEN now() END, "
                        "attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, "
                        "started_at = CASE WHEN cancel_requested THEN started_at END, "
                        "generation = generation + 1, worker_id = NULL, run_at = now()"
                    ),
                    where=(
                        "id = :id AND generation = :gen AND attempts = :attempts AND status = 'running' "
                        "AND worker_id = :worker"
                    ),
                    params={"id": c.id, "gen": c.generation, "attempts": c.attempts, "worker": self.worker_id},
                    detail=f"requeued: claimed by {self.worker_id} but no longer running there",
                )
            await session.commit()
        if not rows:
            return 0
        for r in rows:
            log.warning("orphaned task handed back", extra={"task_id": str(r.id), "status": r.status})
            if r.status == "canceled":
                metrics.TASKS_FINISHED.labels(metrics.type_label(r.type), "canceled").inc()
        pending = [r for r in rows if r.status == "pending"]
        try:
            if pending:
                await queue.enqueue(self.redis, [enqueue_item(r) for r in pending])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, Priority(r.priority)) for r in rows])
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable; the reconciler will enqueue: %s", type(exc).__name__)
        return len(rows)

    async def _reap_expired(self) -> int:
        async with self.sessions() as session:
            rows = await transition(
                session,
                sets=(
                    "status = CASE WHEN cancel_requested THEN 'canceled' "
                    "WHEN attempts >= max_retries + 1 THEN 'failed' ELSE 'retrying' END, "
                    "error = CASE WHEN cancel_requested THEN error ELSE 'worker lost: its lease expired' END, "
                    "finished_at = CASE WHEN cancel_requested OR attempts >= max_retries + 1 THEN now() END, "
                    "generation = generation + 1, worker_id = NULL, run_at = now()"
                ),
                where=(
                    "id IN (SELECT t.id FROM task t WHERE t.status = 'running' "
                    "AND t.worker_id IS DISTINCT FROM :me AND NOT EXISTS "
                    "(SELECT 1 FROM worker w WHERE w.id = t.worker_id AND w.expires_at > now()) "
                    "ORDER BY t.id LIMIT 500 FOR UPDATE SKIP LOCKED) AND status = 'running'"
                ),
                # Our own tasks are never "lost" to us: the ones we still run carry on, the others are orphans.
                params={"me": self.worker_id},
                detail="worker lost (lease expired); attempt counted",
            )
            await session.execute(sa.text("DELETE FROM worker WHERE expires_at < now() - interval '1 hour'"))
            await session.commit()
        if not rows:
            return 0
        for r in rows:
            label = metrics.type_label(r.type)
            metrics.TASK_ATTEMPTS.labels(label, "lost").inc()
            if r.status == "retrying":
                metrics.TASKS_RETRIED.labels(label).inc()
            else:
                metrics.TASKS_FINISHED.labels(label, r.status).inc()
            log.warning(
                "task recovered from a lost worker",
                extra={"task_id": str(r.id), "type": r.type, "attempt": r.attempts, "status": r.status},
            )
        retry = [r for r in rows if r.status == "retrying"]
        try:
            if retry:
                await queue.enqueue(self.redis, [enqueue_item(r) for r in retry])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, Priority(r.priority)) for r in rows])
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable; the reconciler will enqueue: %s", type(exc).__name__)
        return len(rows)

    async def reconcile(self, *, batch: int = 1000, max_rows: int = 200_000) -> int:
        """Make Redis agree with Postgres again; returns how many jobs were (re-)enqueued.

        - A waiting task whose job is missing (Redis flushed, restarted empty, or the API's enqueue never
          happened) is enqueued again.
        - A waiting task whose job a worker took but never claimed (the worker was killed in between) is
          re-issued under a new generation: arq's in-progress mark on the old job would keep every worker
          away from it for a day.
        - Jobs abandoned that way at the head of the queue whose task has moved on are deleted, so they
          neither hide real jobs from the workers nor count as backlog.

        One worker at a time does it (advisory lock); tasks changed in the last two seconds are skipped, since
        their enqueue may still be on its way.
        """
        abandoned_ms = self.settings.lease_s * 1000
        enqueued = 0
        reissued: list[Any] = []
        async with self.sessions() as session:
            got = (await session.execute(sa.text("SELECT pg_try_advisory_xact_lock(7314250001)"))).scalar_one()
            if not got:
                return 0
            last = uuid.UUID(int=0)
            scanned = 0
            while scanned < max_rows:
                rows = (
                    await session.execute(
                        sa.text(
                            f"SELECT {TASK_COLUMNS} FROM task WHERE status IN ('pending', 'retrying') "  # noqa: S608
                            "AND id > :last AND updated_at < now() - interval '2 seconds' "
                            "ORDER BY id LIMIT :batch"
                        ),
                        {"last": last, "batch": batch},
                    )
                ).fetchall()
                if not rows:
                    break
                scanned += len(rows)
                last = rows[-1].id
                states = await queue.job_states(self.redis, [(r.id, r.generation, Priority(r.priority)) for r in rows])
                missing = []
                for r, state in zip(rows, states, strict=True):
                    if state.taken_longer_than(abandoned_ms):
                        reissued.extend(await self._reissue(session, r.id, r.generation))
                    elif state.taken_ms_ago is None and not (state.recorded and state.queued):
                        missing.append(r)
                if missing:
                    await queue.enqueue(self.redis, [enqueue_item(r) for r in missing])
                    enqueued += len(missing)
            garbage = await self._sweep_queue_head(session, abandoned_ms, reissued)
            await session.commit()
        if reissued:
            await queue.enqueue(self.redis, [enqueue_item(r) for r in reissued])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, Priority(r.priority)) for r in reissued])
        if enqueued or reissued or garbage:
            log.warning(
                "reconciler re-enqueued tasks missing from redis",
                extra={"count": enqueued + len(reissued)},
            )
        return enqueued + len(reissued)

    async def _reissue(self, session: AsyncSession, task_id: uuid.UUID, generation: int) -> list[Any]:
        return await transition(
            session,
            sets="generation = generation + 1",
            where="id = :id AND generation = :gen AND status IN ('pending', 'retrying')",
            params={"id": task_id, "gen": generation},
            detail="re-enqueued: its job was taken by a worker that never started it",
        )

    async def _sweep_queue_head(self, session: AsyncSession, abandoned_ms: float, reissued: list[Any]) -> int:
        """Abandoned jobs at the head of the queue: re-issue those still waiting, delete the obsolete ones."""
        jobs = await queue.abandoned_at_head(self.redis, limit=1000, older_than_ms=abandoned_ms)
        if not jobs:
            return 0
        rows = (
            await session.execute(
                sa.text("SELECT id, generation, status, priority FROM task WHERE id = ANY(:ids)"),
                {"ids": [task_id for task_id, _ in jobs]},
            )
        ).fetchall()
        current = {r.id: r for r in rows}
        done_ids = {r.id for r in reissued}
        obsolete: list[tuple[uuid.UUID, int, Priority]] = []
        for task_id, generation in jobs:
            row = current.get(task_id)
            if row is not None and row.generation == generation and row.status in ("pending", "retrying", "running"):
                if row.status != "running" and task_id not in done_ids:
                    reissued.extend(await self._reissue(session, task_id, generation))
                # Running: a live worker's job, or the reaper's business once that worker's lease runs out.
                continue
            # The task is gone, finished, or on a newer generation: this job will never do anything.
            obsolete.append((task_id, generation, Priority.normal))
        if obsolete:
            await queue.remove_jobs(self.redis, obsolete)
            log.warning("reconciler deleted abandoned jobs of finished tasks", extra={"count": len(obsolete)})
        return len(obsolete)

    async def purge_expired(self, *, batch: int = 1000) -> int:
        """Delete terminal tasks older than the retention, in small batches so no lock is held for long."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        total = 0
        while True:
            async with self.sessions() as session:
                result = await session.execute(
                    sa.text(
                        "DELETE FROM task WHERE id IN (SELECT id FROM task "
                        "WHERE status IN ('completed', 'failed', 'canceled') "
                        "AND finished_at < now() - make_interval(secs => :secs) "
                        "LIMIT :batch FOR UPDATE SKIP LOCKED)"
                    ),
                    {"secs": days * 86400, "batch": batch},
                )
                await session.commit()
            n: int = result.rowcount  # type: ignore[attr-defined]
            total += n
            if n < batch:
                break
        if total:
            log.info("purged expired tasks", extra={"count": total})
        return total


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


async def every(interval_s: float, fn: Any, name: str, *, jitter: float = 0.1) -> None:
    """Run `fn` forever every interval; transient failures are logged and retried next round."""
    while True:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except TRANSIENT as exc:
            log.warning("%s failed, will retry: %s", name, type(exc).__name__)
        except Exception:
            log.exception("%s crashed, will retry", name)
        await asyncio.sleep(interval_s * (1 + random.uniform(-jitter, jitter)))
