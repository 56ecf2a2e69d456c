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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import metrics, queue, retry, store, testhooks, tracing
from taskproc.config import Settings
from taskproc.db import PgWriter

# TRANSIENT, is_transient and every are re-exported: they lived here before the maintenance module existed.
from taskproc.maintenance import TRANSIENT as TRANSIENT
from taskproc.maintenance import Maintenance
from taskproc.maintenance import every as every
from taskproc.maintenance import is_transient as is_transient
from taskproc.models import DEFAULT_QUEUE, TaskStatus
from taskproc.store import AttemptRef, Claimed, TaskRow
from taskproc.store import storable as storable
from taskproc.tasks.outcomes import PermanentFailure, RetryAfter
from taskproc.tasks.registry import TaskContext, TaskRegistry, TaskType
from taskproc.worker import batch
from taskproc.worker.backoff import backoff_s

log = logging.getLogger("taskproc.worker")

MAX_ERROR_CHARS = 4000
# A job of a task type this worker does not serve goes back to the queue for this long, so a worker that serves
# it can take it and this one does not spin on it.
HAND_BACK_DELAY_MS = 5000


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
    claims: PgWriter = field(init=False)
    completer: batch.Completer = field(init=False)
    liveness: PgWriter = field(init=False)
    _released: list[tuple[str, str]] = field(default_factory=list, init=False)  # (job id, queue)
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
    # The paused queues as of the last heartbeat: the tick takes nothing from them (the claim refuses them too).
    paused: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.ticker = queue.Ticker(self.redis, self.settings.worker_queues or None)
        self.claims = PgWriter(self.settings, name="claims")
        self.completer = batch.Completer(PgWriter(self.settings, name="outcomes"))
        # What this worker advertises in its heartbeat: the types it serves, each with its schema fingerprint.
        self.task_types = self.registry.advertisement()
        # Liveness has a connection of its own: a pool exhausted by task writes must never let our lease lapse
        # (the reaper would hand our running tasks to another worker and they would run twice).
        self.liveness = PgWriter(self.settings, name="liveness")
        self.maintenance = Maintenance(settings=self.settings, sessions=self.sessions, redis=self.redis)

    async def close_connections(self) -> None:
        """Close the hot path's and liveness's own connections (the pool is the engine's to dispose)."""
        await self.claims.close()
        await self.liveness.close()
        await self.completer.close()

    # ---- jobs --------------------------------------------------------------------------------------------

    async def claim(
        self, taken: list[tuple[str, float]], queue_of: Mapping[str, str] | None = None, *, keyed: bool = True
    ) -> list[Claimed]:
        """Claim every job one loop iteration took off the queue, in one statement.

        `queue_of` names the queue of each job (the tick's answer); a job it leaves out is of the default queue.
        `keyed`: the tick found a concurrency key on some job (or cannot tell), so the claim locks the keys first.
        Jobs whose claim fails (a stale generation, a canceled task) leave the running set at once. If
        Postgres is unreachable they go back to the deferred set for a couple of seconds; if the claim did
        commit but its answer was lost, the rows are orphans of this worker and reap_lost() hands them back.
        """
        jobs = await self._parse_jobs(taken)
        # Marked active before the statement, so the orphan reaper never mistakes a claim in flight for one.
        for task_id, _ in jobs:
            self.active[task_id] += 1
        try:
            if jobs:
                rows, unserved = await store.claim_batch(
                    self.claims,
                    [store.JobRef(id=task_id, generation=gen) for task_id, gen in jobs],
                    worker_id=self.worker_id,
                    types=list(self.task_types),
                    keyed=keyed,
                )
            else:
                rows, unserved = [], []
        except TRANSIENT as exc:
            for task_id, _ in jobs:
                self._inactive(task_id)
            log.warning("claim of %d jobs deferred, postgres unavailable: %s", len(jobs), type(exc).__name__)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                names = queue_of or {}
                back = [(j, queue.priority_of_score(score), names.get(j, DEFAULT_QUEUE)) for j, score in taken]
                await queue.defer_again_by_queue(self.redis, back, delay_ms=2000)
            return []
        claimed = {(r.id, r.generation) for r in rows}
        handed_back = {(u.id, u.generation) for u in unserved}
        limited = [u for u in unserved if u.limited and u.concurrency_key is not None]
        if limited:
            await self._park_limited(limited, dict(taken))
        unserved = [u for u in unserved if not (u.limited and u.concurrency_key is not None)]
        if unserved:
            await self._hand_back_unserved(unserved)
        await self._release_stale([job for job in jobs if job not in claimed and job not in handed_back], queue_of)
        return rows

    async def _parse_jobs(self, taken: list[tuple[str, float]]) -> list[tuple[uuid.UUID, int]]:
        """(task id, generation) of each job taken; a job id that is not ours is dropped from the queue."""
        jobs: list[tuple[uuid.UUID, int]] = []
        for jid, _ in taken:
            try:
                jobs.append(queue.parse_job_id(jid))
            except ValueError:
                log.warning("job %r is not a taskproc job; dropped", jid)
                await queue.release(self.redis, [jid])
        return jobs

    async def _park_limited(self, limited: Sequence[store.Unserved], scores: Mapping[str, float]) -> None:
        """Jobs whose claim their key's limit refused in Postgres (Redis's view of the key was behind: after a
        flush, or a limit just lowered): held for their key in Redis, looked at again when room frees up."""
        jobs = []
        for u in limited:
            self._inactive(u.id)
            jid = queue.job_id(u.id, u.generation)
            metrics.TASKS_HANDED_BACK.labels(metrics.type_label(u.type), "limited").inc()
            jobs.append((jid, u.queue, u.concurrency_key or "", scores.get(jid, 0.0)))
        log.debug("jobs held for their key's limit", extra={"count": len(jobs)})
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await queue.park(self.redis, jobs)

    async def _hand_back_unserved(self, unserved: Sequence[store.Unserved]) -> None:
        # Never failed for being newer than this worker: left, untouched in Postgres, to a worker that serves
        # the type (one of a newer version in a rolling upgrade).
        # Or of a type it serves but in a queue paused after our last heartbeat: left for the resume.
        unknown = [u for u in unserved if u.type not in self.task_types]
        for u in unserved:
            self._inactive(u.id)
            reason = "unknown_type" if u in unknown else "queue_paused"
            metrics.TASKS_HANDED_BACK.labels(metrics.type_label(u.type), reason).inc()
        if unknown:
            log.info(
                "jobs of task types this worker does not serve handed back",
                extra={"count": len(unknown), "type": ",".join(sorted({u.type for u in unknown}))},
            )
        if len(unknown) < len(unserved):
            log.info(
                "jobs of paused queues handed back",
                extra={"count": len(unserved) - len(unknown), "queue": ",".join(sorted({u.queue for u in unserved}))},
            )
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await queue.defer_again_by_queue(
                self.redis,
                [(queue.job_id(u.id, u.generation), u.priority, u.queue) for u in unserved],
                delay_ms=HAND_BACK_DELAY_MS,
            )

    async def _release_stale(
        self, stale_jobs: list[tuple[uuid.UUID, int]], queue_of: Mapping[str, str] | None = None
    ) -> None:
        """Drop jobs whose claim found no row to take (a stale generation, a canceled task) from the running set."""
        stale = []
        for task_id, gen in stale_jobs:
            self._inactive(task_id)
            stale.append(queue.job_id(task_id, gen))
        if stale:
            log.debug("stale jobs skipped", extra={"count": len(stale)})
            names = queue_of or {}
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await queue.release(self.redis, stale, [names.get(jid, DEFAULT_QUEUE) for jid in stale])

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
            with tracing.attempt(claimed):
                await self._execute(claimed)
        finally:
            if self.running.get(job) is current:
                del self.running[job]
            self._inactive(claimed.id)
            self._released.append((queue.job_id(claimed.id, claimed.generation), claimed.queue))
            self._release_soon.set()
            # A slot is free: look at the queue now rather than at the next poll.
            self.wake.set()

    async def _execute(self, c: Claimed) -> None:
        label = metrics.type_label(c.type)
        metrics.TASK_QUEUE_WAIT.labels(c.priority).observe(max(0.0, (c.started_at - c.run_at).total_seconds()))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "task started",
                extra={"task_id": str(c.id), "type": c.type, "attempt": c.attempts, "status": "running"},
            )
        key = (c.id, c.generation, c.attempts)
        prepared = await self._prepare(c, key, label)
        if prepared is None:
            return
        task_type, payload = prepared

        ctx = TaskContext(task_id=c.id, type=c.type, attempt=c.attempts)
        t0 = time.perf_counter()
        metrics.TASKS_RUNNING.inc()
        timeout = asyncio.timeout(c.timeout_s)
        try:
            async with timeout:
                result = await task_type.handler(payload, ctx)
            # Serialise here, so a result that is not JSON fails the attempt instead of the worker.
            result_text = _json(to_jsonable_python(result))
            oversized = _oversized(result_text, self.settings.max_result_bytes)
        except asyncio.CancelledError as exc:
            if _cancel_requested():
                await self._aborted(key, label, t0)
                raise
            # Raised by the handler itself, nobody cancelled us: a failed attempt like any other (requeueing it
            # as for a shutdown would run it again and again).
            await self._attempt_failed(key, label, t0, _error_text(exc))
        except TimeoutError as exc:
            if timeout.expired():
                await self._attempt_failed(key, label, t0, f"timed out after {c.timeout_s:g}s", outcome="timeout")
            else:
                # The handler's own timeout (e.g. asyncio.wait_for inside it), not ours: an ordinary error.
                await self._attempt_failed(key, label, t0, _error_text(exc))
        except Exception as exc:
            # The handler may choose the outcome: no retry at all, or a retry after a delay of its choosing.
            await self._attempt_failed(
                key,
                label,
                t0,
                _error_text(exc),
                permanent=isinstance(exc, PermanentFailure),
                delay_s=exc.delay_s if isinstance(exc, RetryAfter) else None,
            )
        else:
            if oversized is None:
                await self._completed(key, label, t0, result_text)
            else:
                # The same handler would most likely return it again: failed without retries.
                await self._attempt_failed(key, label, t0, oversized, outcome="result_too_large", permanent=True)
        finally:
            metrics.TASKS_RUNNING.dec()

    async def _prepare(
        self, c: Claimed, key: tuple[uuid.UUID, int, int], label: str
    ) -> tuple[TaskType, BaseModel] | None:
        """The attempt's task type and validated payload; None when it cannot run here (its outcome recorded)."""
        task_type = self.registry.get(c.type)
        if task_type is None:
            # claim() only claims the types of this registry, so this does not happen; were it to, the task is
            # not this worker's to fail: it goes back for one that serves the type.
            await self._record(key, lambda: self._hand_back(key, label, f"worker does not serve type {c.type!r}"))
            return None
        try:
            return task_type, task_type.payload_model.model_validate(c.payload)
        except ValidationError as exc:
            error = storable(f"invalid payload: {exc}")
            if await self._payload_may_be_newer(c.type, exc):
                await self._record(
                    key, lambda: self._hand_back(key, label, f"payload this worker's model refuses ({error[:300]})")
                )
            else:
                await self._record(key, lambda: self._finish_failed(key, label, error, permanent=True))
            return None

    async def _aborted(self, key: tuple[uuid.UUID, int, int], label: str, t0: float) -> None:
        """The attempt was cancelled from outside (a cancel, a shutdown): _after_cancel decides what it becomes."""
        metrics.TASK_ATTEMPTS.labels(label, "aborted").inc()
        metrics.TASK_DURATION.labels(label).observe(time.perf_counter() - t0)
        tracing.outcome("aborted")
        await asyncio.shield(self._after_cancel(key, label))

    async def _attempt_failed(
        self,
        key: tuple[uuid.UUID, int, int],
        label: str,
        t0: float,
        error: str,
        *,
        outcome: str = "error",
        permanent: bool = False,
        delay_s: float | None = None,
    ) -> None:
        """The handler raised (or ran out of time): _finish_failed makes it canceled, retrying or failed."""
        metrics.TASK_DURATION.labels(label).observe(time.perf_counter() - t0)
        metrics.TASK_ATTEMPTS.labels(label, outcome).inc()
        tracing.outcome(outcome, error)
        await self._record(key, lambda: self._finish_failed(key, label, error, permanent=permanent, delay_s=delay_s))

    async def _completed(self, key: tuple[uuid.UUID, int, int], label: str, t0: float, result_text: str) -> None:
        """The handler returned: the completer writes the result (batched with others that arrive meanwhile)."""
        task_id, generation, attempt = key
        elapsed = time.perf_counter() - t0
        metrics.TASK_DURATION.labels(label).observe(elapsed)
        metrics.TASK_ATTEMPTS.labels(label, "success").inc()
        tracing.outcome("success")
        outcome = batch.Outcome(
            id=task_id,
            generation=generation,
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
        tracing.status(written or "stale")
        if log.isEnabledFor(logging.INFO):
            log.info(
                "stale completion ignored"
                if written is None
                else "task completed"
                if written == TaskStatus.completed
                else "task canceled: a cancel was requested while it ran (its result is kept)",
                extra={
                    "task_id": str(task_id),
                    "type": label,
                    "attempt": attempt,
                    "status": written or "completed",
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    async def release_finished(self) -> None:
        """Take finished jobs off the running set, a batch per round trip (a background duty)."""
        while True:
            await self._release_soon.wait()
            self._release_soon.clear()
            released = self.drain_released()
            try:
                await queue.release(self.redis, [j for j, _ in released], [q for _, q in released])
            except (RedisError, OSError, TimeoutError) as exc:
                # Left behind, they are found by the reconciler's sweep of the running set.
                log.warning("could not update the running set: %s", type(exc).__name__)
                await asyncio.sleep(1)

    def drain_released(self) -> list[tuple[str, str]]:
        """The finished jobs (job id, queue) not yet taken off the running sets."""
        released, self._released = self._released, []
        return released

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
        delays = retry.Delays(max_s=2.0)
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
                delay = delays.next()
                log.warning(
                    "postgres unavailable (%s); outcome of task %s kept, retrying in %.1fs",
                    type(exc).__name__,
                    key[0],
                    delay,
                    extra={"task_id": str(key[0]), "attempt": key[2]},
                )
                await asyncio.sleep(delay)

    async def _finish_failed(
        self,
        key: tuple[uuid.UUID, int, int],
        label: str,
        error: str,
        *,
        permanent: bool = False,
        delay_s: float | None = None,
    ) -> None:
        """A failed attempt: canceled if a cancel was requested, else retrying while retries are left (after the
        backoff, or `delay_s` when the handler asked for one), else failed; `permanent`: never retried."""
        task_id, generation, attempt = key
        label = label or "other"
        error = storable(error)
        if delay_s is None:
            delay = backoff_s(attempt, base_s=self.settings.retry_base_s, cap_s=self.settings.retry_max_s)
        else:
            delay = delay_s
        await testhooks.point("finish_failed.decide")
        async with self.sessions() as session:
            row = await store.fail_attempt(
                session,
                AttemptRef(id=task_id, generation=generation, attempts=attempt),
                error=error,
                delay_s=delay,
                retry=not permanent,
                span=tracing.current_traceparent(),
            )
            await session.commit()
        status = row.status.value if row is not None else "stale"
        tracing.status(status)
        if row is not None:
            label = metrics.type_label(row.type)
            if row.status == TaskStatus.retrying:
                metrics.TASKS_RETRIED.labels(label).inc()
                await self._enqueue_rows([row])
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
            row = await store.hand_back(
                session,
                AttemptRef(id=task_id, generation=generation, attempts=attempt),
                worker_id=self.worker_id,
                reason=reason,
                delay_s=HAND_BACK_DELAY_MS / 1000,
            )
            await session.commit()
        if row is None:
            return
        if row.status == TaskStatus.canceled:
            metrics.TASKS_FINISHED.labels(label, "canceled").inc()
            return
        metrics.TASKS_HANDED_BACK.labels(label, "payload").inc()
        log.info("task handed back to a newer worker", extra={"task_id": str(task_id), "type": label})
        await self._enqueue_rows([row])

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
                return await store.other_schema_advertised(session, type_, mine)
        except Exception as exc2:
            if not is_transient(exc2):
                raise
            return True  # can't tell now: handing back spends nothing and asks again later

    async def _after_cancel(self, key: tuple[uuid.UUID, int, int], label: str) -> None:
        """The job's asyncio task was cancelled: a user's cancel, or this worker shutting down.

        One statement decides (store.requeue): canceled if a cancel was requested, else handed back. The first
        TASKPROC_MAX_SHUTDOWN_REQUEUES shutdown requeues give the attempt back; later ones spend it (retrying,
        or failed once none is left), so a flapping scale-down cannot restart a task forever.
        """
        task_id, generation, attempt = key
        try:
            await testhooks.point("after_cancel.decide")
            async with self.sessions() as session:
                row = await store.requeue(
                    session,
                    AttemptRef(id=task_id, generation=generation, attempts=attempt),
                    worker_id=self.worker_id,
                    max_requeues=self.settings.max_shutdown_requeues,
                )
                await session.commit()
        except TRANSIENT as exc:
            # The lease will expire and the reaper will re-run it; nothing is lost.
            log.warning("could not record cancellation, the reaper will recover the task: %s", exc)
            return
        if row is None:
            return
        status = row.status
        if status == TaskStatus.canceled:
            metrics.TASKS_FINISHED.labels(label, "canceled").inc()
            log.info("task canceled", extra={"task_id": str(task_id), "status": "canceled"})
            return
        if status == TaskStatus.failed:
            metrics.TASKS_FINISHED.labels(label, "failed").inc()
        else:
            if status == TaskStatus.retrying:
                metrics.TASKS_RETRIED.labels(label).inc()
            await self._enqueue_rows([row])
        log.info("task requeued on shutdown", extra={"task_id": str(task_id), "status": status.value})

    async def check_cancels(self) -> int:
        """Abort the attempts running here whose task has a cancel request in Postgres (a background duty, once
        per lease tick): the Redis abort request may have been lost (a flush, a restart). Returns how many."""
        if not self.running:
            return 0
        async with self.sessions() as session:
            rows = await store.check_cancels(session, list({task_id for task_id, _ in self.running}))
        aborted = 0
        for r in rows:
            job = self.running.get((r.id, r.generation))
            if job is not None and not job.done():
                log.info("aborting a task canceled in postgres", extra={"task_id": str(r.id)})
                job.cancel()
                aborted += 1
        return aborted

    async def _enqueue_rows(self, rows: Sequence[TaskRow]) -> None:
        try:
            await queue.enqueue(self.redis, [queue.entry(r, r.updated_at) for r in rows])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, r.priority, r.queue) for r in rows])
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
        _, self.paused = await store.heartbeat_paused(
            self.liveness,
            self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            lease_s=self.settings.lease_s,
            task_types=self.task_types,
            queues=self.ticker.queues,
        )

    async def unregister(self) -> None:
        await store.unregister_worker(self.liveness, self.worker_id)

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
            candidates = await store.running_on(session, self.worker_id)
            # Checked after the read: a task that was being run when the row was read and is not any more has
            # been recorded since (its row changed, so the compare-and-set skips it).
            orphans = [c for c in candidates if c.id not in self.active]
            rows = await store.reap_orphans(session, self.worker_id, orphans)
            await session.commit()
        if not rows:
            return 0
        for r in rows:
            log.warning("orphaned task handed back", extra={"task_id": str(r.id), "status": r.status.value})
            if r.status == TaskStatus.canceled:
                metrics.TASKS_FINISHED.labels(metrics.type_label(r.type), "canceled").inc()
        pending = [r for r in rows if r.status == TaskStatus.pending]
        try:
            if pending:
                await queue.enqueue(self.redis, [queue.entry(r, r.updated_at) for r in pending])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, r.priority, r.queue) for r in rows])
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable; the reconciler will enqueue: %s", type(exc).__name__)
        return len(rows)

    async def _reap_expired(self) -> int:
        async with self.sessions() as session:
            # Our own tasks are never "lost" to us: the ones we still run carry on, the others are orphans.
            rows = await store.reap_expired(session, self.worker_id, max_lost=self.settings.max_lost_attempts)
            await session.commit()
        if not rows:
            return 0
        for r in rows:
            label = metrics.type_label(r.type)
            metrics.TASK_ATTEMPTS.labels(label, "lost").inc()
            if r.status == TaskStatus.retrying:
                metrics.TASKS_RETRIED.labels(label).inc()
            else:
                metrics.TASKS_FINISHED.labels(label, r.status.value).inc()
            if r.quarantined:
                metrics.TASKS_QUARANTINED.labels(label).inc()
                log.error(
                    "task quarantined: its attempts killed their worker",
                    extra={"task_id": str(r.id), "type": r.type, "attempt": r.attempts, "error": r.error},
                )
                continue
            log.warning(
                "task recovered from a lost worker",
                extra={"task_id": str(r.id), "type": r.type, "attempt": r.attempts, "status": r.status.value},
            )
        retry = [r for r in rows if r.status == TaskStatus.retrying]
        try:
            if retry:
                await queue.enqueue(self.redis, [queue.entry(r, r.updated_at) for r in retry])
            await queue.remove_jobs(self.redis, [(r.id, r.generation - 1, r.priority, r.queue) for r in rows])
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable; the reconciler will enqueue: %s", type(exc).__name__)
        return len(rows)

    async def reconcile(self, *, batch_size: int = 1000, max_rows: int = 200_000) -> int:
        """The reconciler's pass (taskproc.maintenance), which API processes run too."""
        return await self.maintenance.reconcile(batch_size=batch_size, max_rows=max_rows)

    async def purge_expired(self, *, batch: int = 1000) -> int:
        """Drop results past their `result_ttl_s`, then delete terminal tasks older than the retention, in small
        batches so no lock is held for long; returns how many tasks were deleted."""
        await self.expire_results(batch=batch)
        days = self.settings.retention_days
        if days <= 0:
            return 0
        total = 0
        while True:
            async with self.sessions() as session:
                n = await store.purge(session, older_than_s=days * 86400, batch=batch)
                await session.commit()
            total += n
            if n < batch:
                break
        if total:
            log.info("purged expired tasks", extra={"count": total})
        return total

    async def expire_results(self, *, batch: int = 1000, max_rows: int = 100_000) -> int:
        """Drop the results whose `result_ttl_s` has passed (the tasks and their history stay), `batch` rows a
        transaction, at most `max_rows` a pass so one pass never runs for long; returns how many."""
        total = 0
        while total < max_rows:
            async with self.sessions() as session:
                n = await store.expire_results(session, batch=batch)
                await session.commit()
            total += n
            if n < batch:
                break
        if total:
            log.info("dropped expired results", extra={"count": total})
        return total


def _cancel_requested() -> bool:
    """Whether the running attempt was cancelled from outside, rather than by a CancelledError its handler raised."""
    current = asyncio.current_task()
    return current is None or current.cancelling() > 0


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _oversized(result_text: str, limit: int) -> str | None:
    """The error of a result over TASKPROC_MAX_RESULT_BYTES, None if it fits."""
    size = len(result_text.encode())
    if size <= limit:
        return None
    return f"result of {size} bytes exceeds TASKPROC_MAX_RESULT_BYTES={limit}"
