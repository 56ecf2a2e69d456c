"""The worker process: an arq Worker that is woken by pub/sub instead of sleeping between polls.

arq's loop sleeps `poll_delay` (0.5 s) between queue reads, which is most of a task's pickup latency. Here the
poll delay is 0 and the iteration itself waits on an event that is set by a pub/sub message from the API, by
a job finishing, or by the next deferred job falling due; a slow fallback poll covers lost messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import psycopg
from arq.worker import func
from redis.exceptions import RedisError

from taskproc import metrics, queue, retry
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.logging import bind
from taskproc.maintenance import SYNC_EVERY_S, TRANSIENT, every
from taskproc.tasks.registry import registry
from taskproc.worker.arq_fence import FencedWorker, redis_settings
from taskproc.worker.httpserver import WorkerHttpServer, health_app
from taskproc.worker.podcost import PodDeletionCost
from taskproc.worker.runtime import WorkerRuntime

log = logging.getLogger("taskproc.worker")
# Registration at start-up is retried on these; psycopg.Error also covers a database without our schema yet
# (UndefinedTable).
_STARTUP_RETRY: tuple[type[BaseException], ...] = (*TRANSIENT, psycopg.Error)


async def run_task(ctx: dict[str, Any], *, task_id: str, generation: int) -> None:
    """arq's registered function (arq wants one): a job handed to it runs like any job the loop takes itself.

    The loop never goes through it: it takes jobs in batches with TICK_SCRIPT instead of arq's per-job protocol.
    """
    runtime: WorkerRuntime = ctx["runtime"]
    for claimed in await runtime.claim([(queue.job_id(task_id, generation), 0.0)]):
        await runtime.execute(claimed)


class TaskprocWorker(FencedWorker):
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(**kwargs)

    @property
    def runtime(self) -> WorkerRuntime:
        runtime: WorkerRuntime = self.ctx["runtime"]
        return runtime

    def on_stop_requested(self, *, graceful: bool) -> None:
        if "runtime" in self.ctx:
            self.runtime.shutting_down = True
            if graceful:  # a hard stop cancels the loop instead; waking it then would only race the cancel
                self.runtime.wake.set()
        if graceful:
            log.info(
                "shutdown requested: no new tasks; running ones get %.0fs to finish, then go back to the queue",
                self.settings.shutdown_grace_s,
            )

    async def iterate(self) -> None:
        """One round trip to Redis (TICK_SCRIPT) takes as many jobs as there are free slots, one statement
        claims them all, and each claimed attempt runs in its own asyncio task, started with start_job so that
        arq's shutdown (wait up to the grace period, then cancel) applies to them. While Redis is unreachable
        the round trip is retried with backoff."""
        runtime = self.runtime
        runtime.wake.clear()
        async for attempt in retry.retrying("redis unavailable", on=(RedisError, OSError), logger=log):
            with attempt:
                runtime.last_loop_at = time.monotonic()
                want, taken, next_due = await self._tick()
        if want and taken == want:
            return  # every slot filled: more may be waiting, look again as soon as one frees up
        timeout = self.settings.worker_poll_s
        if next_due is not None:
            timeout = min(timeout, next_due / 1000)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when the event is set in the
        # same loop turn as arq's handle_sig cancels us, and the lost cancellation leaves the worker running on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await runtime.wake.wait()

    async def _tick(self) -> tuple[int, int, int | None]:
        """(slots asked for, jobs taken, ms until the next deferred job falls due)."""
        runtime = self.runtime
        want = 0
        if self.picking_allowed and not runtime.shutting_down:
            want = max(0, self.settings.worker_concurrency - self.running_jobs())
        tick = await runtime.ticker.tick(want, paused=runtime.paused)
        if tick.aborts:
            await self._abort(tick.aborts)
        if tick.taken:
            for claimed in await runtime.claim(tick.taken, tick.queue_of):
                self.start_job(queue.job_id(claimed.id, claimed.generation), runtime.execute(claimed))
        if tick.held:
            metrics.LIMIT_HOLDS.inc(tick.held)
        await self.beat()
        # Jobs held for their keys' limits left the ready set: the ones behind them may be takeable right away.
        return want, want if tick.held else len(tick.taken), tick.next_due_in_ms

    async def _abort(self, jids: list[str]) -> None:
        """Cancel the tasks a user canceled while they ran here; requests for jobs not here are left to age out
        (another worker runs the job, or our claim of it is still in flight)."""
        aborted = []
        for jid in jids:
            task = self.job(jid)
            if task is not None and not task.done():
                task.cancel()
                aborted.append(jid)
        await queue.forget_aborts(self.runtime.redis, aborted)


async def _listen_for_wakeups(runtime: WorkerRuntime) -> None:
    """Relay wake-up messages to the loop; after a lost connection, subscribe again (with backoff while Redis
    stays unreachable)."""
    while True:
        pubsub = runtime.redis.pubsub()
        try:
            async for attempt in retry.retrying("wake-up channel unavailable", on=(RedisError, OSError), logger=log):
                with attempt:
                    await pubsub.subscribe(queue.WAKE_CHANNEL)
            try:
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        continue
                    # Also on the confirmation of a (re)subscription: a job enqueued while we were not listening
                    # woke nobody, so look at the queue now rather than at the next fallback poll.
                    runtime.wake.set()
                    if msg.get("type") == "subscribe":
                        runtime.listening.set()
            except (RedisError, OSError) as exc:
                log.warning("wake-up channel lost (%s); subscribing again", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    engine = create_engine(
        settings, pool_size=min(settings.db_pool_size, settings.worker_concurrency + 4), pre_ping=False
    )
    runtime = WorkerRuntime(
        settings=settings,
        engine=engine,
        sessions=create_sessionmaker(engine),
        redis=ctx["redis"],
        registry=registry,
    )
    ctx["runtime"] = runtime
    bind(worker=runtime.worker_id)
    # Serving before anything touches Postgres: liveness must not depend on the schema or the database being
    # there yet (an init container may still be waiting for the migrations), only on this process's loop.
    if settings.worker_metrics_port:
        ctx["metrics_server"] = await WorkerHttpServer.start(
            health_app(lambda: runtime.last_loop_at, stale_after_s=max(30.0, settings.worker_poll_s * 20)),
            port=settings.worker_metrics_port,
        )
    # Listening before registering: a worker that shows up as live is one that a submit wakes at once.
    listener = asyncio.create_task(_listen_for_wakeups(runtime))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.listening.wait(), 5.0)
    # Everything loaded so far lives as long as the process: keep it out of every later full collection.
    gc.collect()
    gc.freeze()
    # Register before taking any job, so the reaper never mistakes our first task for an orphan.
    async for attempt in retry.retrying("postgres unavailable at startup", on=_STARTUP_RETRY, logger=log):
        with attempt:
            runtime.last_loop_at = time.monotonic()
            await runtime.heartbeat()
    # Heartbeat three times per lease, so one slow round trip never lets a live worker's lease lapse. The
    # reaper looks twice as often, so a dead worker's task is picked up at most a sixth of a lease after its
    # lease ran out (which is 2/3 to 1 lease after the kill).
    lease_tick = max(0.2, settings.lease_s / 3)
    reap_tick = max(0.2, settings.lease_s / 6)
    background = [
        asyncio.create_task(every(lease_tick, runtime.heartbeat, "heartbeat", jitter=0.0)),
        # Postgres is the truth for cancels: a Redis abort request can be lost (issue 12 case 11).
        asyncio.create_task(every(lease_tick, runtime.check_cancels, "cancel check")),
        asyncio.create_task(every(reap_tick, runtime.reap_lost, "reaper")),
        asyncio.create_task(every(settings.reconcile_s, runtime.reconcile, "reconciler")),
        asyncio.create_task(every(SYNC_EVERY_S, runtime.maintenance.sync_redis, "redis mirror of limits and pauses")),
        asyncio.create_task(every(settings.retention_interval_s, runtime.purge_expired, "retention")),
        listener,
        asyncio.create_task(runtime.release_finished()),
    ]
    if settings.pod_deletion_cost:
        try:
            cost = PodDeletionCost(settings, lambda: len(runtime.active))
        except ValueError as exc:
            log.warning("pod-deletion-cost disabled: %s", exc)
        else:
            background.append(asyncio.create_task(cost.run()))
    # Apart from the others: on shutdown it must write the last outcomes before it stops.
    ctx["completer"] = asyncio.create_task(runtime.completer.run(transient=TRANSIENT))
    ctx["background"] = background
    log.info(
        "worker started",
        extra={"worker": runtime.worker_id, "concurrency": settings.worker_concurrency},
    )


async def on_shutdown(ctx: dict[str, Any]) -> None:
    runtime: WorkerRuntime | None = ctx.get("runtime")
    completer: asyncio.Task[None] | None = ctx.get("completer")
    if runtime is not None and completer is not None:
        if not await runtime.completer.drain(within_s=max(5.0, runtime.settings.db_timeout_s * 2)):
            log.warning("outcomes not written before shutdown; their tasks are recovered when our lease expires")
        completer.cancel()
        await asyncio.gather(completer, return_exceptions=True)
    for task in ctx.get("background", []):
        task.cancel()
    await asyncio.gather(*ctx.get("background", []), return_exceptions=True)
    server: WorkerHttpServer | None = ctx.get("metrics_server")
    if server is not None:
        await server.stop()
    if runtime is not None:
        with contextlib.suppress(*TRANSIENT):
            await runtime.unregister()
        with contextlib.suppress(*TRANSIENT):
            released = runtime.drain_released()
            await queue.release(runtime.redis, [j for j, _ in released], [q for _, q in released])
        await runtime.close_connections()
        await runtime.engine.dispose()
        log.info("worker stopped", extra={"worker": runtime.worker_id})


def build_worker(settings: Settings) -> TaskprocWorker:
    # Only what differs from arq's defaults, or what it requires (a function, though the loop never runs it).
    return TaskprocWorker(
        settings,
        functions=[func(run_task, name=queue.JOB_FUNCTION)],
        redis_settings=redis_settings(settings.redis_url.get_secret_value()),
        poll_delay=0,  # the iteration waits on its own (wake-ups, the next due job, worker_poll_s)
        job_completion_wait=settings.shutdown_grace_s,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        ctx={"settings": settings},
    )


def run_worker(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (it comes with uvicorn[standard]); asyncio's loop works too
        pass
    else:
        # About a quarter less CPU per socket round trip, and a worker is mostly round trips.
        asyncio.set_event_loop(uvloop.new_event_loop())
    worker = build_worker(settings)
    worker.run()
