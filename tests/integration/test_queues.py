"""Named queues (issue 14) against the session's real Postgres and Redis: in-process API and real arq workers
(tests/inprocess.py), the Redis tick on its own, and real processes where a restart is the point.

Routing (a worker takes only from its queues), priority and FIFO within a queue, pause and resume (nothing new
starts, running tasks finish), a pause that survives a Redis FLUSHDB and a restart of every process, the
numbers of GET /api/v1/queues, validation of queue names and the `queue` label of the metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from redis.asyncio import Redis

from taskproc import queue
from taskproc.models import Priority

from conftest import StackFactory
from inprocess import InProcess, InProcessFactory, wait_until
from support import Servers


async def _queues(api: InProcess) -> dict[str, dict[str, object]]:
    r = await api.client.get("/api/v1/queues")
    assert r.status_code == 200, r.text
    return {q["name"]: q for q in r.json()}


def _redis(api: InProcess) -> Redis:
    return Redis.from_url(api.redis_url)


def _worker_beats(api: InProcess) -> list[datetime]:
    return [row[0] for row in api.sql("SELECT expires_at FROM worker ORDER BY id")]


async def _two_heartbeats_later(api: InProcess) -> None:
    """Until every worker has renewed its lease twice: each has then ticked many times with the current pause."""
    first = _worker_beats(api)

    async def renewed() -> bool:
        now = _worker_beats(api)
        return len(now) == len(first) and all(b > a for a, b in zip(first, now, strict=True))

    for _ in range(2):
        await wait_until(renewed, timeout=15, what="a heartbeat of every worker")
        first = _worker_beats(api)


# ---- validation and the task's queue ------------------------------------------------------------------------


async def test_queue_defaults_is_returned_and_filters_the_list(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory() as api:
        plain = await api.submit()
        named = await api.submit(queue="reports")
        assert plain["queue"] == "default"
        assert named["queue"] == "reports"
        r = await api.client.post(
            "/api/v1/tasks/batch", json={"tasks": [{"type": "add", "payload": {"a": 1, "b": 1}, "queue": "bulk"}]}
        )
        assert r.status_code == 201, r.text
        [batched] = r.json()["items"]
        assert batched["queue"] == "bulk"
        listed = (await api.client.get("/api/v1/tasks", params={"queue": "reports"})).json()["items"]
        assert [t["id"] for t in listed] == [named["id"]]
        assert (await api.get(named["id"]))["queue"] == "reports"
        # The column and the job's Redis key agree.
        redis = _redis(api)
        try:
            assert await redis.zcard("taskproc:queue:reports") == 1
            assert await redis.zcard("taskproc:queue:bulk") == 1
            assert await redis.zcard(queue.QUEUE_KEY) == 1, "the default queue keeps the key of earlier releases"
        finally:
            await redis.aclose()


BAD_NAMES = ["Upper", "has space", "x" * 65, "", "dot.ted", "slash/ed"]


async def test_bad_queue_name_is_422(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory() as api:
        for name in BAD_NAMES:
            body = {"type": "add", "payload": {"a": 1, "b": 2}, "queue": name}
            r = await api.client.post("/api/v1/tasks", json=body)
            assert r.status_code == 422, (name, r.text)
            r = await api.client.post("/api/v1/tasks/batch", json={"tasks": [body]})
            assert r.status_code == 422, (name, r.text)
            if name:
                r = await api.client.get("/api/v1/tasks", params={"queue": name})
                assert r.status_code == 422, (name, r.text)
            if name and "/" not in name:
                r = await api.client.post(f"/api/v1/queues/{name}/pause")
                assert r.status_code == 422, (name, r.text)
        assert api.sql("SELECT count(*) FROM task") == [(0,)]
        assert api.sql("SELECT count(*) FROM queue") == [(0,)]
        # A good name next to them is taken, so the refusals above are about the names.
        assert (await api.submit(queue="good_name-1"))["queue"] == "good_name-1"


# ---- the tick: priority and FIFO within a queue, a worker's queues only, paused ones skipped ------------------


@pytest.fixture
async def r(servers: Servers) -> AsyncIterator[Redis]:
    index = servers.take_redis_db()
    client = Redis.from_url(servers.redis.url.rsplit("/", 1)[0] + f"/{index}")
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()
        servers.give_back_redis_db(index)


def _item(name: str, priority: Priority, delay_ms: int = 0) -> queue.Enqueue:
    """A job of `name`; a negative delay is how long ago it fell due (so the order never rests on a tie)."""
    return queue.Enqueue(task_id=uuid.uuid4(), generation=1, priority=priority, delay_ms=delay_ms, queue=name)


def _jid(item: queue.Enqueue) -> str:
    return queue.job_id(item.task_id, item.generation)


async def test_tick_takes_by_priority_then_fifo_within_the_workers_queues_only(r: Redis) -> None:
    a_low_old = _item("a", Priority.low, -6000)
    a_normal_old = _item("a", Priority.normal, -5000)
    b_high = _item("b", Priority.high, -4000)
    a_normal_new = _item("a", Priority.normal, -3000)
    a_high_new = _item("a", Priority.high, -2000)
    default_high = _item("default", Priority.high, -1000)
    await queue.enqueue(r, [a_low_old, a_normal_old, b_high, a_normal_new, a_high_new, default_high])
    assert await queue.queue_names(r) == ["a", "b", "default"]

    only_a = queue.Ticker(r, ["a"])
    first = await only_a.tick(3)
    assert [j for j, _ in first.taken] == [_jid(a_high_new), _jid(a_normal_old), _jid(a_normal_new)]
    assert set(first.queue_of.values()) == {"a"}
    rest = await only_a.tick(10)
    assert [j for j, _ in rest.taken] == [_jid(a_low_old)]
    assert (await only_a.tick(10)).taken == [], "b's and default's jobs are not a's worker's"
    assert await r.zcard("taskproc:queue:b") == 1
    assert await r.zcard(queue.QUEUE_KEY) == 1

    # A worker of every queue takes by score across them: both high ones, the older first.
    every = await queue.Ticker(r).tick(10)
    assert [j for j, _ in every.taken] == [_jid(b_high), _jid(default_high)]
    assert every.queue_of == {_jid(b_high): "b", _jid(default_high): "default"}


async def test_tick_skips_paused_queues_and_leaves_their_jobs_in_place(r: Redis) -> None:
    paused_job = _item("p", Priority.high, -2000)
    other = _item("o", Priority.low, -1000)
    await queue.enqueue(r, [paused_job, other])
    tick = await queue.Ticker(r).tick(10, paused=["p"])
    assert [j for j, _ in tick.taken] == [_jid(other)]
    assert await r.zscore("taskproc:queue:p", _jid(paused_job)) is not None
    resumed = await queue.Ticker(r, ["p", "o"]).tick(10)
    assert [j for j, _ in resumed.taken] == [_jid(paused_job)]


async def test_deferred_jobs_fall_due_into_their_own_queue(r: Redis) -> None:
    later = _item("slow", Priority.normal, delay_ms=50)
    await queue.enqueue(r, [later])
    assert await r.zcard("taskproc:deferred:slow") == 1
    assert await r.zcard(queue.DEFERRED_KEY) == 0

    async def promoted() -> bool:
        return await queue.promote_due(r) == 1

    await wait_until(promoted, timeout=5, what="the deferred job to fall due")
    assert await r.zscore("taskproc:queue:slow", _jid(later)) is not None
    assert (await queue.Ticker(r, ["other"]).tick(10)).taken == []
    assert [j for j, _ in (await queue.Ticker(r, ["slow"]).tick(10)).taken] == [_jid(later)]


# ---- workers and their queues ---------------------------------------------------------------------------------


async def test_a_worker_runs_only_its_queues_and_the_other_queue_waits_for_its_worker(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory() as api:
        await api.start_worker(env={"TASKPROC_WORKER_QUEUES": "a"})
        b_task = await api.submit(queue="b")
        a_task = await api.submit(queue="a")
        await api.wait_status(a_task["id"], "completed")
        # The a-worker took a's job after b's was enqueued: it passed b by. It is still in b's ready set.
        waiting = await api.get(b_task["id"])
        assert waiting["status"] == "pending"
        assert waiting["waiting"]["reason"] == "no_worker" and "queue 'b'" in waiting["waiting"]["detail"]
        assert (await api.client.get("/api/v1/stats")).json()["waiting_no_queue_worker"] == 1
        assert api.sql("SELECT queues FROM worker") == [(["a"],)]
        queues = await _queues(api)
        assert queues["b"]["workers"] == 0
        assert queues["b"]["ready"] == 1
        assert queues["a"]["workers"] == 1
        await api.start_worker(env={"TASKPROC_WORKER_QUEUES": "b"})
        done = await api.wait_status(b_task["id"], "completed")
        assert done["waiting"] is None
        assert done["attempts"] == 1
        assert (await _queues(api))["b"]["workers"] == 1


# ---- pause and resume ------------------------------------------------------------------------------------------


async def test_pause_lets_running_tasks_finish_starts_nothing_new_and_resume_starts_them(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=1) as api:
        running = await api.submit("sleep", {"duration_ms": 1500}, queue="work")
        await api.wait_status(running["id"], "running")
        r = await api.client.post("/api/v1/queues/work/pause")
        assert r.status_code == 200, r.text
        assert r.json()["paused"] is True and r.json()["paused_at"] is not None
        waiting = await api.submit(queue="work")
        elsewhere = await api.submit(queue="other")
        await api.wait_status(elsewhere["id"], "completed")  # other queues go on
        assert (await api.wait_status(running["id"], "completed"))["attempts"] == 1
        await _two_heartbeats_later(api)
        task = await api.get(waiting["id"])
        assert task["status"] == "pending"
        assert task["waiting"]["reason"] == "queue_paused"
        assert [e["status"] for e in await api.events(waiting["id"])] == ["pending"]
        listed = await _queues(api)
        assert listed["work"]["paused"] is True
        # In the ready set, or back in the deferred one if a worker took it before its heartbeat told it of the
        # pause (the claim refused it).
        assert listed["work"]["ready"] + listed["work"]["deferred"] == 1
        assert listed["work"]["running"] == 0
        assert listed["work"]["oldest_ready_age_s"] is not None and listed["work"]["oldest_ready_age_s"] >= 0
        assert listed["other"]["paused"] is False

        r = await api.client.post("/api/v1/queues/work/resume")
        assert r.status_code == 200, r.text
        assert r.json()["paused"] is False and r.json()["paused_at"] is None
        await api.wait_status(waiting["id"], "completed")
        assert (await api.get(waiting["id"]))["waiting"] is None


async def test_the_claim_refuses_a_paused_queue_whatever_redis_hands_out(inprocess_factory: InProcessFactory) -> None:
    """A worker that has not yet heard of the pause (it learns with its heartbeat) still cannot start the task:
    the claim statement reads the pause, and the job goes back to the queue's deferred set, untouched."""
    async with inprocess_factory() as api:
        await api.client.post("/api/v1/queues/held/pause")
        task = await api.submit(queue="held")
        worker = await api.start_worker()
        runtime = worker.ctx["runtime"]
        runtime.paused = []  # as if the pause came after its last heartbeat
        redis = _redis(api)
        try:
            jid = queue.job_id(uuid.UUID(task["id"]), 1)
            claimed = await runtime.claim([(jid, queue.BAND[Priority.normal])], {jid: "held"})
            assert claimed == []
            assert await redis.zscore("taskproc:deferred:held", f"normal|{jid}") is not None
        finally:
            await redis.aclose()
        row = await api.get(task["id"])
        assert row["status"] == "pending" and row["attempts"] == 0


