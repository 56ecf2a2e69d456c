"""GET /api/v1/events against the real API process: live events, exact resume, filters, auth, shutdown."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg
import pytest

from taskproc import events
from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.events import BUFFER_MAX, Event, Subscription

from conftest import StackFactory
from inprocess import wait_until
from support import Stack


@dataclass
class Message:
    event: str
    data: Any
    id: str | None


@dataclass
class SSEReader:
    """Reads an event stream in a thread; the test takes parsed messages from a queue.

    http.client rather than httpx: closing must wake the blocked reader thread, which a socket shutdown does.
    """

    response: http.client.HTTPResponse
    sock: socket.socket
    messages: queue.Queue[Message | None] = field(default_factory=queue.Queue)
    raw: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    prologue: list[Message] = field(default_factory=list)  # the messages up to and including `ready`

    def run(self) -> None:
        data: list[str] = []
        event = ""
        last_id: str | None = None
        try:
            while raw_line := self.response.readline():
                line = raw_line.decode().rstrip("\r\n")
                self.raw.append(line)
                if line == "":
                    if data:
                        self.messages.put(Message(event or "message", json.loads("\n".join(data)), last_id))
                    data, event = [], ""
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "event":
                        event = value
                    elif name == "id":
                        last_id = value
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by the test, or by the server
        finally:
            self.ended.set()
            self.messages.put(None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def next(self, timeout: float = 15.0) -> Message:
        msg = self.messages.get(timeout=timeout)
        assert msg is not None, "stream ended"
        return msg

    def until(self, predicate: Any, timeout: float = 20.0) -> list[Message]:
        """Messages up to and including the first one matching `predicate`."""
        seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout}s; saw {seen}")
            try:
                msg = self.next(remaining)
            except queue.Empty:
                continue
            seen.append(msg)
            if predicate(msg):
                return seen

    def task_events(self, timeout: float) -> list[Message]:
        """The task messages that arrive within `timeout` seconds (the stream stays open)."""
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                break
            if msg is None:
                break
            if msg.event == "task":
                out.append(msg)
        return out


@contextmanager
def open_stream(
    url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None, ready: bool = True
) -> Iterator[SSEReader]:
    parsed = urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=60)
    path = "/api/v1/events" + (f"?{urlencode(params)}" if params else "")
    conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
    sock = conn.sock
    assert sock is not None
    response = conn.getresponse()
    try:
        assert response.status == 200, response.read()
        reader = SSEReader(response, sock)
        thread = threading.Thread(target=reader.run, daemon=True)
        thread.start()
        try:
            if ready:
                reader.prologue = reader.until(lambda m: m.event == "ready")
            yield reader
        finally:
            reader.close()
            thread.join(5)
            assert not thread.is_alive()
    finally:
        response.close()
        conn.close()
        sock.close()


def event_ids(stack: Stack, task_id: str) -> list[int]:
    return [r[0] for r in stack.sql("SELECT id FROM task_event WHERE task_id = %s ORDER BY id", (task_id,))]


def test_stream_follows_a_task_live(stack: Stack) -> None:
    with open_stream(stack.url) as reader:
        assert reader.response.getheader("content-type", "").startswith("text/event-stream")
        assert "no-cache" in reader.response.getheader("cache-control", "")
        assert reader.raw[0] == "retry: 2000"
        task = stack.submit("add", {"a": 20, "b": 22})
        seen = reader.until(lambda m: m.event == "task" and m.data["status"] == "completed")
    mine = [m for m in seen if m.event == "task" and m.data["task_id"] == task["id"]]
    assert [m.data["status"] for m in mine] == ["pending", "running", "completed"]
    ids = [int(m.id or 0) for m in mine]
    assert ids == sorted(ids) and ids == event_ids(stack, task["id"])
    assert [m.data["id"] for m in mine] == ids, "the SSE id is the task_event id"
    last = mine[-1].data
    assert last["type"] == "add" and last["priority"] == "normal" and last["attempt"] == 1
    assert last["task_status"] == "completed" and last["task_attempts"] == 1
    assert last["detail"].startswith("completed in") and last["at"].endswith("Z")


def test_without_last_event_id_only_new_events_come(stack: Stack) -> None:
    old = stack.submit("add")
    stack.wait_status(old["id"], "completed")
    with open_stream(stack.url) as reader:
        new = stack.submit("add")
        stack.wait_status(new["id"], "completed")
        got = reader.task_events(1.5)
    assert {m.data["task_id"] for m in got} == {new["id"]}


def test_last_event_id_resumes_exactly(stack: Stack) -> None:
    task = stack.submit("add", {"a": 1, "b": 1})
    stack.wait_status(task["id"], "completed")
    first, second, third = event_ids(stack, task["id"])

    def replay(**kwargs: Any) -> list[int]:
        with open_stream(stack.url, **kwargs) as reader:
            got = reader.prologue
        ready = got[-1]
        assert ready.id == str(ready.data["last_event_id"])
        return [int(m.id or 0) for m in got if m.event == "task"]

    assert replay(params={"task_id": task["id"], "last_event_id": 0}) == [first, second, third]
    assert replay(params={"task_id": task["id"]}, headers={"Last-Event-ID": str(first)}) == [second, third]
    assert replay(params={"task_id": task["id"], "last_event_id": second}) == [third]
    # The header wins over the query parameter: EventSource keeps its first URL and sends the header.
    assert replay(params={"task_id": task["id"], "last_event_id": 0}, headers={"Last-Event-ID": str(second)}) == [third]
    assert replay(params={"task_id": task["id"], "last_event_id": third}) == []


def test_task_id_filter(stack: Stack) -> None:
    a = stack.submit("add", {"a": 1, "b": 2})
    with open_stream(stack.url, params={"task_id": a["id"], "last_event_id": 0}) as reader:
        b = stack.submit("add", {"a": 3, "b": 4})
        c = stack.submit("add", {"a": 5, "b": 6})
        for t in (a, b, c):
            stack.wait_status(t["id"], "completed")
        got = [m for m in reader.prologue if m.event == "task"] + reader.task_events(1.5)
    assert {m.data["task_id"] for m in got} == {a["id"]}
    assert [m.data["status"] for m in got] == ["pending", "running", "completed"]


def test_bad_parameters_are_422(stack: Stack) -> None:
    for params in ({"last_event_id": "abc"}, {"last_event_id": "-1"}, {"task_id": "nope"}):
        r = stack.client.get("/api/v1/events", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == "application/json"


def test_events_committed_out_of_id_order_are_not_lost(stack: Stack) -> None:
    """A transaction that took its id first but commits last still reaches live subscribers."""
    done = stack.submit("add")
    stack.wait_status(done["id"], "completed")
    with open_stream(stack.url) as reader, psycopg.connect(stack.database_url) as slow:
        # This transaction takes an id now and commits only after newer events were streamed.
        slow.execute(
            "INSERT INTO task_event (task_id, at, status, attempt, detail) VALUES (%s, now(), 'completed', 1, 'late')",
            (done["id"],),
        )
        late_id = slow.execute("SELECT currval(pg_get_serial_sequence('task_event', 'id'))").fetchone()
        assert late_id is not None
        quick = stack.submit("add")
        stack.wait_status(quick["id"], "completed")
        seen = reader.until(
            lambda m: m.event == "task" and m.data["task_id"] == quick["id"] and m.data["status"] == "completed"
        )
        assert all(m.data["detail"] != "late" for m in seen)
        slow.commit()
        got = reader.until(lambda m: m.event == "task" and m.data["detail"] == "late", timeout=5)
    assert int(got[-1].id or 0) == late_id[0]
    assert int(got[-1].id or 0) < min(event_ids(stack, quick["id"]))


def test_many_subscribers_get_the_same_events(stack: Stack) -> None:
    with (
        open_stream(stack.url) as r1,
        open_stream(stack.url) as r2,
        open_stream(stack.url, params={"task_id": str(uuid.uuid4())}) as other,
    ):
        readers = [r1, r2]
        task = stack.submit("add")
        for r in readers:
            got = r.until(
                lambda m: m.event == "task" and m.data["task_id"] == task["id"] and m.data["status"] == "completed"
            )
            assert [m.data["status"] for m in got if m.event == "task" and m.data["task_id"] == task["id"]] == [
                "pending",
                "running",
                "completed",
            ]
        assert other.task_events(0.5) == []


def test_replay_is_bounded_and_says_reset(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        for _ in range(2):
            r = stack.client.post(
                "/api/v1/tasks/batch", json={"tasks": [{"type": "add", "payload": {"a": 1, "b": 1}}] * 600}
            )
            assert r.status_code == 201, r.text
        newest = stack.sql("SELECT max(id) FROM task_event")[0][0]
        assert newest >= 1200

        with open_stream(stack.url, params={"last_event_id": 0}) as reader:
            got = reader.prologue
        assert [m.event for m in got] == ["reset", "ready"]
        assert got[-1].data["last_event_id"] >= newest

        with open_stream(stack.url, headers={"Last-Event-ID": str(newest - 5)}) as reader:
            got = reader.prologue
        assert [int(m.id or 0) for m in got if m.event == "task"] == list(range(newest - 4, newest + 1))

        with open_stream(stack.url, headers={"Last-Event-ID": str(newest + 1000)}) as reader:
            got = reader.prologue
        assert [m.event for m in got] == ["reset", "ready"], "an id from the future (restored database) resets"


def test_events_need_the_key_when_keys_are_on(stack_factory: StackFactory) -> None:
    # No worker yet: the stack's readiness check reads /api/v1/stats without a key.
    with stack_factory(workers=0, env={"TASKPROC_API_KEYS": "sse-key"}) as stack:
        stack.start_worker()
        r = httpx.get(f"{stack.url}/api/v1/events", timeout=10)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.get(f"{stack.url}/api/v1/events", params={"api_key": "sse-key"}, timeout=10)
        assert r.status_code == 401, "keys never travel in URLs"
        auth = {"Authorization": "Bearer sse-key"}
        with open_stream(stack.url, headers=auth) as reader:
            task = httpx.post(
                f"{stack.url}/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}}, headers=auth
            ).json()
            got = reader.until(lambda m: m.event == "task" and m.data["status"] == "completed")
        assert got[-1].data["task_id"] == task["id"]


def test_open_streams_do_not_hold_up_api_shutdown(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack, open_stream(stack.url) as reader:
        assert stack.api is not None
        t0 = time.monotonic()
        stack.api.signal(signal.SIGTERM)
        assert stack.api.wait(timeout=15) in (0, -signal.SIGTERM)
        took = time.monotonic() - t0
        assert reader.ended.wait(5), "the stream was closed"
    assert took < 5, f"API took {took:.1f}s to stop with a stream open (uvicorn's graceful timeout is 10s)"
    assert "timeout graceful shutdown exceeded" not in stack.api.tail(200)


async def test_one_poller_started_by_the_first_subscriber_and_stopped_after_the_last(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No linger: a poller that lost count of its subscribers would stop at its next round.
    monkeypatch.setattr(events, "LINGER_S", 0.0)
    polls = 0
    events_after = events.store.events_after

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal polls
        polls += 1
        return await events_after(*args, **kwargs)

    monkeypatch.setattr(events.store, "events_after", counted)
    engine = create_engine(Settings(database_url=pg_url))  # type: ignore[arg-type]
    hub = events.EventHub(engine, create_sessionmaker(engine))
    try:
        assert not hub.running
        a = await hub.subscribe(None)
        b = await hub.subscribe(None)
        poller = hub._task
        assert hub.running and poller is not None
        hub.unsubscribe(a)
        # Three more rounds of the same poller after one of two subscribers left.
        after = polls
        await wait_until(lambda: _async(polls >= after + 3 or not hub.running), timeout=10, what="three polls")
        assert hub.running and hub._task is poller, "one poller serves every subscriber"
        hub.unsubscribe(b)
        await wait_until(lambda: _async(not hub.running), timeout=5, what="the poller to stop")
        assert not hub.running, "the poller stops by itself when nobody listens"
        await hub.subscribe(None)
        assert hub.running and hub._task is not poller, "and starts again with the next subscriber"
    finally:
        await hub.close()
        await engine.dispose()
    assert not hub.running


def test_slow_subscriber_is_dropped_not_waited_for() -> None:
    sub = Subscription(task_id=None, start=0)
    batch = [Event(id=i, task_id=uuid.uuid4(), frame="") for i in range(1, BUFFER_MAX // 2 + 1)]
    assert sub.push(batch)
    assert sub.push(batch)
    assert not sub.push(batch[:1]), "over the bound: dropped"
    assert sub.dropped and not sub.backlog


@pytest.mark.parametrize("header", ["", " 12 "])
def test_odd_last_event_id_headers(stack: Stack, header: str) -> None:
    # Not an id at all ("abc") is 422: test_events_last_event_id.py.
    with open_stream(stack.url, headers={"Last-Event-ID": header}) as reader:
        assert reader.raw[0] == "retry: 2000"


async def _async(value: bool) -> bool:
    """A condition already computed, as the awaitable `inprocess.wait_until` polls."""
    return value
