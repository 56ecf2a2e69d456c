"""The SDK (taskproc.client), sync and async, against the real API: in process (ASGITransport on create_app, on
the session's Postgres and Redis) for the request/answer paths, and a real `taskproc api` with workers for
streams, waiting and disconnects (ASGITransport buffers whole responses, so it cannot carry an endless stream)."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, redirect_stdout
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from taskproc.api.main import create_app
from taskproc.client import (
    APIConnectionError,
    AsyncTaskprocClient,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    Priority,
    Ready,
    StreamEvent,
    TaskChange,
    TaskCreate,
    TaskprocClient,
    TaskprocClientError,
    TaskPublic,
    TaskStatus,
    UnauthorizedError,
    UnavailableError,
    WaitTimeoutError,
)
from taskproc.config import Settings
from taskproc.dev.embedded import free_port
from taskproc.errors import TaskprocError

from conftest import StackFactory
from support import ROOT, Servers, Stack, wait_for

# ---- in process ---------------------------------------------------------------------------------------------


@dataclass
class Db:
    db_url: str
    redis_url: str

    def settings(self, **overrides: object) -> Settings:
        fields: dict[str, object] = {"database_url": self.db_url, "redis_url": self.redis_url, "api_maintenance": False}
        return Settings(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def db(servers: Servers) -> Iterator[Db]:
    name = servers.new_database()
    index = servers.take_redis_db()
    yield Db(servers.pg.url_for(name), servers.redis.url.rsplit("/", 1)[0] + f"/{index}")
    servers.give_back_redis_db(index)
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def in_process(settings: Settings, api_key: str | None = None) -> AsyncIterator[AsyncTaskprocClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncTaskprocClient("http://api", api_key=api_key, transport=transport) as client:
            yield client


@pytest.fixture
async def aclient(db: Db) -> AsyncIterator[AsyncTaskprocClient]:
    """The async client on an API in this process, with no worker: tasks stay where the test puts them."""
    async with in_process(db.settings()) as client:
        yield client


def test_importing_the_client_does_not_import_the_server() -> None:
    code = (
        "import sys, taskproc.client\n"
        "server = ('fastapi', 'starlette', 'uvicorn', 'arq', 'redis', 'psycopg', 'taskproc.api', 'taskproc.worker',"
        " 'taskproc.services', 'taskproc.store', 'taskproc.queue', 'taskproc.db')\n"
        "print(sorted(m for m in sys.modules if m.startswith(server)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


async def test_async_submit_get_history_and_idempotency(aclient: AsyncTaskprocClient) -> None:
    task = await aclient.submit("add", {"a": 1, "b": 2}, priority="high", max_retries=4, timeout_s=9, delay_s=60)
    assert isinstance(task, TaskPublic)
    assert task.type == "add" and task.payload == {"a": 1, "b": 2} and task.priority is Priority.high
    assert task.status is TaskStatus.pending and task.max_retries == 4 and task.timeout_s == 9
    got = await aclient.get(task.id)
    assert got.model_dump(exclude={"waiting"}) == task.model_dump(exclude={"waiting"})
    assert got.waiting is not None and got.waiting.reason == "no_worker", "no worker runs here"
    assert (await aclient.get(str(task.id))).id == task.id, "an id as text works too"
    assert [e.status for e in await aclient.history(task.id)] == [TaskStatus.pending]

    first = await aclient.submit("add", {"a": 1, "b": 1}, idempotency_key="sdk-key")
    again = await aclient.submit("add", {"a": 1, "b": 1}, idempotency_key="sdk-key")
    assert again.id == first.id and again.idempotency_key == "sdk-key"


async def test_async_submit_many(aclient: AsyncTaskprocClient) -> None:
    tasks = await aclient.submit_many(
        [
            TaskCreate(type="add", payload={"a": 1, "b": 1}),
            {"type": "sleep", "payload": {"duration_ms": 1}, "priority": "low"},
            TaskCreate(type="add", payload={"a": 2, "b": 2}, idempotency_key="batch-key"),
        ]
    )
    assert [(t.type, t.priority) for t in tasks] == [("add", "normal"), ("sleep", "low"), ("add", "normal")]
    again = await aclient.submit_many([TaskCreate(type="add", payload={"a": 2, "b": 2}, idempotency_key="batch-key")])
    assert [t.id for t in again] == [tasks[2].id], "a known key comes back as the existing task"

    with pytest.raises(InvalidInputError) as invalid:
        await aclient.submit_many([{"type": "add", "payload": {"a": 1, "b": 1}}, {"type": "add", "payload": {}}])
    assert invalid.value.status_code == 422
    assert any(item["loc"][:3] == ["body", "tasks", 1] for item in invalid.value.detail), invalid.value.detail
    assert "tasks.1" in str(invalid.value)
    assert len([t async for t in aclient.list()]) == 3, "nothing of the invalid batch was created"


async def test_async_list_pages_and_filters(aclient: AsyncTaskprocClient) -> None:
    ids = [(await aclient.submit("add", {"a": i, "b": 0}, priority="high")).id for i in range(5)]
    ids += [(await aclient.submit("sleep", {"duration_ms": 1})).id for _ in range(2)]
    newest_first = ids[::-1]

    page = await aclient.page(limit=3)
    assert [t.id for t in page.items] == newest_first[:3] and page.next_cursor
    page2 = await aclient.page(limit=3, cursor=page.next_cursor)
    assert [t.id for t in page2.items] == newest_first[3:6]

    # Three pages of two, then one of one: the iterator follows the cursor to the end.
    assert [t.id async for t in aclient.list(page_size=2)] == newest_first
    assert [t.id async for t in aclient.list(type="sleep", page_size=1)] == newest_first[:2]
    assert [t.id async for t in aclient.list(priority=Priority.high, page_size=2)] == newest_first[2:]
    await aclient.cancel(ids[0])
    assert [t.id async for t in aclient.list(status="canceled")] == [ids[0]]
    assert [t.id async for t in aclient.list(status=TaskStatus.pending, type="add", priority="high")] == (
        newest_first[2:6]
    )


async def test_async_cancel_retry_priority_delete_and_their_errors(aclient: AsyncTaskprocClient) -> None:
    task = await aclient.submit("add", {"a": 1, "b": 1}, delay_s=600)
    assert (await aclient.set_priority(task.id, "low")).priority is Priority.low
    canceled = await aclient.cancel(task.id)
    assert canceled.status is TaskStatus.canceled

    with pytest.raises(ConflictError) as conflict:
        await aclient.cancel(task.id)
    assert conflict.value.status_code == 409 and "already canceled" in str(conflict.value.detail)
    assert str(conflict.value).startswith("409 Conflict: ")
    with pytest.raises(ConflictError):
        await aclient.set_priority(task.id, "high")

    retried = await aclient.retry(task.id)
    assert retried.status is TaskStatus.pending and retried.attempts == 0
    with pytest.raises(ConflictError):
        await aclient.delete(task.id)
    with pytest.raises(ConflictError):
        await aclient.retry(task.id)
    await aclient.cancel(task.id)
    assert await aclient.delete(task.id) is None

    with pytest.raises(NotFoundError) as missing:
        await aclient.get(task.id)
    assert missing.value.status_code == 404 and isinstance(missing.value.detail, str)
    for call in (aclient.cancel, aclient.retry, aclient.delete, aclient.history):
        with pytest.raises(NotFoundError):
            await call(task.id)


async def test_async_errors_are_one_family_with_the_servers_detail(aclient: AsyncTaskprocClient) -> None:
    with pytest.raises(InvalidInputError) as invalid:
        await aclient.submit("add", {"a": 1})
    err = invalid.value
    assert isinstance(err, TaskprocClientError) and isinstance(err, TaskprocError)
    assert err.status_code == 422 and err.detail[0]["loc"] == ["body", "payload", "b"]
    assert "payload.b: Field required" in str(err)
    with pytest.raises(InvalidInputError) as unknown:
        await aclient.submit("nope")
    assert "unknown task type" in str(unknown.value)
    with pytest.raises(InvalidInputError):
        await aclient.submit("add", {"a": 1, "b": 1}, max_retries=99)
    with pytest.raises(ValueError, match="UUID"):
        await aclient.get("not-a-uuid")


async def test_async_stats_and_types(aclient: AsyncTaskprocClient) -> None:
    await aclient.submit("add", {"a": 1, "b": 1}, priority="low")
    stats = await aclient.stats()
    assert stats.tasks.pending == 1 and stats.tasks.total == 1 and stats.queue.low == 1 and stats.workers == 0
    types = {t.name: t for t in await aclient.types()}
    assert {"add", "sleep", "sum_pairs", "text_stats"} <= set(types)
    assert types["add"].payload_schema["required"] == ["a", "b"]


async def test_async_api_key(db: Db) -> None:
    settings = db.settings(api_keys="sdk-key")
    async with in_process(settings) as anonymous:
        with pytest.raises(UnauthorizedError) as missing:
            await anonymous.stats()
        assert missing.value.status_code == 401 and "bearer" in str(missing.value.detail).lower()
    async with in_process(settings, api_key="wrong") as wrong:
        with pytest.raises(UnauthorizedError, match="invalid API key"):
            await wrong.submit("add", {"a": 1, "b": 1})
    async with in_process(settings, api_key="sdk-key") as keyed:
        assert (await keyed.stats()).tasks.total == 0


class CountingAsync(httpx.AsyncBaseTransport):
    """Passes requests on, noting each one: how many attempts a call made."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return await self.inner.handle_async_request(request)


