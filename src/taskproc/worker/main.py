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
import signal
import time
from functools import partial
from typing import Any

import psycopg
from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.exceptions import RedisError

from taskproc import queue
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.logging import bind
from taskproc.maintenance import TRANSIENT, every
from taskproc.metrics import render_latest
from taskproc.tasks.registry import registry
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


class TaskprocWorker(Worker):
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self._redis_failures = 0
        super().__init__(**kwargs)

    @property
    def runtime(self) -> WorkerRuntime:
        runtime: WorkerRuntime = self.ctx["runtime"]
        return runtime

    def handle_sig(self, signum: signal.Signals) -> None:
        if "runtime" in self.ctx:
            self.runtime.shutting_down = True
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        if "runtime" in self.ctx:
            self.runtime.shutting_down = True
            self.runtime.wake.set()
        log.info(
            "shutdown requested: no new tasks; running ones get %.0fs to finish, then go back to the queue",
            self.settings.shutdown_grace_s,
        )
        super().handle_sig_wait_for_completion(signum)

    async def _poll_iteration(self) -> None:
        """One round trip to Redis (TICK_SCRIPT) takes as many jobs as there are free slots, one statement
        claims them all, and each claimed attempt runs in its own asyncio task, kept in arq's `self.tasks` so
        arq's shutdown (wait up to the grace period, then cancel) applies to them."""
        runtime = self.runtime
        runtime.last_loop_at = time.monotonic()
        runtime.wake.clear()
        next_due: int | None = None
        want = 0
        taken = 0
        try:
            if self.allow_pick_jobs and not runtime.shutting_down:
                want = max(0, self.max_jobs - len(self.tasks))
            tick = await runtime.ticker.tick(want)
            next_due = tick.next_due_in_ms
            taken = len(tick.taken)
            if tick.aborts:
                await self._abort(tick.aborts)
            if tick.taken:
                for claimed in await runtime.claim(tick.taken):
                    jid = queue.job_id(claimed.id, claimed.generation)
                    task = asyncio.create_task(runtime.execute(claimed))
                    self.tasks[jid] = task
                    task.add_done_callback(partial(self._job_done, jid))
            await self.heart_beat()
            self._redis_failures = 0
        except (RedisError, OSError) as exc:
            self._redis_failures += 1
            delay = min(5.0, 0.1 * 2**self._redis_failures)
            log.warning("redis unavailable (%s), retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            return
        if want and taken == want:
            return  # every slot filled: more may be waiting, look again as soon as one frees up
        timeout = self.settings.worker_poll_s
        if next_due is not None:
            timeout = min(timeout, next_due / 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.wake.wait(), timeout)

    async def close(self) -> None:
        # A job task cancelled by the shutdown ends in CancelledError (after handing its attempt back), which
        # arq's close() would re-raise from its gather.
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await super().close()

    def _job_done(self, jid: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(jid) is task:
            del self.tasks[jid]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s crashed: %r", jid, task.exception())

    async def _abort(self, jids: list[str]) -> None:
        """Cancel the tasks a user canceled while they ran here; requests for jobs not here are left to age out
        (another worker runs the job, or our claim of it is still in flight)."""
        aborted = []
        for jid in jids:
            task = self.tasks.get(jid)
            if task is not None and not task.done():
                task.cancel()
                aborted.append(jid)
        await queue.forget_aborts(self.pool, aborted)


async def _listen_for_wakeups(runtime: WorkerRuntime) -> None:
    failures = 0
    while True:
        pubsub = runtime.redis.pubsub()
        try:
            await pubsub.subscribe(queue.WAKE_CHANNEL)
            failures = 0
            while True:
                msg = await pubsub.get_message(timeout=5.0)
                if msg is None:
                    continue
                # Also on the confirmation of a (re)subscription: a job enqueued while we were not listening
                # woke nobody, so look at the queue now rather than at the next fallback poll.
                runtime.wake.set()
                if msg.get("type") == "subscribe":
                    runtime.listening.set()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError):
            failures += 1
            await asyncio.sleep(min(5.0, 0.2 * 2**failures))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


async def _serve_metrics(runtime: WorkerRuntime, port: int) -> asyncio.Server:
    """A minimal HTTP endpoint for /metrics and /healthz on the event loop itself.

    It runs on the loop on purpose: if the loop is stuck, /healthz stops answering and the kubelet restarts us.
    """
    stale_after = max(30.0, runtime.settings.worker_poll_s * 20)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].split(b"?")[0] if request.count(b" ") >= 2 else b"/"
            if path == b"/metrics":
                body, ctype = render_latest()
                status = "200 OK"
            elif path in (b"/healthz", b"/"):
                alive = time.monotonic() - runtime.last_loop_at < stale_after
                status = "200 OK" if alive else "503 Service Unavailable"
                body, ctype = (b'{"status":"ok"}' if alive else b'{"detail":"worker loop stalled"}'), "application/json"
            else:
                status, body, ctype = "404 Not Found", b'{"detail":"not found"}', "application/json"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host="0.0.0.0", port=port)  # noqa: S104


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
        ctx["metrics_server"] = await _serve_metrics(runtime, settings.worker_metrics_port)
    # Listening before registering: a worker that shows up as live is one that a submit wakes at once.
    listener = asyncio.create_task(_listen_for_wakeups(runtime))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.listening.wait(), 5.0)
    # Everything loaded so far lives as long as the process: keep it out of every later full collection.
    gc.collect()
    gc.freeze()
    # Register before taking any job, so the reaper never mistakes our first task for an orphan.
    delay = 0.2
    while True:
        runtime.last_loop_at = time.monotonic()
        try:
            await runtime.heartbeat()
            break
        except _STARTUP_RETRY as exc:
            log.warning("postgres unavailable at startup (%s), retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
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
    server: asyncio.Server | None = ctx.get("metrics_server")
    if server is not None:
        server.close()
        await server.wait_closed()
    if runtime is not None:
        with contextlib.suppress(*TRANSIENT):
            await runtime.unregister()
        with contextlib.suppress(*TRANSIENT):
            await queue.release(runtime.redis, runtime.drain_released())
        await runtime.close_connections()
        await runtime.engine.dispose()
        log.info("worker stopped", extra={"worker": runtime.worker_id})


def build_worker(settings: Settings) -> TaskprocWorker:
    redis_settings = RedisSettings.from_dsn(settings.redis_url.get_secret_value())
    redis_settings.conn_timeout = 2
    redis_settings.conn_retries = 30
    redis_settings.conn_retry_delay = 1
    return TaskprocWorker(
        settings,
        functions=[func(run_task, name=queue.JOB_FUNCTION, timeout=queue.JOB_TIMEOUT_S, max_tries=1_000_000)],
        redis_settings=redis_settings,
        queue_name=queue.QUEUE_KEY,
        max_jobs=settings.worker_concurrency,
        queue_read_limit=max(500, settings.worker_concurrency * 20),
        poll_delay=0,
        keep_result=0,
        retry_jobs=True,
        max_tries=1_000_000,
        allow_abort_jobs=True,
        job_completion_wait=settings.shutdown_grace_s,
        job_serializer=queue.json_serializer,
        job_deserializer=queue.json_deserializer,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        ctx={"settings": settings},
        health_check_interval=60,
        handle_signals=True,
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
