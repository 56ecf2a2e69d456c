"""What a worker process does with a job: claim it in Postgres, run the handler, record the outcome.

Every write is a compare-and-set on (id, generation, status, attempts): a job whose generation is stale, a
worker that was declared dead, or a task that was canceled meanwhile can never overwrite a newer state.
Handlers run at least once; terminal states are recorded exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.sql
import sqlalchemy as sa
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import metrics, queue
from taskproc.config import Settings

# TRANSIENT and every are re-exported: they lived here before the maintenance module existed.
from taskproc.maintenance import TRANSIENT as TRANSIENT
from taskproc.maintenance import Maintenance
from taskproc.maintenance import every as every
from taskproc.models import Priority
from taskproc.services.tasks import enqueue_item, transition
from taskproc.tasks.registry import TaskContext, TaskRegistry
from taskproc.worker import batch
from taskproc.worker.backoff import backoff_s
from taskproc.worker.batch import Claimed

log = logging.getLogger("taskproc.worker")

MAX_ERROR_CHARS = 4000


HEARTBEAT_SQL = psycopg.sql.SQL(
    "INSERT INTO worker (id, hostname, pid, started_at, expires_at) "
    "VALUES (%(id)s, %(host)s, %(pid)s, now(), now() + make_interval(secs => %(lease)s)) "
    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at RETURNING expires_at"
)
UNREGISTER_SQL = psycopg.sql.SQL("DELETE FROM worker WHERE id = %(id)s RETURNING id")


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
    worker_id: str = field(default_factory=new_worker_id)
    shutting_down: bool = False
    last_loop_at: float = field(default_factory=time.monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the wake-up channel's subscription is confirmed.
    listening: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    ticker: queue.Ticker = field(init=False)
    # The hot path's own connections: one for claims (the poll loop) and one for outcomes (the completer).
    claims: batch.PgWriter = field(init=False)
    completer: batch.Completer = field(init=False)
    liveness: batch.PgWriter = field(init=False)
    _released: list[str] = field(default_factory=list, init=False)
    _release_soon: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    maintenance: Maintenance = field(init=False)
    # Task ids this process is claiming, running or recording (a multiset: a stale duplicate job of a task may
    # overlap with the real one). A row that is `running` under our worker id but not in here is an orphan.
    active: Counter[uuid.UUID] = field(default_factory=Counter)
    # Since when (monotonic) every heartbeat has succeeded; None before the first and right after a failed one.
    # Other workers' tasks are only reaped after a full lease of our own good heartbeats, so a Postgres outage
    # that kept everyone from renewing does not make live workers look dead the moment it ends, also to a
    # worker that starts just after it.
    lease_ok_since: float | None = None

    def __post_init__(self) -> None:
        self.ticker = queue.Ticker(self.redis)
        self.claims = batch.PgWriter(self.settings, name="claims")
        self.completer = batch.Completer(batch.PgWriter(self.settings, name="outcomes"))
        # Liveness has a connection of its own: a pool exhausted by task writes must never let our lease lapse
        # (the reaper would hand our running tasks to another worker and they would run twice).
        self.liveness = batch.PgWriter(self.settings, name="liveness")
        self.maintenance = Maintenance(settings=self.settings, sessions=self.sessions, redis=self.redis)

    # ---- jobs --------------------------------------------------------------------------------------------

    async def claim(self, taken: list[tuple[str, float]]) -> list[Claimed]:
        """Claim every job one loop iteration took off the queue, in one statement.

        Jobs whose claim fails (a stale generation, a canceled task) leave the running set at once. If
        Postgres is unreachable they go back to the deferred set for a couple of seconds; if the claim did
        commit but its answer was lost, the rows are orphans of this worker and reap_lost() hands them back.
        """
        jobs: list[tuple[uuid.UUID, int]] = []
        for jid, _ in taken:
            try:
                jobs.append(queue.parse_job_id(jid))
            except ValueError:
                log.warning("job %r is not a taskproc job; dropped", jid)
                await queue.release(self.redis, [jid])
        # Marked active before the statement, so the orphan reaper never mistakes a claim in flight for one.
        for task_id, _ in jobs:
            self.active[task_id] += 1
        try:
            rows = await batch.claim(self.claims, jobs, worker_id=self.worker_id) if jobs else []
        except TRANSIENT as exc:
            for task_id, _ in jobs:
                self._inactive(task_id)
            log.warning("claim of %d jobs deferred, postgres unavailable: %s", len(jobs), type(exc).__name__)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await queue.defer_again(
                    self.redis, [(jid, queue.priority_of_score(score)) for jid, score in taken], delay_ms=2000
                )
            return []
        claimed = {(r.id, r.generation) for r in rows}
        stale = []
        for task_id, gen in jobs:
            if (task_id, gen) not in claimed:
                self._inactive(task_id)
                stale.append(queue.job_id(task_id, gen))
        if stale:
            log.debug("stale jobs skipped", extra={"count": len(stale)})
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await queue.release(self.redis, stale)
        return rows

    def _inactive(self, task_id: uuid.UUID) -> None:
        self.active[task_id] -= 1
        if self.active[task_id] <= 0:
            del self.active[task_id]

    async def execute(self, claimed: Claimed) -> None:
        """Run one claimed attempt and record its outcome (the caller made it active in claim())."""
        try:
            await self._execute(claimed)
        finally:
            self._inactive(claimed.id)
            self._released.append(queue.job_id(claimed.id, claimed.generation))
            self._release_soon.set()
            # A slot is free: look at the queue now rather than at the next poll.
            self.wake.set()

    async def _execute(self, c: Claimed) -> None:
        task_id = c.id
        attempt = c.attempts
        label = metrics.type_label(c.type)
        metrics.TASK_QUEUE_WAIT.labels(c.priority).observe(max(0.0, (c.started_at - c.run_at).total_seconds()))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task started",
                extra={"task_id": str(task_id), "type": c.type, "attempt": attempt, "status": "running"},
            )
        key = (task_id, c.generation, attempt)
        task_type = self.registry.get(c.type)
        if task_type is None:
            error = f"unknown task type {c.type!r}"
            await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
            return
        try:
            payload = task_type.payload_model.model_validate(c.payload)
        except ValidationError as exc:
            error = f"invalid payload: {exc}"[:MAX_ERROR_CHARS]
            await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
            return

        ctx = TaskContext(task_id=task_id, type=c.type, attempt=attempt)
        t0 = time.perf_counter()
        metrics.TASKS_RUNNING.inc()
        timeout = asyncio.timeout(c.timeout_s)
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
                error = f"timed out after {c.timeout_s:g}s"
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
            outcome = batch.Outcome(
                id=task_id,
                generation=c.generation,
                attempt=attempt,
                result=result_text,
                detail=f"completed in {elapsed * 1000:.1f} ms",
            )
            # The completer owns the outcome from here on, also if this task is cancelled while it waits.
            try:
                written = await self.completer.complete(outcome)
            except Exception as exc:
                # Postgres refused this result (say, a string with \u0000, which jsonb cannot hold): the same
                # handler would most likely return it again, so the task fails without retries.
                error = f"result could not be stored: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
                return
            if written:
                metrics.TASKS_FINISHED.labels(label, "completed").inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "task completed" if written else "stale completion ignored",
                    extra={
                        "task_id": str(task_id),
                        "type": label,
                        "attempt": attempt,
                        "status": "completed",
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
        finally:
            metrics.TASKS_RUNNING.dec()

    async def release_finished(self) -> None:
        """Take finished jobs off the running set, a batch per round trip (a background duty)."""
        while True:
            await self._release_soon.wait()
            self._release_soon.clear()
            jids = self.drain_released()
            try:
                await queue.release(self.redis, jids)
            except (RedisError, OSError, TimeoutError) as exc:
                # Left behind, they are found by the reconciler's sweep of the running set.
                log.warning("could not update the running set: %s", type(exc).__name__)
                await asyncio.sleep(1)

    def drain_released(self) -> list[str]:
        jids, self._released = self._released, []
        return jids

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
        await self.liveness.fetch(
            HEARTBEAT_SQL,
            {"id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "lease": self.settings.lease_s},
        )

    async def unregister(self) -> None:
        await self.liveness.fetch(UNREGISTER_SQL, {"id": self.worker_id})

    def may_reap_others(self) -> bool:
        """True once our own heartbeats have succeeded for a whole lease: by then every live worker renewed."""
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

    async def reconcile(self, *, batch_size: int = 1000, max_rows: int = 200_000) -> int:
        """The reconciler's pass (taskproc.maintenance), which API processes run too."""
        return await self.maintenance.reconcile(batch_size=batch_size, max_rows=max_rows)

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