async def test_pause_survives_a_redis_flush_and_the_reconciler_restores_the_queue(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_RECONCILE_S": "0.3"}) as api:
        await api.client.post("/api/v1/queues/held/pause")
        task = await api.submit(queue="held")
        redis = _redis(api)
        try:
            await redis.flushdb()

            async def back() -> bool:
                return await redis.zcard("taskproc:queue:held") == 1

            await wait_until(back, timeout=20, what="the reconciler to enqueue the task into its queue again")
            assert await redis.zcard(queue.QUEUE_KEY) == 0
            await _two_heartbeats_later(api)
            row = await api.get(task["id"])
            assert row["status"] == "pending" and row["attempts"] == 0
            assert await redis.zcard("taskproc:queue:held") == 1, "the paused queue's job stays where it is"
        finally:
            await redis.aclose()
        await api.client.post("/api/v1/queues/held/resume")
        await api.wait_status(task["id"], "completed")


def test_pause_survives_a_restart_of_the_api_and_the_workers(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack:
        assert stack.client.post("/api/v1/queues/held/pause").status_code == 200
        task = stack.submit(queue="held")
        stack.stop_workers()
        assert stack.api is not None
        stack.api.stop()
        stack.start_api()
        stack.start_worker()
        stack.wait_ready(workers=1)
        probe = stack.submit(queue="probe")
        stack.wait_status(probe["id"], "completed")
        [(beat,)] = stack.sql("SELECT expires_at FROM worker")
        from support import wait_for

        wait_for(lambda: stack.sql("SELECT expires_at FROM worker")[0][0] > beat, timeout=15, what="a later heartbeat")
        assert stack.get(task["id"])["status"] == "pending"
        queues = {q["name"]: q for q in stack.client.get("/api/v1/queues").json()}
        assert queues["held"]["paused"] is True
        assert stack.client.post("/api/v1/queues/held/resume").status_code == 200
        stack.wait_status(task["id"], "completed")


# ---- metrics ---------------------------------------------------------------------------------------------------


async def test_queue_metrics_carry_the_queue_label(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory() as api:
        await api.submit(queue="m1", priority="high")
        await api.submit(queue="m1", delay_s=600)
        await api.client.post("/api/v1/queues/m2/pause")
        text = (await api.client.get("/metrics")).text
        assert 'taskproc_queue_depth{priority="high",queue="m1"} 1.0' in text
        assert 'taskproc_queue_deferred{queue="m1"} 1.0' in text
        assert 'taskproc_queue_paused{queue="m2"} 1.0' in text
        assert 'taskproc_queue_paused{queue="m1"} 0.0' in text
        assert 'taskproc_queue_running{queue="m1"} 0.0' in text
