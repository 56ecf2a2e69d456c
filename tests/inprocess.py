"""The in-process layers of the pyramid: the API app and arq workers in the test's own event loop, against the
session's real Postgres and Redis.

`InProcess` is the counterpart of `support.Stack` for tests that need no process boundary (HTTP contract,
validation, auth, the state machine end to end): no interpreter start, no port, no readiness polling. The API is
`create_app(settings)` with its lifespan run, reached through `httpx.ASGITransport`; workers are the real
`TaskprocWorker` (`taskproc.worker.main.build_worker`) run as asyncio tasks; `runtime()` builds a bare
`WorkerRuntime` whose reaper, reconciler and claim/finish/cancel paths a test steps one call at a time.

What does need processes (SIGKILL, SIGTERM, outages of a process's own connections, `taskproc up`, network
faults, upgrades, HTTP framing of the real server, streamed responses) stays on `support.Stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from taskproc.api.main import create_app
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.logging import TextFormatter
from taskproc.maintenance import TRANSIENT
from taskproc.models import TaskCreate
from taskproc.services import tasks as service
from taskproc.tasks.registry import TaskRegistry, registry
from taskproc.worker.main import TaskprocWorker, build_worker
from taskproc.worker.runtime import WorkerRuntime

from support import Servers

T = TypeVar("T")

# What `support.Stack` gives its processes, so a test moved from a stack sees the same timings.
STACK_DEFAULTS = {
    "TASKPROC_LOG_FORMAT": "text",
    "TASKPROC_WORKER_METRICS_PORT": "0",
    "TASKPROC_RETRY_BASE_S": "0.2",
    "TASKPROC_LEASE_S": "3",
    "TASKPROC_RECONCILE_S": "2",
    "TASKPROC_SHUTDOWN_GRACE_S": "5",
}


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings as a process started with these TASKPROC_* variables would read them (and nothing else)."""
    values = {k.removeprefix("TASKPROC_").lower(): v for k, v in env.items() if k.startswith("TASKPROC_")}
    return Settings(**values)