async def test_async_503_is_retried_for_calls_safe_to_repeat_only(db: Db) -> None:
    # A real 503: the API in this process, with its database on a port where nothing listens.
    settings = db.settings(database_url=f"postgresql+psycopg://taskproc@127.0.0.1:{free_port()}/nowhere")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = CountingAsync(httpx.ASGITransport(app=app))
        async with AsyncTaskprocClient("http://api", transport=transport, retries=1) as client:
            started = time.monotonic()
            with pytest.raises(UnavailableError) as unavailable:
                await client.stats()
            assert transport.sent == ["GET /api/v1/stats"] * 2
            assert time.monotonic() - started >= 2, "the retry waited for Retry-After"
            assert unavailable.value.status_code == 503 and "database unavailable" in str(unavailable.value)

            one = {"a": 1, "b": 1}
            not_safe = [
                client.submit("add", {"a": 1, "b": 1}),
                client.cancel(uuid.uuid4()),
                client.retry(uuid.uuid4()),
                client.delete(uuid.uuid4()),
                client.submit_many(
                    [{"type": "add", "payload": one}, {"type": "add", "payload": one, "idempotency_key": "k"}]
                ),
            ]
            for call in not_safe:
                transport.sent.clear()
                with pytest.raises(UnavailableError):
                    await call
                assert len(transport.sent) == 1, transport.sent

            transport.sent.clear()
            with pytest.raises(UnavailableError):
                await client.submit("add", {"a": 1, "b": 1}, idempotency_key="safe")
            assert transport.sent == ["POST /api/v1/tasks"] * 2, "with a key, a submit is safe to repeat"


