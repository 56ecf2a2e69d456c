"""Webhooks end to end: a real HTTP receiver in the test verifies every delivery's Standard Webhooks signature
and records it; the API delivers from its outbox in Postgres while real workers run the tasks. A receiver that
fails and then recovers gets the delivery on a later attempt, a redelivery repeats it, a task's callback_url
gets its own, the filter and the SSRF guard keep deliveries away, and an API restart between the event and the
delivery loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from taskproc import testhooks, webhooks
from taskproc.client import TaskprocClient
from taskproc.db import create_engine, create_sessionmaker

from conftest import StackFactory
from inprocess import InProcess, InProcessFactory, wait_until
from support import TASKPROC, wait_for

# Short retries, the receiver on 127.0.0.1 allowed, a fast tick: tests wait for seconds, not minutes.
FAST = {
    "TASKPROC_WEBHOOK_ALLOW_PRIVATE": "true",
    "TASKPROC_WEBHOOK_RETRY_BASE_S": "0.1",
    "TASKPROC_WEBHOOK_RETRY_MAX_S": "0.3",
    "TASKPROC_WEBHOOK_TICK_S": "0.1",
}
CALLBACK_SECRET = "whsec_" + "Y2FsbGJhY2stc2VjcmV0LW9mLXRoZS10ZXN0cy0xMjM="


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    verified: bool | None  # None: the path has no secret to check against


@dataclass
class Receiver:
    """A real HTTP server: checks each request's signature against the secret of its path, answers 500 to the
    first `fail[path]` requests of a path, then 200."""

    server: ThreadingHTTPServer
    secrets: dict[str, str] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> int:
        secret = self.secrets.get(path)
        verified: bool | None = None
        if secret is not None:
            try:
                Webhook(secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        with self.lock:
            self.received.append(Received(path, headers, json.loads(raw), verified))
            failing = self.fail.get(path, 0)
            if failing > 0:
                self.fail[path] = failing - 1
                return 500
        return 200 if verified is not False else 400


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            code = holder[0].handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


async def create_webhook(api: InProcess, receiver: Receiver, path: str, **body: Any) -> dict[str, Any]:
    r = await api.client.post("/api/v1/webhooks", json={"url": receiver.base + path, **body})
    assert r.status_code == 201, r.text
    hook = dict(r.json())
    assert hook["secret"].startswith("whsec_")
    receiver.secrets[path] = hook["secret"]
    return hook


async def deliveries(api: InProcess, hook_id: str) -> list[dict[str, Any]]:
    r = await api.client.get(f"/api/v1/webhooks/{hook_id}/deliveries")
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_signed_deliveries_of_completed_and_failed_tasks_with_their_records(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    async with inprocess_factory(workers=1, env=FAST) as api:
        hook = await create_webhook(api, receiver, "/hook", events=["task.completed", "task.failed"])
        listed = (await api.client.get("/api/v1/webhooks")).json()
        assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0], "the secret is shown once"
        assert (await api.client.get(f"/api/v1/webhooks/{hook['id']}")).json()["events"] == hook["events"]
        ok = await api.submit("add", {"a": 2, "b": 3})
        bad = await api.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=0)
        await wait_until(lambda: _async(len(receiver.on("/hook")) >= 2), what="two deliveries")
        got = {r.body["data"]["id"]: r for r in receiver.on("/hook")}
        assert set(got) == {ok["id"], bad["id"]}
        assert all(r.verified for r in got.values()), "every signature verifies with the webhook's secret"
        assert got[ok["id"]].body["type"] == "task.completed" and got[ok["id"]].body["data"]["result"] == {"sum": 5}
        assert got[bad["id"]].body["type"] == "task.failed" and got[bad["id"]].body["data"]["status"] == "failed"
        headers = got[ok["id"]].headers
        assert headers["content-type"] == "application/json" and int(headers["webhook-timestamp"]) > 0
        assert headers["webhook-signature"].startswith("v1,")
        records = await wait_until(
            lambda: _all_delivered(api, hook["id"], 2), what="both deliveries recorded as delivered"
        )
        by_id = {r["id"]: r for r in records}
        record = by_id[headers["webhook-id"]]
        assert record["task_id"] == ok["id"] and record["event"] == "task.completed" and record["attempts"] == 1
        assert record["last_status_code"] == 200 and record["last_latency_ms"] > 0
        assert record["next_attempt_at"] is None and record["attempt_log"][0]["status_code"] == 200
        assert len(receiver.on("/hook")) == 2, "pending, running and retrying were not subscribed to"


async def _async(value: Any) -> Any:
    return value


async def _all_delivered(api: InProcess, hook_id: str, n: int) -> list[dict[str, Any]] | None:
    rows = await deliveries(api, hook_id)
    return rows if len(rows) == n and all(r["status"] == "delivered" for r in rows) else None


async def test_a_failing_receiver_that_recovers_gets_the_delivery_and_a_redelivery_repeats_it(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    async with inprocess_factory(workers=1, env=FAST) as api:
        hook = await create_webhook(api, receiver, "/flaky", events=["task.completed"])
        receiver.fail["/flaky"] = 3
        task = await api.submit("add", {"a": 1, "b": 1})
        [record] = await wait_until(lambda: _all_delivered(api, hook["id"], 1), what="the delivery after 3 failures")
        assert record["attempts"] == 4 and [a["status_code"] for a in record["attempt_log"]] == [500, 500, 500, 200]
        assert [a["error"] for a in record["attempt_log"][:3]] == ["HTTP 500"] * 3
        sent = receiver.on("/flaky")
        assert len(sent) == 4 and all(r.verified for r in sent) and {r.body["data"]["id"] for r in sent} == {task["id"]}
        assert len({r.headers["webhook-id"] for r in sent}) == 1, "the same webhook-id on every attempt"
        r = await api.client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{record['id']}/redeliver")
        assert r.status_code == 202, r.text
        await wait_until(lambda: _async(len(receiver.on("/flaky")) == 5), what="the redelivery")
        again = receiver.on("/flaky")[-1]
        assert again.verified and again.headers["webhook-id"] == record["id"] and again.body == sent[-1].body
        [record] = await wait_until(lambda: _all_delivered(api, hook["id"], 1), what="the redelivery recorded")
        assert record["attempts"] == 5
        missing = await api.client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver")
        assert missing.status_code == 404


async def test_a_receiver_that_never_recovers_fails_the_delivery_once_it_expires(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    async with inprocess_factory(workers=1, env={**FAST, "TASKPROC_WEBHOOK_MAX_AGE_S": "1.5"}) as api:
        hook = await create_webhook(api, receiver, "/down", events=["task.completed"])
        receiver.fail["/down"] = 10_000
        await api.submit("add", {"a": 1, "b": 1})

        async def failed() -> dict[str, Any] | None:
            rows = await deliveries(api, hook["id"])
            return rows[0] if rows and rows[0]["status"] == "failed" else None

        record = await wait_until(failed, what="the delivery to expire")
        assert record["attempts"] >= 2 and record["attempts"] == len(receiver.on("/down"))
        assert record["last_status_code"] == 500 and record["next_attempt_at"] is None


async def test_a_filter_keeps_other_tasks_out_and_a_callback_url_gets_its_task_signed(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    env = {**FAST, "TASKPROC_WEBHOOK_CALLBACK_SECRET": CALLBACK_SECRET}
    async with inprocess_factory(workers=1, env=env) as api:
        hook = await create_webhook(
            api, receiver, "/sleeps", events=["task.completed"], filter={"type": ["sleep"], "queue": ["default"]}
        )
        receiver.secrets["/cb"] = CALLBACK_SECRET
        other = await api.submit("add", {"a": 1, "b": 1}, callback_url=receiver.base + "/cb")
        assert other["callback_url"] == receiver.base + "/cb"
        await api.wait_status(other["id"], "completed")
        wanted = await api.submit("sleep", {"duration_ms": 0})
        await wait_until(lambda: _async(receiver.on("/sleeps")), what="the sleep task's delivery")
        await wait_until(lambda: _async(receiver.on("/cb")), what="the callback")
        assert [r.body["data"]["id"] for r in receiver.on("/sleeps")] == [wanted["id"]], "the add task is filtered out"
        [callback] = receiver.on("/cb")
        assert callback.verified and callback.body["type"] == "task.completed"
        assert callback.body["data"]["id"] == other["id"]
        r = await api.client.get("/api/v1/webhook-deliveries", params={"task_id": other["id"]})
        [record] = r.json()
        assert record["webhook_id"] is None and record["url"] == receiver.base + "/cb"
        r = await api.client.post(f"/api/v1/webhook-deliveries/{record['id']}/redeliver")
        assert r.status_code == 202, r.text
        await wait_until(lambda: _async(len(receiver.on("/cb")) == 2), what="the callback's redelivery")
        assert (await api.client.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
        assert (await api.client.get(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
        assert (await api.client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).status_code == 404


async def test_private_loopback_and_link_local_targets_are_refused_without_the_allowance(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_WEBHOOK_TICK_S": "0.1"}) as api:
        for url in (
            receiver.base + "/x",
            "http://localhost/x",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "ftp://example.com/x",
        ):
            r = await api.client.post("/api/v1/webhooks", json={"url": url, "events": ["task.completed"]})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["detail"][0]["loc"][-1] == "url"
        r = await api.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}, "callback_url": "http://127.0.0.1:1/"}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "callback_url", r.text
        r = await api.client.post(
            "/api/v1/tasks/batch",
            json={"tasks": [{"type": "add", "payload": {"a": 1, "b": 1}, "callback_url": "http://10.0.0.1/"}]},
        )
        assert r.status_code == 422, r.text
        # A target that became private after it was accepted (DNS changes): refused again at delivery time.
        api.sql(
            "INSERT INTO webhook (id, url, events, secret, created_at) "
            "VALUES (gen_random_uuid(), %s, '[\"task.completed\"]', 'whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz', now())",
            (receiver.base + "/sneaky",),
        )
        await api.submit("add", {"a": 1, "b": 1})
        rows = await wait_until(
            lambda: _async(api.sql("SELECT last_error FROM webhook_delivery WHERE attempts > 0")), what="an attempt"
        )
        assert rows[0][0].startswith("refused: ") and "127.0.0.1" in rows[0][0]
        assert receiver.on("/sneaky") == []


async def test_a_dispatcher_that_holds_the_lock_keeps_the_other_out_until_its_deliveries_are_committed(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    async with inprocess_factory(workers=1, env={**FAST, "TASKPROC_WEBHOOKS": "false"}) as api:
        hook = await create_webhook(api, receiver, "/lock", events=["task.completed"])
        task = await api.submit("add", {"a": 1, "b": 1})
        await api.wait_status(task["id"], "completed")
        engines = [create_engine(api.settings, pool_size=1, max_overflow=0) for _ in range(2)]
        first, second = (webhooks.Webhooks(settings=api.settings, sessions=create_sessionmaker(e)) for e in engines)
        meanwhile: list[tuple[int, int, bool]] = []

        async def rival() -> None:
            if not meanwhile:
                meanwhile.append(await second.dispatch())

        try:
            with testhooks.installed("webhooks.dispatch_before_insert", rival):
                read, made, busy = await first.dispatch()
            assert meanwhile == [(0, 0, True)], "the lock was held: the second dispatcher read nothing"
            assert (read, made, busy) == (3, 1, False), "pending, running, completed events: one delivery"
            assert await second.dispatch() == (0, 0, False), "after the commit the cursor is past every event"
        finally:
            for engine in engines:
                await engine.dispose()
        assert api.sql("SELECT webhook_id::text, task_id::text FROM webhook_delivery") == [(hook["id"], task["id"])]


async def test_two_dispatchers_on_one_database_make_each_delivery_once(
    inprocess_factory: InProcessFactory, receiver: Receiver
) -> None:
    """The API's own loops and a second process's dispatcher and sender, stepped as fast as they go: the advisory
    lock lets one dispatcher at a time move the cursor, the leases let both send, and no event is delivered twice."""
    async with inprocess_factory(workers=1, env=FAST) as api:
        hook = await create_webhook(api, receiver, "/twice", events=["task.completed"])
        engine = create_engine(api.settings, pool_size=2, max_overflow=0)
        other = webhooks.Webhooks(settings=api.settings, sessions=create_sessionmaker(engine))
        stop = asyncio.Event()

        async def rival() -> None:
            async with other.client():
                while not stop.is_set():
                    await other.tick()
                    await other.send_due()

        running = asyncio.create_task(rival())
        try:
            tasks = [await api.submit("add", {"a": i, "b": 0}) for i in range(30)]
            await wait_until(lambda: _all_delivered(api, hook["id"], 30), timeout=60, what="30 deliveries")
        finally:
            stop.set()
            await running
            await engine.dispose()
        sent = receiver.on("/twice")
        assert sorted(r.body["data"]["id"] for r in sent) == sorted(t["id"] for t in tasks), "each task once"
        assert all(r.verified for r in sent)
        assert api.sql("SELECT count(*), count(DISTINCT task_id) FROM webhook_delivery") == [(30, 30)]


def test_an_api_restart_between_the_event_and_the_delivery_loses_nothing(
    stack_factory: StackFactory, receiver: Receiver
) -> None:
    with stack_factory(workers=1, env=FAST) as stack:
        r = stack.client.post("/api/v1/webhooks", json={"url": receiver.base + "/r", "events": ["task.completed"]})
        assert r.status_code == 201, r.text
        receiver.secrets["/r"] = r.json()["secret"]
        task = stack.submit("add", {"a": 4, "b": 5}, delay_s=2.0)
        assert stack.api is not None
        stack.api.stop()  # no API process runs when the task completes
        wait_for(
            lambda: stack.sql("SELECT status FROM task WHERE id = %s", (task["id"],)) == [("completed",)],
            timeout=60,
            what="the task to complete while the API is down",
        )
        assert receiver.on("/r") == []
        stack.start_api()
        stack.wait_ready()
        wait_for(lambda: receiver.on("/r"), timeout=60, what="the delivery after the restart")
        wait_for(
            lambda: stack.sql("SELECT status FROM webhook_delivery") == [("delivered",)],
            what="the delivery recorded",
        )
        [got] = receiver.on("/r")
        assert got.verified and got.body["data"]["id"] == task["id"] and got.body["data"]["result"] == {"sum": 9}
        # The SDK and the CLI on the same API.
        with TaskprocClient(stack.url) as client:
            [hook] = client.list_webhooks()
            assert client.get_webhook(hook.id) == hook
            [record] = client.list_webhook_deliveries(hook.id, limit=5)
            assert record.status == "delivered" and record.attempts == 1 and record.last_status_code == 200
            again = client.redeliver_webhook_delivery(record.id, webhook_id=hook.id)
            assert again.status == "pending"
            wait_for(lambda: len(receiver.on("/r")) == 2, what="the SDK's redelivery")
            called = client.submit("add", {"a": 1, "b": 1}, callback_url=receiver.base + "/sdk")
            wait_for(lambda: receiver.on("/sdk"), what="the SDK-submitted task's callback")
            mine = client.list_task_deliveries(called.id)
            assert sorted(str(d.webhook_id) for d in mine) == sorted([str(hook.id), "None"]), "the webhook's too"
        env = {**os.environ, "TASKPROC_API_URL": stack.url}

        def cli(*args: str) -> Any:
            done = subprocess.run(
                [TASKPROC, "webhooks", *args, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr + done.stdout
            return json.loads(done.stdout)

        created = cli("create", receiver.base + "/cli", "--event", "task.failed", "--type", "sleep")
        assert created["secret"].startswith("whsec_") and created["filter"] == {"type": ["sleep"], "queue": None}
        assert {h["id"] for h in cli("list")} == {str(hook.id), created["id"]}
        [row] = [d for d in cli("deliveries", str(hook.id)) if d["id"] == str(record.id)]
        assert row["attempts"] == 2 and row["status"] == "delivered"
        assert cli("redeliver", row["id"])["status"] == "pending"
        assert cli("delete", created["id"]) == {"id": created["id"], "deleted": True}
        assert [h["id"] for h in cli("list")] == [str(hook.id)]
