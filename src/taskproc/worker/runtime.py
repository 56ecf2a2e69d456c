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

from taskproc import metrics, queue, testhooks
from taskproc.config import Settings

# TRANSIENT, is_transient and every are re-exported: they lived here before the maintenance module existed.
from taskproc.maintenance import TRANSIENT as TRANSIENT
from taskproc.maintenance import Maintenance
from taskproc.maintenance import every as every
from taskproc.maintenance import is_transient as is_transient
from taskproc.models import Priority
from taskproc.services.tasks import TASK_COLUMNS, enqueue_item, transition
from taskproc.tasks.outcomes import PermanentFailure, RetryAfter
from taskproc.tasks.registry import TaskContext, TaskRegistry
from taskproc.worker import batch
from taskproc.worker.backoff import backoff_s
from taskproc.worker.batch import Claimed

log = logging.getLogger("taskproc.worker")

MAX_ERROR_CHARS = 4000
# A job of a task type this worker does not serve goes back to the queue for this long, so a worker that serves
# it can take it and this one does not spin on it.
HAND_BACK_DELAY_MS = 5000


def storable(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as a Postgres text column takes it: NUL escaped (text refuses \\x00), lone surrogates escaped (not
    UTF-8), at most `limit` characters."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


HEARTBEAT_SQL = psycopg.sql.SQL(
    "INSERT INTO worker (id, hostname, pid, started_at, expires_at, task_types) "
    "VALUES (%(id)s, %(host)s, %(pid)s, now(), now() + make_interval(secs => %(lease)s), %(types)s::jsonb) "
    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, task_types = EXCLUDED.task_types "
    "RETURNING expires_at"
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
    # The asyncio task running each attempt, by (task id, generation): check_cancels() cancels them.
    running: dict[tuple[uuid.UUID, int], asyncio.Task[Any]] = field(default_factory=dict, init=False)
    # Since when (monotonic) every heartbeat has succeeded; None before the first and right after a failed one.
    # Other workers' tasks are only reaped after a full lease of our own good heartbeats, so a Postgres outage
    # that kept everyone from renewing does not make live workers look dead the moment it ends, also to a
    # worker that starts just after it.
    lease_ok_since: float | None = None

    def __post_init__(self) -> None:
        self.ticker = queue.Ticker(self.redis)
        self.claims = batch.PgWriter(self.settings, name="claims")
        self.completer = batch.Completer(batch.PgWriter(self.settings, name="outcomes"))
        # What this worker advertises in its heartbeat: the types it serves, each with its schema fingerprint.
        self.task_types = self.registry.advertisement()
        # Liveness has a connection of its own: a pool exhausted by task writes must never let our lease lapse
        # (the reaper would hand our running tasks to another worker and they would run twice).
        self.liveness = batch.PgWriter(self.settings, name="liveness")
        self.maintenance = Maintenance(settings=self.settings, sessions=self.sessions, redis=self.redis)

    async def close_connections(self) -> None:
        """Close the hot path's and liveness's own connections (the pool is the engine's to dispose)."""
        await self.claims.close()
        await self.liveness.close()
        await self.completer.close()

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
            if jobs:
                rows, unserved = await batch.claim(
                    self.claims, jobs, worker_id=self.worker_id, types=list(self.task_types)
                )
            else:
                rows, unserved = [], []
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
        handed_back = {(u.id, u.generation) for u in unserved}
        if unserved:
            # Never failed for being newer than this worker: left, untouched in Postgres, to a worker that serves
            # the type (one of a newer version in a rolling upgrade).
            for u in unserved:
                self._inactive(u.id)
                metrics.TASKS_HANDED_BACK.labels(metrics.type_label(u.type), "unknown_type").inc()
            log.info(
                "jobs of task types this worker does not serve handed back",
                extra={"count": len(unserved), "type": ",".join(sorted({u.type for u in unserved}))},
            )
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await queue.defer_again(
                    self.redis,
                    [(queue.job_id(u.id, u.generation), Priority(u.priority)) for u in unserved],
                    delay_ms=HAND_BACK_DELAY_MS,
                )
        stale = []
        for task_id, gen in jobs:
            if (task_id, gen) not in claimed and (task_id, gen) not in handed_back:
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
        job = (claimed.id, claimed.generation)
        current = asyncio.current_task()
        if current is not None:
            self.running[job] = current
        try:
            await self._execute(claimed)
        finally:
            if self.running.get(job) is current:
                del self.running[job]
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
            # claim() only claims the types of this registry, so this does not happen; were it to, the task is
            # not this worker's to fail: it goes back for one that serves the type.
            await self._record(key, lambda: self._hand_back(key, label, f"worker does not serve type {c.type!r}"))
            return
        try:
            payload = task_type.payload_model.model_validate(c.payload)
        except ValidationError as exc:
            error = storable(f"invalid payload: {exc}")
            if await self._payload_may_be_newer(c.type, exc):
                await self._record(
                    key, lambda: self._hand_back(key, label, f"payload this worker's model refuses ({error[:300]})")
                )
            else:
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
            # The handler may choose the outcome: no retry at all, or a retry after a delay of its choosing.
            permanent = isinstance(exc, PermanentFailure)
            delay_s = exc.delay_s if isinstance(exc, RetryAfter) else None
            await self._record(
                key, lambda: self._finish_failed(key, label, error, permanent=permanent, delay_s=delay_s)
            )
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
            if written is not None:
                metrics.TASKS_FINISHED.labels(label, written).inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "stale completion ignored"
                    if written is None
                    else "task completed"
                    if written == "completed"
                    else "task canceled: a cancel was requested while it ran (its result is kept)",
                    extra={
                        "task_id": str(task_id),
                        "type": label,
                        "attempt": attempt,
                        "status": written or "completed",
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

        Only connection-level failures are retried. If Postgres refuses the write itself (a value it cannot
        store), retrying would never end with the task `running` under our live lease: the attempt is recorded
        as failed instead, with a message that says why.
        """
        delay = 0.2
        fallback = True
        while True:
            try:
                await write()
                return
            except Exception as exc:
                if not is_transient(exc):
                    if not fallback:
                        raise
                    fallback = False
                    log.exception("outcome of task %s refused by postgres; recorded as a failed attempt", key[0])
                    error = storable(f"outcome could not be recorded: {type(exc).__name__}: {exc}")

                    async def failed(error: str = error) -> None:
                        await self._finish_failed(key, "", error)

                    write = failed
                    continue
                log.warning(
                    "postgres unavailable (%s); outcome of task %s kept, retrying in %.1fs",
                    type(exc).__name__,
                    key[0],
                    delay,
                    extra={"task_id": str(key[0]), "attempt": key[2]},
                )
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _decide(
        self, session: AsyncSession, *, sets: str, where: str, params: dict[str, Any], details: dict[str, str]
    ) -> list[Any]:
        """One compare-and-set whose outcome Postgres decides from the row as it is when the row is written
        (CASE in `sets`), plus its event with the detail of the status it chose.

        One statement, not a sequence of attempts: an API cancel committing between two statements would be
        missed by the second (issue 12 case 2). Under READ COMMITTED an UPDATE that waited for a concurrent one
        evaluates its CASE on the row that one committed.
        """
        names = {status: f"d_{i}" for i, status in enumerate(details)}
        cases = " ".join(f"WHEN '{status}' THEN CAST(:{name} AS text)" for status, name in names.items())
        sql = sa.text(
            f"WITH t AS (UPDATE task SET {sets}, updated_at = now() WHERE {where} RETURNING {TASK_COLUMNS}), "  # noqa: S608 - constant SQL
            "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
            f"SELECT id, updated_at, status, attempts, CASE status {cases} END FROM t) "
            "SELECT * FROM t"
        )
        values = {name: details[status] for status, name in names.items()}
        return list((await session.execute(sql, {**params, **values})).fetchall())

    async def _finish_failed(
        self,
        key: tuple[uuid.UUID, int, int],
        label: str,
        error: str,
        *,
        permanent: bool = False,
        delay_s: float | None = None,
    ) -> None:
        """A failed attempt: canceled if a cancel was requested, else retrying while retries are left (after
        `delay_s`, or the backoff when None), else failed. `permanent`: failed now, whatever retries are left."""
        task_id, generation, attempt = key
        label = label or "other"
        error = storable(error)
        delay = (
            backoff_s(attempt, base_s=self.settings.retry_base_s, cap_s=self.settings.retry_max_s)
            if delay_s is None
            else delay_s
        )
        retry = "(NOT cancel_requested AND NOT CAST(:permanent AS boolean) AND attempts < max_retries + 1)"
        await testhooks.point("finish_failed.decide")
        async with self.sessions() as session:
            rows = await self._decide(
                session,
                sets=(
                    f"status = CASE WHEN cancel_requested THEN 'canceled' WHEN {retry} THEN 'retrying' "
                    "ELSE 'failed' END, "
                    f"error = :error, worker_id = NULL, finished_at = CASE WHEN {retry} THEN NULL ELSE now() END, "
                    f"generation = CASE WHEN {retry} THEN generation + 1 ELSE generation END, "
                    f"run_at = CASE WHEN {retry} THEN now() + make_interval(secs => :delay) ELSE run_at END"
                ),
                where="id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt",
                params={
                    "id": task_id,
                    "gen": generation,
                    "attempt": attempt,
                    "error": error,
                    "permanent": permanent,
                    "delay": delay,
                },
                details={
                    "canceled": "canceled while running",
                    "retrying": f"attempt {attempt} failed: {error[:500]}; retry in {delay:.2f}s",
                    "failed": f"attempt {attempt} failed: {error[:500]}; "
                    + ("not retried (permanent failure)" if permanent else "no retries left"),
                },
            )
            await session.commit()
        status = rows[0].status if rows else "stale"
        if rows:
            label = metrics.type_label(rows[0].type)
            if status == "retrying":
                metrics.TASKS_RETRIED.labels(label).inc()
                await self._enqueue_rows(rows)
            else:
                metrics.TASKS_FINISHED.labels(label, status).inc()
        log.info(
            "task attempt failed",
            extra={"task_id": str(task_id), "type": label, "attempt": attempt, "status": status, "error": error},
        )

    async def _hand_back(self, key: tuple[uuid.UUID, int, int], label: str, reason: str) -> None:
        """Give a claimed attempt back without spending it: this worker is older than the task (version skew).

        Pending again under a new generation, due after a short deferral so this worker does not spin on it;
        canceled instead if a cancel was requested meanwhile.
        """
        task_id, generation, attempt = key
        async with self.sessions() as session:
            rows = await self._decide(
                session,
                sets=(
                    "status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'pending' END, "
                    "attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, "
                    "generation = CASE WHEN cancel_requested THEN generation ELSE generation + 1 END, "
                    "finished_at = CASE WHEN cancel_requested THEN now() END, "
                    "started_at = CASE WHEN cancel_requested THEN started_at END, worker_id = NULL, "
                    "run_at = CASE WHEN cancel_requested THEN run_at ELSE now() + make_interval(secs => :delay) END"
                ),
                where="id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt",
                params={"id": task_id, "gen": generation, "attempt": attempt, "delay": HAND_BACK_DELAY_MS / 1000},
                details={
                    "canceled": "canceled while running",
                    "pending": storable(f"handed back by {self.worker_id}, attempt not counted: {reason}", 1000),
                },
            )
            await session.commit()
        if not rows:
            return
        if rows[0].status == "canceled":
            metrics.TASKS_FINISHED.labels(label, "canceled").inc()
            return
        metrics.TASKS_HANDED_BACK.labels(label, "payload").inc()
        log.info("task handed back to a newer worker", extra={"task_id": str(task_id), "type": label})
        await self._enqueue_rows(rows)

    async def _payload_may_be_newer(self, type_: str, exc: ValidationError) -> bool:
        """Whether a payload this worker's model refuses may be one a newer version of the type accepts.

        The API validated every payload when it accepted the task. A field this model forbids as unknown can
        only be there because the API's model knew it: a newer schema, never a failure. Any other refusal is
        one only if a live worker advertises a different schema for this type (a version skew in progress);
        with every live worker on this schema, the payload is wrong for all of them and the task fails.
        """
        if any(err["type"] == "extra_forbidden" for err in exc.errors(include_url=False)):
            return True
        mine = self.task_types.get(type_)
        try:
            async with self.sessions() as session:
                other = (
                    await session.execute(
                        sa.text(
                            "SELECT EXISTS (SELECT 1 FROM worker WHERE expires_at > now() "
                            "AND task_types ->> CAST(:type AS text) IS DISTINCT FROM CAST(:mine AS text) "
                            "AND task_types ->> CAST(:type AS text) IS NOT NULL)"
                        ),
                        {"type": type_, "mine": mine},
                    )
                ).scalar_one()
        except Exception as exc2:
            if not is_transient(exc2):
                raise
            return True  # can't tell now: handing back spends nothing and asks again later
        return bool(other)

    async def _after_cancel(self, key: tuple[uuid.UUID, int, int], label: str) -> None:
        """The job's asyncio task was cancelled: a user's cancel, or this worker shutting down.

        One statement decides (see _decide): canceled if a cancel was requested, else handed back. The first
        TASKPROC_MAX_SHUTDOWN_REQUEUES shutdown requeues give the attempt back; later ones spend it (retrying,
        or failed once none is left), so a flapping scale-down cannot restart a task forever.
        """
        task_id, generation, attempt = key
        spend = "(NOT cancel_requested AND shutdown_requeues >= :max_requeues)"
        final = f"(cancel_requested OR ({spend} AND attempts >= max_retries + 1))"
        limit = self.settings.max_shutdown_requeues
        error = (
            f"attempt {attempt} interrupted: worker {self.worker_id} shut down, and the task was handed back by "
            f"shutdowns more than {limit} times (TASKPROC_MAX_SHUTDOWN_REQUEUES), so the attempt counts"
        )
        try:
            await testhooks.point("after_cancel.decide")
            async with self.sessions() as session:
                rows = await self._decide(
                    session,
                    sets=(
                        f"status = CASE WHEN cancel_requested THEN 'canceled' WHEN {final} THEN 'failed' "
                        f"WHEN {spend} THEN 'retrying' ELSE 'pending' END, "
                        f"attempts = CASE WHEN cancel_requested OR {spend} THEN attempts ELSE attempts - 1 END, "
                        f"generation = CASE WHEN {final} THEN generation ELSE generation + 1 END, "
                        f"started_at = CASE WHEN cancel_requested OR {spend} THEN started_at END, "
                        f"finished_at = CASE WHEN {final} THEN now() END, "
                        f"run_at = CASE WHEN {final} THEN run_at ELSE now() END, "
                        f"error = CASE WHEN {spend} THEN CAST(:error AS text) ELSE error END, "
                        "shutdown_requeues = CASE WHEN cancel_requested THEN shutdown_requeues "
                        "ELSE shutdown_requeues + 1 END, worker_id = NULL"
                    ),
                    where="id = :id AND generation = :gen AND status = 'running' AND attempts = :attempt",
                    params={
                        "id": task_id,
                        "gen": generation,
                        "attempt": attempt,
                        "max_requeues": limit,
                        "error": error,
                    },
                    details={
                        "canceled": "aborted by its worker after a cancel request",
                        "pending": f"requeued: worker {self.worker_id} shut down before the task finished",
                        "retrying": error,
                        "failed": f"{error}; no retries left",
                    },
                )
                await session.commit()
        except TRANSIENT as exc:
            # The lease will expire and the reaper will re-run it; nothing is lost.
            log.warning("could not record cancellation, the reaper will recover the task: %s", exc)
            return
        if not rows:
            return
        status = rows[0].status
        if status == "canceled":
            metrics.TASKS_FINISHED.labels(label, "canceled").inc()
            log.info("task canceled", extra={"task_id": str(task_id), "status": "canceled"})
            return
        if status == "failed":
            metrics.TASKS_FINISHED.labels(label, "failed").inc()
        else:
            if status == "retrying":
                metrics.TASKS_RETRIED.labels(label).inc()
            await self._enqueue_rows(rows)
        log.info("task requeued on shutdown", extra={"task_id": str(task_id), "status": status})

    async def check_cancels(self) -> int:
        """Abort the attempts running here whose task has a cancel request in Postgres (a background duty, once
        per lease tick): the Redis abort request may have been lost (a flush, a restart). Returns how many."""
        if not self.running:
            return 0
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    sa.text(
                        "SELECT id, generation FROM task WHERE id = ANY(:ids) AND status = 'running' "
                        "AND cancel_requested"
                    ),
                    {"ids": list({task_id for task_id, _ in self.running})},
                )
            ).fetchall()
        aborted = 0
        for r in rows:
            job = self.running.get((r.id, r.generation))
            if job is not None and not job.done():
                log.info("aborting a task canceled in postgres", extra={"task_id": str(r.id)})
                job.cancel()
                aborted += 1
        return aborted

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
            {
                "id": self.worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lease": self.settings.lease_s,
                "types": _json(self.task_types),
            },
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