async def wait_until(
    predicate: Callable[[], Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """`support.wait_for` for coroutines: poll `predicate` on the loop until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as exc:  # the condition may legitimately fail while something is starting
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
        await asyncio.sleep(interval)


TEST_SIDE_LOGGERS = {"httpx", "httpcore"}


class LogCapture(logging.Handler):
    """The text a process's log would hold: every record of this process, formatted as `TASKPROC_LOG_FORMAT=text`
    writes it (`configure_logging` is not called in process: it would replace pytest's own handlers)."""

    def __init__(self, level: str) -> None:
        super().__init__(logging.getLevelName(level.upper()))
        self.setFormatter(TextFormatter())
        self._buffer = io.StringIO()
        self._root_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        # The test's own HTTP client logs each request too; a server process would not hold those lines.
        if record.name.split(".")[0] not in TEST_SIDE_LOGGERS:
            self._buffer.write(self.format(record) + "\n")

    def text(self) -> str:
        return self._buffer.getvalue()

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(min(self.level, root.level or logging.WARNING))
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._root_level)


# A process that does not stop is killed by its test at last; in process, a shutdown that hangs would hang the
# test until pytest-timeout with no clue: this bounds it and says which coroutines were still waiting.
SHUTDOWN_S = 30.0


async def _bounded(step: Awaitable[None], what: str) -> None:
    # Waited on from outside rather than under asyncio.timeout: a step that suppresses CancelledError (as
    # stopping a worker task does) would swallow the timeout's cancellation and hang on.
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_S)
    if not done:
        stacks = io.StringIO()
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.print_stack(file=stacks)
        task.cancel()
        raise AssertionError(f"timed out after {SHUTDOWN_S}s waiting for {what}; pending tasks:\n{stacks.getvalue()}")
    task.result()


class InProcess:
    """An API (and `start_worker()` workers) on a database and Redis db index of its own, in this event loop."""

    def __init__(self, servers: Servers, env: dict[str, str] | None = None) -> None:
        self.servers = servers
        self.database = servers.new_database()
        self.redis_db = servers.take_redis_db()
        self.database_url = servers.pg.url_for(self.database)
        self.redis_url = servers.redis.url.rsplit("/", 1)[0] + f"/{self.redis_db}"
        self.env = {
            **STACK_DEFAULTS,
            "TASKPROC_DATABASE_URL": self.database_url,
            "TASKPROC_REDIS_URL": self.redis_url,
            **(env or {}),
        }
        self.settings = settings_from_env(self.env)
        self.log = LogCapture(self.settings.log_level)
        self.workers: list[tuple[TaskprocWorker, asyncio.Task[None]]] = []
        self.client: httpx.AsyncClient

    # ---- life cycle ----

    @asynccontextmanager
    async def running(self) -> AsyncIterator[InProcess]:
        try:
            with self.log:
                async with contextlib.AsyncExitStack() as resources:
                    app = create_app(self.settings)
                    await resources.enter_async_context(app.router.lifespan_context(app))
                    # raise_app_exceptions off: an unhandled error is the 500 a real server would answer.
                    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                    self.client = await resources.enter_async_context(
                        httpx.AsyncClient(transport=transport, base_url="http://api", timeout=10.0)
                    )
                    try:
                        yield self
                    finally:
                        await _bounded(self.stop_workers(), "the in-process workers to stop")
                        await _bounded(resources.aclose(), "the in-process API's lifespan to end")
        finally:
            self.servers.give_back_redis_db(self.redis_db)
            with psycopg.connect(self.servers.admin_url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    async def start_worker(self, env: dict[str, str] | None = None, *, wait: bool = True) -> TaskprocWorker:
        """A real arq worker (`build_worker`) as a task of this loop; returns once it is registered and listening
        (with `wait=False` at once: the test then waits the way it needs, e.g. with `wait_workers`)."""
        settings = settings_from_env({**self.env, **(env or {})}) if env else self.settings
        loop = asyncio.get_running_loop()
        worker = build_worker(settings)
        # arq put its SIGINT/SIGTERM handlers on the test session's loop: give the signals back to pytest (the
        # tests that signal a worker use a real process).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        task = asyncio.create_task(worker.async_run())
        self.workers.append((worker, task))
        if not wait:
            return worker

        async def registered() -> bool:
            if task.done():
                task.result()  # raises what made the worker stop
                raise AssertionError("the worker stopped")
            runtime: WorkerRuntime | None = worker.ctx.get("runtime")
            return runtime is not None and runtime.listening.is_set() and bool(await self.worker_row(runtime))

        await wait_until(registered, timeout=30, what="the in-process worker to register")
        return worker

    async def wait_workers(self, workers: int, timeout: float = 60.0) -> None:
        """`Stack.wait_ready(workers)`: until /api/v1/stats counts that many live workers."""

        async def live() -> bool:
            return bool((await self.client.get("/api/v1/stats")).json()["workers"] >= workers)

        await wait_until(live, timeout=timeout, what=f"{workers} live workers")

    async def worker_row(self, runtime: WorkerRuntime) -> bool:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM worker WHERE id = %s", (runtime.worker_id,))
            return await cur.fetchone() is not None

    async def stop_worker(self, worker: TaskprocWorker) -> None:
        """Stop like arq on a signal without a grace period: running jobs are cancelled (and handed back), then
        arq's close() runs on_shutdown (outcomes drained, lease given up)."""
        for entry in list(self.workers):
            if entry[0] is worker:
                self.workers.remove(entry)
                task = entry[1]
                worker.handle_sig(signal.SIGTERM)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with warnings.catch_warnings():
                    # arq 0.28 closes its pool with redis-py's deprecated close(); the process does the same.
                    warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
                    await worker.close()

    async def stop_workers(self) -> None:
        for worker, _ in list(self.workers):
            await self.stop_worker(worker)

    # ---- API helpers (those of support.Stack, awaited) ----

    async def submit(self, type_: str = "add", payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        body = {"type": type_, "payload": payload if payload is not None else {"a": 1, "b": 2}, **fields}
        r = await self.client.post("/api/v1/tasks", json=body)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    async def get(self, task_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_status(self, task_id: str, statuses: str | set[str], timeout: float = 30.0) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses

        async def reached() -> dict[str, Any] | None:
            task = await self.get(task_id)
            return task if task["status"] in wanted else None

        return await wait_until(reached, timeout=timeout, what=f"task {task_id} to be {sorted(wanted)}")

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        r = await self.client.get(f"/api/v1/tasks/{task_id}/events")
        assert r.status_code == 200, r.text
        return list(r.json())

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def logs(self) -> str:
        return self.log.text()


@asynccontextmanager
async def worker_runtime(
    settings: Settings, *, register: bool = True, types: TaskRegistry = registry
) -> AsyncIterator[WorkerRuntime]:
    """A bare WorkerRuntime (no arq loop, no background duties): the test calls claim, execute, reap_lost,
    reconcile, check_cancels, heartbeat ... itself, one step at a time. With `register`, it has sent its first
    heartbeat and its completer (which writes successful outcomes) runs, as after a worker's start-up."""
    engine = create_engine(
        settings, pool_size=min(settings.db_pool_size, settings.worker_concurrency + 4), pre_ping=False
    )
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    runtime = WorkerRuntime(
        settings=settings, engine=engine, sessions=create_sessionmaker(engine), redis=redis, registry=types
    )
    completer: asyncio.Task[None] | None = None
    try:
        if register:
            await runtime.heartbeat()
            completer = asyncio.create_task(runtime.completer.run(transient=TRANSIENT))
        yield runtime
    finally:
        if completer is not None:
            completer.cancel()
            await asyncio.gather(completer, return_exceptions=True)
        await runtime.close_connections()
        await engine.dispose()
        await redis.aclose()


@asynccontextmanager
async def isolated_runtime(
    servers: Servers, *, types: TaskRegistry = registry, **settings: Any
) -> AsyncIterator[WorkerRuntime]:
    """`worker_runtime` (serving `types`) on a fresh database and Redis db index of its own, with these Settings
    fields; both are dropped afterwards."""
    name = servers.new_database()
    db = servers.take_redis_db()
    redis_url = servers.redis.url.rsplit("/", 1)[0] + f"/{db}"
    try:
        async with worker_runtime(
            Settings(database_url=servers.pg.url_for(name), redis_url=redis_url, **settings),  # type: ignore[arg-type]
            types=types,
        ) as runtime:
            try:
                yield runtime
            finally:
                await runtime.redis.flushdb()
    finally:
        servers.give_back_redis_db(db)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def submit_direct(rt: WorkerRuntime, type_: str, payload: dict[str, Any], **fields: Any) -> uuid.UUID:
    """One task created through the service layer (as the API would), on the runtime's database and Redis."""
    async with rt.sessions() as session:
        [(task, _)] = await service.create_tasks(
            session=session,
            redis=rt.redis,
            tasks_in=[TaskCreate(type=type_, payload=payload, **fields)],
            settings=rt.settings,
            registry=rt.registry,
        )
    return task.id


# ---- fixtures (registered by tests/conftest.py as a plugin) ----------------------------------------------------

InProcessFactory = Callable[..., AbstractAsyncContextManager[InProcess]]


@pytest.fixture
def inprocess_factory(servers: Servers) -> InProcessFactory:
    """An isolated in-process API + workers: `async with inprocess_factory(workers=1, env={...}) as api:`."""

    @asynccontextmanager
    async def factory(*, workers: int = 0, env: dict[str, str] | None = None) -> AsyncIterator[InProcess]:
        async with InProcess(servers, env).running() as stack:
            for _ in range(workers):
                await stack.start_worker()
            yield stack

    return factory


@pytest.fixture(scope="module")
async def inprocess(servers: Servers) -> AsyncIterator[InProcess]:
    """A shared in-process API with two workers, like the `stack` fixture, for a module's contract tests."""
    async with InProcess(servers).running() as stack:
        for _ in range(2):
            await stack.start_worker()
        yield stack