class CountingSync(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_sync_connection_refused_is_retried_even_for_cancel() -> None:
    transport = CountingSync()
    with (
        TaskprocClient(f"http://127.0.0.1:{free_port()}", retries=2, transport=transport) as client,
        pytest.raises(APIConnectionError, match="cannot reach the API"),
    ):
        client.cancel(uuid.uuid4())
    assert transport.sent == 3, "refused: nothing was sent, so even a cancel is safe to repeat"


# ---- against a running API and workers ----------------------------------------------------------------------


@pytest.fixture
def client(stack: Stack) -> Iterator[TaskprocClient]:
    with TaskprocClient(stack.url) as c:
        yield c


def test_sync_every_call(client: TaskprocClient, stack: Stack) -> None:
    task = client.submit("add", {"a": 2, "b": 40}, priority=Priority.high)
    done = client.wait(task.id, timeout=30)
    assert done.status is TaskStatus.completed and done.result == {"sum": 42} and done.priority is Priority.high
    assert client.get(task.id) == done
    assert [e.status for e in client.history(task.id)] == ["pending", "running", "completed"]

    key = f"sdk-{uuid.uuid4()}"
    assert client.submit("add", {"a": 1, "b": 1}, idempotency_key=key).id == (
        client.submit("add", {"a": 1, "b": 1}, idempotency_key=key).id
    )
    batch = client.submit_many([TaskCreate(type="add", payload={"a": i, "b": i}) for i in range(3)])
    assert [client.wait(t.id, timeout=30).result for t in batch] == [{"sum": 0}, {"sum": 2}, {"sum": 4}]

    slow = client.submit("sleep", {"duration_ms": 30000})
    wait_for(lambda: client.get(slow.id).status == "running", what="the slow task to run")
    assert client.cancel(slow.id).status == "running", "a running task is stopped by its worker"
    assert client.wait(slow.id, timeout=10).status is TaskStatus.canceled
    with pytest.raises(ConflictError):
        client.cancel(slow.id)
    retried = client.retry(slow.id)
    assert retried.status is TaskStatus.pending and retried.attempts == 0
    client.cancel(slow.id)
    client.wait(slow.id, timeout=10)
    client.delete(slow.id)
    with pytest.raises(NotFoundError):
        client.get(slow.id)

    stats = client.stats()
    assert stats.workers == 2 and stats.tasks.completed >= 4
    assert "add" in {t.name for t in client.types()}
    with pytest.raises(InvalidInputError, match=r"payload\.b: Field required"):
        client.submit("add", {"a": 1})


def test_sync_list_follows_the_cursor(client: TaskprocClient) -> None:
    # text_stats at low priority: only this test submits those, on the shared stack.
    ids = [client.submit("text_stats", {"text": f"t{i}"}, priority="low", delay_s=600).id for i in range(5)]
    listed = list(client.list(type="text_stats", priority="low", page_size=2))
    assert [t.id for t in listed] == ids[::-1]
    page = client.page(type="text_stats", priority="low", limit=2)
    assert len(page.items) == 2 and page.next_cursor
    for task_id in ids:
        client.cancel(task_id)
    assert [t.id for t in client.list(type="text_stats", status="canceled", page_size=3)] == ids[::-1]


def test_sync_errors_401_and_unreachable(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0, env={"TASKPROC_API_KEYS": "sdk-key"}) as stack:
        with TaskprocClient(stack.url) as anonymous, pytest.raises(UnauthorizedError) as missing:
            anonymous.stats()
        assert missing.value.status_code == 401
        with TaskprocClient(stack.url, api_key="wrong") as wrong, pytest.raises(UnauthorizedError):
            wrong.get(uuid.uuid4())
        with TaskprocClient(stack.url, api_key="sdk-key") as keyed:
            assert keyed.stats().workers == 0
            with pytest.raises(NotFoundError):
                keyed.get(uuid.uuid4())
        with TaskprocClient(stack.url) as anonymous, pytest.raises(UnauthorizedError):
            next(anonymous.events(reconnect=False))  # the stream checks the key before it starts
    with (
        TaskprocClient(f"http://127.0.0.1:{free_port()}", retries=1) as nowhere,
        pytest.raises(APIConnectionError, match="cannot reach the API"),
    ):
        nowhere.stats()


def test_sync_wait_timeout(client: TaskprocClient) -> None:
    task = client.submit("sleep", {"duration_ms": 20000})
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as timed_out:
        client.wait(task.id, timeout=1)
    assert 1 <= time.monotonic() - started < 10
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.task.id == task.id
    assert timed_out.value.task.status in ("pending", "running")
    client.cancel(task.id)


class NoStream(httpx.BaseTransport):
    """A proxy that does not pass event streams: /api/v1/events is 404, everything else goes through."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/events":
            self.refused += 1
            return httpx.Response(404, json={"detail": "Not Found"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_sync_wait_polls_when_there_is_no_stream(stack: Stack) -> None:
    transport = NoStream()
    seen: list[str] = []
    with TaskprocClient(stack.url, transport=transport) as client:
        task = client.submit("sleep", {"duration_ms": 1500})
        done = client.wait(task.id, timeout=30, on_update=lambda t: seen.append(t.status), poll_interval=0.2)
    assert done.status is TaskStatus.completed
    assert transport.refused == 1, "asked for the stream once, then polled"
    assert seen[-1] == "completed" and len(seen) >= 3


def test_sync_events_replay_and_live(client: TaskprocClient, stack: Stack) -> None:
    since = stack.sql("SELECT coalesce(max(id), 0) FROM task_event")[0][0]
    task = client.submit("add", {"a": 1, "b": 1})
    client.wait(task.id, timeout=30)
    mine: list[TaskChange] = []
    ready: list[Ready] = []
    events = client.events(last_event_id=since)
    for event in events:
        if isinstance(event, Ready):
            ready.append(event)
            continue
        assert isinstance(event, TaskChange)
        assert event.id > since
        if event.task_id == task.id:
            mine.append(event)
            if event.status == "completed":
                break
    events.close()
    assert [e.status for e in mine] == ["pending", "running", "completed"]
    assert not ready, "the replay comes before `ready`"
    assert mine[-1].task_status == "completed" and mine[-1].type == "add"

    # One task's changes only, from a position taken before it was submitted: none can be missed.
    since = stack.sql("SELECT coalesce(max(id), 0) FROM task_event")[0][0]
    client.submit("add", {"a": 6, "b": 6})  # another task, whose events are left out
    other = client.submit("add", {"a": 5, "b": 5})
    statuses = []
    only = client.events(task_id=other.id, last_event_id=since)
    for event in only:
        if isinstance(event, Ready):
            continue
        assert isinstance(event, TaskChange) and event.task_id == other.id
        statuses.append(event.status)
        if event.status == "completed":
            break
    only.close()
    assert statuses == ["pending", "running", "completed"]


class _StreamReaders:
    """A sync and an async client, each in a thread, reading every event from the start until `stop` is set."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: dict[str, list[StreamEvent]] = {"sync": [], "async": []}
        self.failed: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(self._consume_sync,), daemon=True),
            threading.Thread(target=self._run, args=(lambda: asyncio.run(self._consume_async()),), daemon=True),
        ]

    def _consume_sync(self) -> None:
        with TaskprocClient(self.url) as mine:
            for event in mine.events(last_event_id=0):
                self.received["sync"].append(event)
                if self.stop.is_set():
                    return

    async def _consume_async(self) -> None:
        async with AsyncTaskprocClient(self.url) as mine, aclosing(mine.events(last_event_id=0)) as events:
            async for event in events:
                self.received["async"].append(event)
                if self.stop.is_set():
                    return

    def _run(self, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # the test reports it
            self.failed.append(exc)

    def start(self) -> None:
        for reader in self.threads:
            reader.start()

    def changes(self, kind: str, task_id: uuid.UUID) -> list[str]:
        """The statuses one reader has seen the task enter, in order (and no reader has failed)."""
        assert not self.failed, self.failed
        return [e.status for e in self.received[kind] if isinstance(e, TaskChange) and e.task_id == task_id]

    def join(self) -> None:
        for reader in self.threads:
            reader.join(timeout=30)
            assert not reader.is_alive()


def test_events_resume_after_the_api_restarts_sync_and_async(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack, TaskprocClient(stack.url) as client:
        readers = _StreamReaders(stack.url)
        task = client.submit("sleep", {"duration_ms": 2500})
        readers.start()

        for kind in readers.received:
            wait_for(
                lambda: readers.changes(kind, task.id) == ["pending", "running"],  # noqa: B023
                what=f"pending and running ({kind})",
            )
        assert stack.api is not None
        stack.api.stop()
        # The task completes while no API runs: its event is in the database only.
        wait_for(lambda: stack.sql("SELECT status FROM task WHERE id = %s", (task.id,)) == [("completed",)])
        stack.start_api()
        stack.wait_ready()
        for kind in readers.received:
            wait_for(
                lambda: readers.changes(kind, task.id) == ["pending", "running", "completed"],  # noqa: B023
                what=f"the missed event after resuming ({kind})",
            )
            ids = [e.id for e in readers.received[kind] if isinstance(e, TaskChange)]
            assert ids == sorted(set(ids)), f"nothing twice, in order ({kind})"
        readers.stop.set()
        client.submit("add", {"a": 1, "b": 1})  # one more event, so the readers see `stop`
        readers.join()
        assert not readers.failed, readers.failed


async def test_async_wait_and_events(stack: Stack) -> None:
    async with AsyncTaskprocClient(stack.url) as client:
        since = stack.sql("SELECT coalesce(max(id), 0) FROM task_event")[0][0]
        task = await client.submit("add", {"a": 20, "b": 22})
        seen: list[str] = []
        done = await client.wait(task.id, timeout=30, on_update=lambda t: seen.append(t.status))
        assert done.status is TaskStatus.completed and done.result == {"sum": 42} and seen[-1] == "completed"

        mine = []
        async with aclosing(client.events(last_event_id=since)) as events:
            async for event in events:
                if isinstance(event, TaskChange) and event.task_id == task.id:
                    mine.append(event.status)
                    if event.status == "completed":
                        break
        assert mine == ["pending", "running", "completed"]

        slow = await client.submit("sleep", {"duration_ms": 20000})
        with pytest.raises(WaitTimeoutError):
            await client.wait(slow.id, timeout=1)
        await client.cancel(slow.id)
        assert (await client.wait(slow.id, timeout=10)).status is TaskStatus.canceled


# ---- docs/client.md ------------------------------------------------------------------------------------------


def test_docs_examples_run_as_printed(stack: Stack) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "client.md").read_text(), re.S)
    assert len(blocks) >= 8
    printed = io.StringIO()
    for number, block in enumerate(blocks, 1):
        code = compile(block.replace("http://127.0.0.1:8000", stack.url), f"docs/client.md block {number}", "exec")
        with redirect_stdout(printed):
            exec(code, {"__name__": f"docs_client_{number}"})
    out = printed.getvalue()
    # What the comments next to the prints say.
    for expected in (
        "pending\ncompleted {'sum': 3}\n",
        "True\n['add', 'sleep']\n",
        "{'sum': 7}\n['pending', 'running', 'completed']\n",
        "high\ncanceled\n409 task ",
        "\npending\ncompleted\n",
        "pending\nrunning\ncompleted\n['pending', 'running', 'completed']\n",
        "[0, 2, 4]\nTrue\nreplayed up to completed\n",
        "[['body', 'payload', 'b']]\n404\n",
        "2 True\n",
        "queue_paused\n[True]\ncompleted\ntenant-42 2 10 60.0\ntenant-42 delayed\nTrue\n",
    ):
        assert expected in out, (expected, out)
    assert "already canceled" in out


async def test_async_queues_submit_list_pause_and_resume(aclient: AsyncTaskprocClient) -> None:
    task = await aclient.submit("add", {"a": 1, "b": 2}, queue="sdk")
    await aclient.submit("add", {"a": 1, "b": 2})
    assert task.queue == "sdk"
    assert [t.id async for t in aclient.list(queue="sdk")] == [task.id]
    assert [t.id for t in (await aclient.page(queue="sdk")).items] == [task.id]
    paused = await aclient.pause_queue("sdk")
    assert paused.name == "sdk" and paused.paused and paused.ready == 1
    queues = {q.name: q for q in await aclient.queues()}
    assert queues["sdk"].paused and not queues["default"].paused
    assert (await aclient.get(task.id)).waiting is not None
    resumed = await aclient.resume_queue("sdk")
    assert not resumed.paused and resumed.paused_at is None
    with pytest.raises(ValueError, match="not a queue name"):
        await aclient.pause_queue("../tasks")
    with pytest.raises(InvalidInputError):
        await aclient.submit("add", {"a": 1, "b": 2}, queue="Not A Queue")
