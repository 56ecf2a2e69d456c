"""taskproc.store, one function at a time, in process against the session's real Postgres (a fresh database per
test): the rows each statement returns and the state it leaves behind. No HTTP, no worker processes."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import FrozenInstanceError, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import store
from taskproc.config import Settings
from taskproc.db import PgWriter, create_engine, create_sessionmaker
from taskproc.models import Priority, TaskStatus
from taskproc.store import AttemptRef, JobRef, NewTask, TaskRow

from support import Servers, wait_for


@dataclass
class Pg:
    url: str
    settings: Settings
    engine: AsyncEngine
    # Autocommit, as the API's: every statement is its own transaction.
    auto: async_sessionmaker[AsyncSession]
    # Transactions, as the worker's: nothing is visible before commit.
    tx: async_sessionmaker[AsyncSession]
    writer: PgWriter

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    async def row(self, task_id: uuid.UUID) -> TaskRow:
        async with self.auto() as s:
            row = await store.get(s, task_id)
        assert row is not None
        return row

    async def details(self, task_id: uuid.UUID) -> list[tuple[TaskStatus, str | None]]:
        async with self.auto() as s:
            return [(e.status, e.detail) for e in await store.list_events(s, task_id)]


@pytest.fixture
def database(servers: Servers) -> Iterator[str]:
    name = servers.new_database()
    yield servers.pg.url_for(name)
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pg(database: str) -> AsyncIterator[Pg]:
    settings = Settings(database_url=database)  # type: ignore[arg-type]
    engine = create_engine(settings)
    writer = PgWriter(settings, name="test")
    yield Pg(
        url=database,
        settings=settings,
        engine=engine,
        auto=create_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")),
        tx=create_sessionmaker(engine),
        writer=writer,
    )
    await writer.close()
    await engine.dispose()


def new(type_: str = "add", *, key: str | None = None, delay_s: float = 0.0, **fields: Any) -> NewTask:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": type_,
        "priority": Priority.normal,
        "payload": {"a": 1},
        "max_retries": 2,
        "timeout_s": 30.0,
        "idempotency_key": key,
        "delay_s": delay_s,
        **fields,
    }
    return NewTask(**values)


async def create(pg: Pg, *tasks: NewTask) -> list[TaskRow]:
    async with pg.auto() as s:
        return await store.create(s, list(tasks))


async def claim(pg: Pg, row: TaskRow, worker: str = "w1", types: tuple[str, ...] = ("add",)) -> store.Claimed:
    [claimed], unserved = await store.claim_batch(
        pg.writer, [JobRef(row.id, row.generation)], worker_id=worker, types=list(types)
    )
    assert not unserved
    return claimed


def attempt(c: store.Claimed) -> AttemptRef:
    return AttemptRef(id=c.id, generation=c.generation, attempts=c.attempts)


async def heartbeat(pg: Pg, worker: str, types: dict[str, str] | None = None, lease_s: float = 30.0) -> None:
    await store.heartbeat(pg.writer, worker, hostname="h", pid=1, lease_s=lease_s, task_types=types or {"add": "f1"})


# ---- rows ---------------------------------------------------------------------------------------------------


async def test_create_inserts_pending_rows_with_their_first_event_and_yields_to_an_existing_key(pg: Pg) -> None:
    a, b = new(key="k1"), new("sleep", delay_s=60.0, priority=Priority.high)
    rows = await create(pg, a, b)
    assert {r.id for r in rows} == {a.id, b.id}
    for r in rows:
        assert isinstance(r, TaskRow)
        assert r.status is TaskStatus.pending and r.generation == 1 and r.attempts == 0
        assert r.created_at == r.updated_at and not r.cancel_requested and r.worker_id is None
    by_id = {r.id: r for r in rows}
    assert by_id[a.id].run_at == by_id[a.id].created_at
    assert by_id[b.id].run_at - by_id[b.id].created_at == timedelta(seconds=60)
    assert by_id[b.id].priority is Priority.high and by_id[a.id].payload == {"a": 1}
    with pytest.raises(FrozenInstanceError):
        by_id[a.id].status = TaskStatus.failed  # type: ignore[misc]
    assert await pg.details(a.id) == [(TaskStatus.pending, "accepted")]

    again = new(key="k1")
    assert await create(pg, again) == [], "the key's task exists: nothing inserted"
    async with pg.auto() as s:
        [existing] = await store.by_idempotency_keys(s, ["k1", "unknown"])
        assert existing.id == a.id
        assert await store.get(s, again.id) is None
        assert await store.status_of(s, a.id) is TaskStatus.pending
        assert await store.status_of(s, uuid.uuid4()) is None
        assert await store.list_events(s, uuid.uuid4()) == []


async def test_list_page_filters_and_pages_newest_first(pg: Pg) -> None:
    made = []
    for i in range(5):
        made += await create(pg, new("add" if i % 2 else "sleep", priority=Priority.low if i == 4 else Priority.normal))
    newest_first = sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)
    async with pg.auto() as s:
        page = await store.list_page(s, status=None, type_=None, priority=None, before=None, limit=2)
        assert [r.id for r in page] == [r.id for r in newest_first[:2]]
        last = page[-1]
        page2 = await store.list_page(
            s, status=None, type_=None, priority=None, before=(last.created_at, last.id), limit=10
        )
        assert [r.id for r in page2] == [r.id for r in newest_first[2:]]
        adds = await store.list_page(s, status=None, type_="add", priority=None, before=None, limit=10)
        assert {r.id for r in adds} == {r.id for r in made if r.type == "add"} and len(adds) == 2
        low = await store.list_page(
            s, status=TaskStatus.pending, type_=None, priority=Priority.low, before=None, limit=9
        )
        assert [r.id for r in low] == [made[4].id]
        none = await store.list_page(s, status=TaskStatus.running, type_=None, priority=None, before=None, limit=9)
        assert none == []


async def test_update_changes_only_a_pending_tasks_priority_under_a_new_generation(pg: Pg) -> None:
    [row] = await create(pg, new())
    async with pg.auto() as s:
        updated = await store.update(s, row.id, priority=Priority.high)
    assert updated is not None
    assert updated.priority is Priority.high and updated.generation == 2 and updated.updated_at > row.updated_at
    assert (await pg.details(row.id))[-1] == (TaskStatus.pending, "priority changed to high")
    await claim(pg, updated)
    async with pg.auto() as s:
        assert await store.update(s, row.id, priority=Priority.low) is None
    assert (await pg.row(row.id)).priority is Priority.high


# ---- cancel, retry, delete -------------------------------------------------------------------------------


async def test_cancel_cancels_a_waiting_task_flags_a_running_one_and_refuses_a_finished_one(pg: Pg) -> None:
    waiting, running = await create(pg, new(), new())
    await claim(pg, running)
    async with pg.auto() as s:
        canceled = await store.cancel(s, waiting.id)
        flagged = await store.cancel(s, running.id)
    assert canceled is not None and flagged is not None
    assert canceled.status is TaskStatus.canceled and canceled.generation == 2 and canceled.finished_at is not None
    assert await pg.details(waiting.id) == [
        (TaskStatus.pending, "accepted"),
        (TaskStatus.canceled, "canceled before it ran"),
    ]
    assert flagged.status is TaskStatus.running and flagged.cancel_requested and flagged.worker_id == "w1"
    assert flagged.generation == 1 and flagged.finished_at is None
    assert [st for st, _ in await pg.details(running.id)] == [TaskStatus.pending, TaskStatus.running], (
        "a flagged task gets its event from the worker's outcome"
    )
    async with pg.auto() as s:
        assert await store.cancel(s, waiting.id) is None, "already canceled"


async def test_retry_resets_a_failed_or_canceled_task_and_refuses_any_other(pg: Pg) -> None:
    a, b = await create(pg, new(), new())
    c = await claim(pg, a)
    async with pg.tx() as s:
        failed = await store.fail_attempt(s, attempt(c), error="no", delay_s=1.0, retry=False)
        await s.commit()
    assert failed is not None and failed.status is TaskStatus.failed
    async with pg.auto() as s:
        again = await store.retry(s, a.id)
        assert await store.retry(s, b.id) is None, "a pending task is not retried"
    assert again is not None
    assert again.status is TaskStatus.pending and again.attempts == 0 and again.generation == failed.generation + 1
    assert again.error is None and again.finished_at is None and again.started_at is None
    assert (await pg.details(a.id))[-1] == (TaskStatus.pending, "retry requested")


async def test_delete_only_removes_finished_tasks_with_their_history(pg: Pg) -> None:
    a, b = await create(pg, new(), new())
    async with pg.auto() as s:
        assert not await store.delete(s, a.id), "pending: kept"
        await store.cancel(s, a.id)
        assert await store.delete(s, a.id)
        assert await store.get(s, a.id) is None
        assert await store.list_events(s, a.id) == []
        assert await store.get(s, b.id) is not None
        assert not await store.delete(s, uuid.uuid4())


def test_status_sets_are_the_enums() -> None:
    assert store.STATUS_PARAMS["waiting"] == ["pending", "retrying"]
    assert store.STATUS_PARAMS["terminal"] == ["canceled", "completed", "failed"]
    assert store.STATUS_PARAMS["live"] == ["pending", "retrying", "running"]
    assert store.STATUS_PARAMS["s_running"] == TaskStatus.running.value


async def test_statements_test_statuses_through_the_bound_sets(pg: Pg) -> None:
    """The sets travel as parameters: a statement sees whatever set it is given, so the enum is what decides."""
    [row] = await create(pg, new())
    async with pg.auto() as s:
        assert not await store.delete(s, row.id)
        # The same statement with `pending` counted as terminal deletes it: the SQL itself names no status.
        result = await s.execute(store.DELETE_TASK, {**store.STATUS_PARAMS, "terminal": ["pending"], "id": row.id})
        assert result.first() is not None
        assert await store.get(s, row.id) is None


# ---- workers, served types, stats --------------------------------------------------------------------------------


async def test_heartbeat_registers_and_renews_a_worker_and_unregister_removes_it(pg: Pg) -> None:
    await heartbeat(pg, "w1", {"add": "f1"}, lease_s=30)
    first = pg.sql("SELECT expires_at, task_types, hostname, pid FROM worker WHERE id = 'w1'")
    assert first[0][1:] == ({"add": "f1"}, "h", 1)
    expires = await store.heartbeat(pg.writer, "w1", hostname="h", pid=1, lease_s=60, task_types={"sleep": "f2"})
    [(renewed, types, _, _)] = pg.sql("SELECT expires_at, task_types, hostname, pid FROM worker WHERE id = 'w1'")
    assert renewed == expires > first[0][0] and types == {"sleep": "f2"}
    assert await store.unregister_worker(pg.writer, "w1")
    assert not await store.unregister_worker(pg.writer, "w1")
    assert pg.sql("SELECT count(*) FROM worker") == [(0,)]


async def test_get_waiting_reads_a_waiting_tasks_context_in_one_statement_as_the_separate_reads_do(pg: Pg) -> None:
    """store.get_waiting (GET /tasks/{id}) gives what served_types, served_queues, paused_queues and db_now give,
    for a waiting task only; None for a missing one."""
    waiting, done = await create(pg, new(queue="a"), new())
    await claim(pg, done)
    async with pg.auto() as s:
        assert await store.get_waiting(s, uuid.uuid4()) is None
        # No live worker: nothing served (not None, which means served by all).
        found = await store.get_waiting(s, waiting.id)
        assert found is not None and found[0] == waiting
        ctx = found[1]
        assert ctx is not None
        assert (ctx.served_types, ctx.served_queues, ctx.paused_queues) == (frozenset(), frozenset(), frozenset())
        await store.heartbeat(pg.writer, "w2", hostname="h", pid=1, lease_s=30, task_types={"add": "f"}, queues=["b"])
        await store.heartbeat(pg.writer, "w3", hostname="h", pid=1, lease_s=30, task_types={"sleep": "f"}, queues=["c"])
        await heartbeat(pg, "dead", {"echo": "f1"}, lease_s=-1)
        await store.set_queue_paused(s, "a", paused=True)
        before = await store.db_now(s)
        found = await store.get_waiting(s, waiting.id)
        assert found is not None and found[1] is not None
        ctx = found[1]
        assert ctx.served_types == await store.served_types(s) == frozenset({"add", "sleep"})
        assert ctx.served_queues == await store.served_queues(s) == frozenset({"b", "c"})
        assert ctx.paused_queues == frozenset(await store.paused_queues(s)) == frozenset({"a"})
        assert before <= ctx.now <= await store.db_now(s)
        # A worker taking from every queue, and one that predates task_types: both mean "every one".
        await heartbeat(pg, "w1")
        pg.sql(
            "INSERT INTO worker (id, hostname, pid, started_at, expires_at) "
            "VALUES ('old', 'h', 1, now(), now() + interval '1 minute')"
        )
        found = await store.get_waiting(s, waiting.id)
        assert found is not None and found[1] is not None
        assert (found[1].served_types, found[1].served_queues) == (None, None)
        assert await store.get_waiting(s, done.id) == (await store.get(s, done.id), None), "running: no context"


async def test_served_types_and_other_schemas_come_from_live_workers_only(pg: Pg) -> None:
    async with pg.auto() as s:
        assert await store.served_types(s) == frozenset()
        await heartbeat(pg, "w1", {"add": "f1"})
        await heartbeat(pg, "w2", {"add": "f2", "sleep": "f1"})
        await heartbeat(pg, "dead", {"echo": "f1"}, lease_s=-1)
        assert await store.served_types(s) == frozenset({"add", "sleep"})
        assert await store.other_schema_advertised(s, "add", "f1"), "w2 has another schema for add"
        assert not await store.other_schema_advertised(s, "sleep", "f1")
        assert not await store.other_schema_advertised(s, "echo", "f9"), "only a dead worker serves echo"
        # A worker older than migration 0003 does not say what it serves: it may serve anything.
        pg.sql(
            "INSERT INTO worker (id, hostname, pid, started_at, expires_at) "
            "VALUES ('old', 'h', 1, now(), now() + interval '1 minute')"
        )
        assert await store.served_types(s) is None


async def test_stats_come_from_the_counters(pg: Pg) -> None:
    await heartbeat(pg, "w1", {"add": "f1"})
    a, _, _ = await create(pg, new(), new(priority=Priority.high), new("sleep", priority=Priority.low))
    c = await claim(pg, a)
    async with pg.tx() as s:
        await store.fail_attempt(s, attempt(c), error="x", delay_s=5.0)
        await s.commit()
    async with pg.auto() as s:
        stats = await store.stats(s)
        assert await store.live_count(s) == 3
    assert stats.by_status.get("pending") == 2 and stats.by_status.get("retrying") == 1
    assert sum(stats.by_status.values()) == 3
    assert stats.waiting_by_priority == {"normal": 1, "high": 1, "low": 1}
    assert stats.retried_total == 1 and stats.workers == 1
    assert stats.waiting_no_worker == 1, "the sleep task: no live worker serves it"


# ---- the hot path ---------------------------------------------------------------------------------------------


async def test_claim_batch_claims_served_current_jobs_and_returns_unserved_ones_untouched(pg: Pg) -> None:
    add, sleep, stale, flagged = await create(pg, new(), new("sleep"), new(), new())
    await claim(pg, flagged)
    async with pg.auto() as s:
        await store.cancel(s, flagged.id)
    jobs = [JobRef(add.id, 1), JobRef(sleep.id, 1), JobRef(stale.id, 7), JobRef(flagged.id, 1)]
    claimed, unserved = await store.claim_batch(pg.writer, jobs, worker_id="w2", types=["add"])
    assert [c.id for c in claimed] == [add.id]
    [c] = claimed
    assert c.attempts == 1 and c.generation == 1 and c.payload == {"a": 1} and c.priority is Priority.normal
    assert c.timeout_s == 30.0 and c.started_at >= c.run_at
    assert unserved == [
        store.Unserved(
            id=sleep.id,
            generation=1,
            type="sleep",
            priority=Priority.normal,
            queue="default",
            concurrency_key=None,
            limited=False,
        )
    ]
    row = await pg.row(add.id)
    assert row.status is TaskStatus.running and row.worker_id == "w2" and row.started_at == c.started_at
    assert (await pg.details(add.id))[-1] == (TaskStatus.running, "started by w2")
    assert (await pg.row(sleep.id)).status is TaskStatus.pending, "left untouched for a worker that serves it"
    assert (await pg.row(stale.id)).status is TaskStatus.pending
    assert (await pg.row(flagged.id)).attempts == 1, "a task with a cancel request is not claimed again"
    again, _ = await store.claim_batch(pg.writer, [JobRef(add.id, 1)], worker_id="w3", types=["add"])
    assert again == [], "claimed once"


async def test_complete_batch_completes_cancels_flagged_tasks_and_skips_stale_attempts(pg: Pg) -> None:
    a, b, c = await create(pg, new(), new(), new())
    ca, cb, cc = await claim(pg, a), await claim(pg, b), await claim(pg, c)
    async with pg.auto() as s:
        await store.cancel(s, b.id)

    @dataclass
    class Done:
        id: uuid.UUID
        generation: int
        attempt: int
        result: str
        detail: str

    written = await store.complete_batch(
        pg.writer,
        [
            Done(ca.id, ca.generation, ca.attempts, '{"n": 1}', "completed in 1 ms"),
            Done(cb.id, cb.generation, cb.attempts, "2", "completed in 2 ms"),
            Done(cc.id, cc.generation, cc.attempts + 1, "3", "stale"),
        ],
    )
    assert written == {a.id: TaskStatus.completed, b.id: TaskStatus.canceled}
    ra, rb = await pg.row(a.id), await pg.row(b.id)
    assert ra.status is TaskStatus.completed and ra.result == {"n": 1} and ra.worker_id is None and ra.finished_at
    assert rb.status is TaskStatus.canceled and rb.result == 2
    assert (await pg.details(b.id))[-1] == (
        TaskStatus.canceled,
        "canceled: a cancel was requested while it ran; completed in 2 ms, result kept",
    )
    assert (await pg.row(c.id)).status is TaskStatus.running


# ---- outcomes off the hot path -----------------------------------------------------------------------------------


async def test_fail_attempt_retries_fails_permanently_or_when_out_of_attempts_and_honours_a_cancel(pg: Pg) -> None:
    a, b, c, d = await create(pg, new(), new(), new(max_retries=0), new())
    claims = [await claim(pg, r) for r in (a, b, c, d)]
    async with pg.auto() as s:
        await store.cancel(s, d.id)
    async with pg.tx() as s:
        retrying = await store.fail_attempt(s, attempt(claims[0]), error="boom", delay_s=30.0)
        permanent = await store.fail_attempt(s, attempt(claims[1]), error="bad", delay_s=30.0, retry=False)
        exhausted = await store.fail_attempt(s, attempt(claims[2]), error="boom", delay_s=30.0)
        canceled = await store.fail_attempt(s, attempt(claims[3]), error="boom", delay_s=30.0)
        stale = await store.fail_attempt(s, attempt(claims[0]), error="again", delay_s=1.0)
        await s.commit()
    assert retrying is not None and permanent is not None and exhausted is not None and canceled is not None
    assert stale is None, "the row moved on: the compare-and-set refuses"
    assert retrying.status is TaskStatus.retrying and retrying.generation == 2 and retrying.error == "boom"
    assert retrying.run_at - retrying.updated_at == timedelta(seconds=30) and retrying.finished_at is None
    assert (await pg.details(a.id))[-1] == (TaskStatus.retrying, "attempt 1 failed: boom; retry in 30.00s")
    assert permanent.status is TaskStatus.failed and permanent.generation == 1 and permanent.finished_at
    assert (await pg.details(b.id))[-1] == (TaskStatus.failed, "attempt 1 failed: bad; not retried (permanent failure)")
    assert exhausted.status is TaskStatus.failed
    assert canceled.status is TaskStatus.canceled
    assert (await pg.details(d.id))[-1] == (TaskStatus.canceled, "canceled while running")


async def test_a_cancel_committing_while_fail_attempt_waits_on_the_row_wins(pg: Pg) -> None:
    """The race of issue 12 case 2, at the statement: fail_attempt blocks on the row the cancel's transaction
    holds, and once that commits, its CASEs are evaluated on the committed row: canceled, not retrying."""
    [row] = await create(pg, new())
    c = await claim(pg, row)
    async with pg.tx() as canceler:
        flagged = await store.cancel(canceler, row.id)
        assert flagged is not None and flagged.cancel_requested

        async def fail() -> TaskRow | None:
            async with pg.tx() as s:
                out = await store.fail_attempt(s, attempt(c), error="boom", delay_s=1.0)
                await s.commit()
                return out

        failing = asyncio.create_task(fail())
        await asyncio.to_thread(
            wait_for,
            lambda: (
                pg.sql(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                == [(1,)]
            ),
            timeout=10,
            what="fail_attempt to wait for the cancel's row lock",
        )
        assert not failing.done()
        await canceler.commit()
    outcome = await asyncio.wait_for(failing, 10)
    assert outcome is not None and outcome.status is TaskStatus.canceled
    assert (await pg.row(row.id)).status is TaskStatus.canceled


async def test_requeue_gives_the_attempt_back_until_the_limit_then_spends_it(pg: Pg) -> None:
    a, b = await create(pg, new(max_retries=1), new())
    statuses = []
    for _ in range(4):
        current = await pg.row(a.id)
        c = await claim(pg, current)
        async with pg.tx() as s:
            out = await store.requeue(s, attempt(c), worker_id="w1", max_requeues=2)
            await s.commit()
        assert out is not None
        statuses.append((out.status, out.attempts))
        if out.status is TaskStatus.failed:
            break
    # Two shutdowns give the attempt back; the third spends attempt 1 (retrying), the fourth attempt 2 (failed).
    assert statuses == [
        (TaskStatus.pending, 0),
        (TaskStatus.pending, 0),
        (TaskStatus.retrying, 1),
        (TaskStatus.failed, 2),
    ]
    assert pg.sql("SELECT shutdown_requeues FROM task WHERE id = %s", (a.id,)) == [(4,)]
    assert (await pg.details(a.id))[1] == (TaskStatus.running, "started by w1")
    assert (await pg.details(a.id))[2] == (
        TaskStatus.pending,
        "requeued: worker w1 shut down before the task finished",
    )
    assert (await pg.details(a.id))[-1][1].endswith("so the attempt counts; no retries left")  # type: ignore[union-attr]

    cb = await claim(pg, b)
    async with pg.auto() as s:
        await store.cancel(s, b.id)
    async with pg.tx() as s:
        out = await store.requeue(s, attempt(cb), worker_id="w1", max_requeues=2)
        await s.commit()
    assert out is not None and out.status is TaskStatus.canceled and out.finished_at is not None
    assert (await pg.details(b.id))[-1] == (TaskStatus.canceled, "aborted by its worker after a cancel request")


async def test_hand_back_returns_the_attempt_due_later_or_cancels(pg: Pg) -> None:
    a, b = await create(pg, new(), new())
    ca, cb = await claim(pg, a), await claim(pg, b)
    async with pg.auto() as s:
        await store.cancel(s, b.id)
    async with pg.tx() as s:
        back = await store.hand_back(s, attempt(ca), worker_id="w1", reason="newer\x00schema", delay_s=5.0)
        canceled = await store.hand_back(s, attempt(cb), worker_id="w1", reason="x", delay_s=5.0)
        await s.commit()
    assert back is not None and canceled is not None
    assert back.status is TaskStatus.pending and back.attempts == 0 and back.generation == 2
    assert back.run_at - back.updated_at == timedelta(seconds=5) and back.started_at is None
    assert (await pg.details(a.id))[-1] == (
        TaskStatus.pending,
        "handed back by w1, attempt not counted: newer\\x00schema",
    )
    assert canceled.status is TaskStatus.canceled and canceled.attempts == 1


async def test_check_cancels_finds_the_running_tasks_with_a_cancel_request(pg: Pg) -> None:
    a, b, c = await create(pg, new(), new(), new())
    await claim(pg, a)
    await claim(pg, b)
    async with pg.auto() as s:
        await store.cancel(s, a.id)
        await store.cancel(s, c.id)  # waiting: canceled at once, nothing to abort
        assert await store.check_cancels(s, [a.id, b.id, c.id]) == [JobRef(a.id, 1)]
        assert await store.check_cancels(s, []) == []


# ---- recovery -------------------------------------------------------------------------------------------------


async def test_reap_orphans_hands_back_this_workers_attempts_it_no_longer_runs(pg: Pg) -> None:
    a, b, c = await create(pg, new(), new(), new())
    ca, cb = await claim(pg, a, "w1"), await claim(pg, b, "w1")
    await claim(pg, c, "w2")
    async with pg.auto() as s:
        await store.cancel(s, b.id)
        candidates = await store.running_on(s, "w1")
        assert sorted(candidates, key=lambda r: r.id) == sorted([attempt(ca), attempt(cb)], key=lambda r: r.id)
        stale = AttemptRef(id=a.id, generation=1, attempts=5)
        assert await store.reap_orphans(s, "w1", [stale]) == [], "a compare-and-set: another attempt is left alone"
        assert await store.reap_orphans(s, "w1", []) == []
        rows = {r.id: r for r in await store.reap_orphans(s, "w1", candidates)}
        assert await store.running_on(s, "w1") == []
        assert [r.id for r in await store.running_on(s, "w2")] == [c.id]
    assert rows[a.id].status is TaskStatus.pending and rows[a.id].attempts == 0 and rows[a.id].generation == 2
    assert rows[b.id].status is TaskStatus.canceled and rows[b.id].finished_at is not None
    assert (await pg.details(a.id))[-1] == (TaskStatus.pending, "requeued: claimed by w1 but no longer running there")


async def test_reap_expired_retries_the_tasks_of_dead_workers_but_never_the_reapers_own(pg: Pg) -> None:
    a, b, mine, live = await create(pg, new(), new(max_retries=0), new(), new())
    await heartbeat(pg, "dead", lease_s=30)
    await heartbeat(pg, "alive", lease_s=30)
    await claim(pg, a, "dead")
    await claim(pg, b, "dead")
    await claim(pg, mine, "me")  # `me` has no worker row at all: still never reaped by itself
    await claim(pg, live, "alive")
    pg.sql("UPDATE worker SET expires_at = now() - interval '1 second' WHERE id = 'dead'")
    pg.sql(
        "INSERT INTO worker (id, hostname, pid, started_at, expires_at) "
        "VALUES ('ancient', 'h', 1, now(), now() - interval '2 hours')"
    )
    async with pg.tx() as s:
        rows = {r.id: r for r in await store.reap_expired(s, "me")}
        await s.commit()
    assert set(rows) == {a.id, b.id}
    assert rows[a.id].status is TaskStatus.retrying and rows[a.id].error == "worker lost: its lease expired"
    assert rows[a.id].generation == 2 and rows[a.id].worker_id is None and rows[a.id].attempts == 1
    assert rows[b.id].status is TaskStatus.failed and rows[b.id].finished_at is not None
    assert (await pg.details(a.id))[-1] == (TaskStatus.retrying, "worker lost (lease expired); attempt counted")
    assert (await pg.row(mine.id)).status is TaskStatus.running
    assert (await pg.row(live.id)).status is TaskStatus.running
    assert {w for (w,) in pg.sql("SELECT id FROM worker")} == {"dead", "alive"}, "only the hour-old row goes"


async def test_reap_expired_takes_at_most_limit_rows_and_skips_locked_ones(pg: Pg) -> None:
    rows = await create(pg, *(new() for _ in range(3)))
    for r in rows:
        await claim(pg, r, "dead")
    locked = min(r.id for r in rows)
    async with pg.tx() as holder:
        await holder.execute(sa.text("SELECT 1 FROM task WHERE id = :id FOR UPDATE"), {"id": locked})
        async with pg.tx() as s:
            reaped = await store.reap_expired(s, "me", limit=1)
            await s.commit()
        assert len(reaped) == 1 and reaped[0].id != locked
        await holder.rollback()


async def test_purge_deletes_old_finished_tasks_in_batches(pg: Pg) -> None:
    made = await create(pg, *(new() for _ in range(5)))
    async with pg.auto() as s:
        for r in made[:4]:
            await store.cancel(s, r.id)
    old = [r.id for r in made[:3]]
    pg.sql("UPDATE task SET finished_at = now() - interval '3 days' WHERE id = ANY(%s)", (old,))
    async with pg.auto() as s:
        assert await store.purge(s, older_than_s=2 * 86400, batch=2) == 2
        assert await store.purge(s, older_than_s=2 * 86400, batch=2) == 1
        assert await store.purge(s, older_than_s=2 * 86400, batch=2) == 0
        left = {r.id for r in await store.list_page(s, status=None, type_=None, priority=None, before=None, limit=9)}
    assert left == {made[3].id, made[4].id}, "recently finished and waiting tasks stay"
    assert pg.sql("SELECT count(*) FROM task_event WHERE task_id = ANY(%s)", (old,)) == [(0,)]


# ---- the reconciler -----------------------------------------------------------------------------------------------


async def test_the_reconcile_lock_is_held_by_one_transaction_at_a_time(pg: Pg) -> None:
    async with pg.tx() as first, pg.tx() as second:
        assert await store.try_reconcile_lock(first)
        assert not await store.try_reconcile_lock(second)
        await first.commit()
        assert await store.try_reconcile_lock(second)
        await second.rollback()


async def test_reconcile_page_walks_the_waiting_tasks_in_id_order_and_the_cursor_is_kept(pg: Pg) -> None:
    made = await create(pg, *(new() for _ in range(5)))
    fresh = (await create(pg, new()))[0]
    running = (await create(pg, new()))[0]
    await claim(pg, running)
    # Tasks changed in the last two seconds are skipped (their enqueue may be on its way): age all but `fresh`.
    pg.sql("UPDATE task SET updated_at = now() - interval '1 minute' WHERE id <> %s", (fresh.id,))
    ids = sorted(r.id for r in made)
    async with pg.tx() as s:
        assert await store.reconcile_cursor(s) == store.NIL_ID
        first = await store.reconcile_page(s, after=store.NIL_ID, limit=2)
        assert [r.id for r in first] == ids[:2]
        assert all(r.generation == 1 and r.priority is Priority.normal and r.db_now >= r.run_at for r in first)
        second = await store.reconcile_page(s, after=first[-1].id, limit=2)
        assert [r.id for r in second] == ids[2:4]
        rest = await store.reconcile_page(s, after=second[-1].id, limit=2)
        assert [r.id for r in rest] == ids[4:], "the end: fewer than the limit, running and fresh tasks left out"
        # Wrapped around: from the beginning only up to where the pass started.
        wrapped = await store.reconcile_page(s, after=store.NIL_ID, limit=10, wrapped=True, start=ids[1])
        assert [r.id for r in wrapped] == ids[:2]
        await store.save_reconcile_cursor(s, second[-1].id)
        await s.commit()
    async with pg.tx() as s:
        assert await store.reconcile_cursor(s) == ids[3], "the next pass, of any process, carries on from there"
        await store.save_reconcile_cursor(s, store.NIL_ID)
        await s.commit()
    async with pg.auto() as s:
        assert await store.reconcile_cursor(s) == store.NIL_ID


async def test_job_states_and_live_count(pg: Pg) -> None:
    a, b, c = await create(pg, new(), new(), new())
    await claim(pg, b)
    async with pg.auto() as s:
        await store.cancel(s, c.id)
        states = {r.id: r for r in await store.job_states(s, [a.id, b.id, c.id, uuid.uuid4()])}
        assert await store.live_count(s) == 2
    assert set(states) == {a.id, b.id, c.id}
    assert states[a.id].status is TaskStatus.pending and states[a.id].generation == 1
    assert states[b.id].status is TaskStatus.running
    assert states[c.id].status is TaskStatus.canceled and states[c.id].generation == 2


# ---- the event stream ------------------------------------------------------------------------------------------


async def test_events_after_between_and_the_newest_id(pg: Pg) -> None:
    async with pg.auto() as s:
        assert await store.max_event_id(s) == 0
    a, _ = await create(pg, new(), new("sleep"))
    await claim(pg, a)
    async with pg.auto() as s:
        newest = await store.max_event_id(s)
        everything = await store.events_after(s, 0, limit=100)
        assert [e.id for e in everything] == sorted(e.id for e in everything) and len(everything) == 3
        assert everything[-1].id == newest
        first = everything[0]
        after_first = await store.events_after(s, first.id, limit=1)
        assert [e.id for e in after_first] == [everything[1].id]
        with_gap = await store.events_after(s, everything[1].id, limit=10, gaps=[first.id])
        assert sorted(e.id for e in with_gap) == [first.id, everything[2].id]
        replay = await store.events_between(s, after=0, upto=newest, limit=10, task_id=a.id)
        assert [e.status for e in replay] == [TaskStatus.pending, TaskStatus.running]
        assert all(e.task_status is TaskStatus.running and e.task_attempts == 1 for e in replay)
        assert await store.events_between(s, after=0, upto=first.id, limit=10) == [first]
    started = next(e for e in everything if e.status is TaskStatus.running)
    assert started.task_id == a.id and started.type == "add" and started.priority is Priority.normal
    assert started.detail == "started by w1" and started.attempt == 1


# ---- probes and text ---------------------------------------------------------------------------------------------


async def test_probes(pg: Pg, database: str) -> None:
    async with pg.engine.connect() as conn:
        await store.ping(conn)
    engine = sa.create_engine(Settings(database_url=database).sqlalchemy_url)  # type: ignore[arg-type]
    try:
        with engine.connect() as conn:
            store.ping_sync(conn)
            revisions = store.schema_revisions(conn)
    finally:
        engine.dispose()
    assert revisions and all(isinstance(r, str) for r in revisions)


# ---- schedules ----------------------------------------------------------------------------------------------


def new_schedule(name: str = "s1", **fields: Any) -> store.NewSchedule:
    values: dict[str, Any] = {
        "name": name,
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "task": {"type": "add", "payload": {"a": 1}},
        "overlap": "allow",
        "catchup_s": 0.0,
        "enabled": True,
        "next_run_at": None,
        **fields,
    }
    return store.NewSchedule(**values)


async def test_schedules_are_created_read_updated_and_deleted(pg: Pg) -> None:
    async with pg.auto() as s:
        now = await store.db_now(s)
        row = await store.create_schedule(s, new_schedule(next_run_at=now))
        assert row is not None and row.next_run_at == now and row.enabled
        assert (row.fired_total, row.skipped_total, row.missed_total) == (0, 0, 0)
        assert row.last_task_id is None and row.last_task_status is None
        assert await store.create_schedule(s, new_schedule(cron="@daily")) is None, "the name is taken"
        assert (await store.get_schedule(s, "s1")) == row
        assert await store.get_schedule(s, "nope") is None
        await store.create_schedule(s, new_schedule("a0"))
        assert [r.name for r in await store.list_schedules(s)] == ["a0", "s1"]

        later = now + timedelta(hours=1)
        kept = await store.update_schedule(s, new_schedule(overlap="skip", next_run_at=later), reschedule=False)
        assert kept is not None and kept.overlap == "skip" and kept.next_run_at == now
        moved = await store.update_schedule(s, new_schedule(cron="@hourly", next_run_at=later), reschedule=True)
        assert moved is not None and moved.cron == "@hourly" and moved.next_run_at == later
        assert await store.update_schedule(s, new_schedule("nope"), reschedule=True) is None

        [task] = await store.create(s, [new(schedule="s1")])
        assert task.schedule == "s1"
        again = await store.get_schedule(s, "s1")
        assert again is not None and (again.last_task_id, again.last_task_status) == (task.id, TaskStatus.pending)
        assert await store.live_schedule_tasks(s, "s1") == [task.id]
        assert [
            r.id
            for r in await store.list_page(
                s, status=None, type_=None, priority=None, schedule="s1", before=None, limit=10
            )
        ] == [task.id]
        assert await store.delete_schedule(s, "s1")
        assert not await store.delete_schedule(s, "s1")
    assert pg.sql("SELECT schedule FROM task WHERE id = %s", (task.id,)) == [("s1",)], "the tasks stay"


async def test_fires_are_recorded_once_per_fire_time_and_advance_the_schedule(pg: Pg) -> None:
    async with pg.auto() as s:
        now = await store.db_now(s)
        await store.create_schedule(s, new_schedule(next_run_at=now - timedelta(seconds=1)))
        await store.create_schedule(s, new_schedule("later", next_run_at=now + timedelta(hours=1)))
        await store.create_schedule(s, new_schedule("paused", enabled=False))
        assert await store.due_schedules(s, now) == ["s1"]
        fire_at = now - timedelta(seconds=1)
        assert await store.record_fire(s, "s1", fire_at, outcome="fired")
        assert not await store.record_fire(s, "s1", fire_at, outcome="skipped"), "decided once"
        await store.record_fire(s, "s1", fire_at - timedelta(minutes=5), outcome="missed", detail="1 missed")
        nxt = now + timedelta(minutes=5)
        await store.advance_schedule(s, "s1", next_run_at=nxt, fired=1, missed=1, skipped_at=fire_at, reason="r")
        row = await store.get_schedule(s, "s1")
        assert row is not None and row.next_run_at == nxt and row.last_run_at is not None
        assert (row.fired_total, row.missed_total, row.last_skipped_at, row.last_skip_reason) == (1, 1, fire_at, "r")
        await store.advance_schedule(s, "s1", set_next=False, skipped=1)
        row = await store.get_schedule(s, "s1")
        assert row is not None and row.next_run_at == nxt and row.skipped_total == 1 and row.last_skip_reason == "r"
        fires = await store.list_fires(s, "s1", limit=10)
        assert [(f.fire_at, f.outcome, f.detail) for f in fires] == [
            (fire_at, "fired", None),
            (fire_at - timedelta(minutes=5), "missed", "1 missed"),
        ]
        assert await store.purge_fires(s, older_than_s=3600) == 0
        pg.sql("UPDATE schedule_fire SET at = at - interval '2 hours'")
        assert await store.purge_fires(s, older_than_s=3600, batch=1) == 1
        assert len(await store.list_fires(s, "s1")) == 1


async def test_a_due_schedule_is_locked_by_one_transaction_and_the_scheduler_lock_by_one_process(pg: Pg) -> None:
    async with pg.auto() as s:
        now = await store.db_now(s)
        await store.create_schedule(s, new_schedule(next_run_at=now))
    async with pg.tx() as a, pg.tx() as b:
        assert await store.try_scheduler_lock(a)
        assert not await store.try_scheduler_lock(b)
        row = await store.lock_due_schedule(a, "s1", now)
        assert row is not None and row.name == "s1"
        assert await store.lock_due_schedule(b, "s1", now) is None, "held by a: skipped"
        assert await store.lock_due_schedule(a, "s1", now - timedelta(seconds=1)) is None, "not due then"
        await a.rollback()
        assert await store.try_scheduler_lock(b)
        await b.rollback()


def test_storable_escapes_what_text_refuses_and_bounds_the_length() -> None:
    assert store.storable("a\x00b") == "a\\x00b"
    assert store.storable("x\ud800y") == "x\\ud800y"
    assert store.storable("é" * 10, limit=3) == "ééé"


def test_every_store_function_is_called_here() -> None:
    """Each function of the store has its test in this module (a new one without one fails here)."""
    source = Path(__file__).read_text(encoding="utf-8")
    functions = [
        name
        for name, fn in inspect.getmembers(store, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == store.__name__
    ]
    assert len(functions) >= 15
    untested = [name for name in functions if f"store.{name}(" not in source]
    assert not untested, f"store functions without a test here: {untested}"


# ---- named queues (migration 0007) ------------------------------------------------------------------------------


async def test_queue_counters_pause_and_the_claim_of_a_paused_queue(pg: Pg) -> None:
    a1, a2, b1, d1 = await create(pg, new(queue="a"), new(queue="a"), new(queue="b", delay_s=60.0), new())
    assert (a1.queue, b1.queue, d1.queue) == ("a", "b", "default")
    await claim(pg, a1)
    async with pg.auto() as s:
        rows = {q.name: q for q in await store.list_queues(s)}
        assert set(rows) == {"a", "b", "default"}
        assert (rows["a"].pending, rows["a"].running, rows["a"].retrying) == (1, 1, 0)
        assert rows["a"].oldest_due_at == a2.run_at
        assert rows["b"].pending == 1 and rows["b"].oldest_due_at is None, "b's task is not due yet"
        assert rows["default"].pending == 1
        assert not any(q.paused for q in rows.values()) and rows["a"].workers == 0
        assert [q.oldest_due_at for q in await store.list_queues(s, oldest=False)] == [None, None, None]
        await store.set_queue_paused(s, "a", paused=True)
        await store.set_queue_paused(s, "empty", paused=True)
        [first] = [q.paused_at for q in await store.list_queues(s) if q.name == "a"]
        await store.set_queue_paused(s, "a", paused=True)
        assert [q.paused_at for q in await store.list_queues(s) if q.name == "a"] == [first], "a second pause"
        assert await store.paused_queues(s) == ["a", "empty"]
    # The claim refuses a paused queue's task and returns it with the unserved ones, untouched.
    claimed, unserved = await store.claim_batch(
        pg.writer, [JobRef(a2.id, 1), JobRef(d1.id, 1)], worker_id="w1", types=["add"]
    )
    assert [c.id for c in claimed] == [d1.id]
    assert unserved == [
        store.Unserved(
            id=a2.id, generation=1, type="add", priority=Priority.normal, queue="a", concurrency_key=None, limited=False
        )
    ]
    assert (await pg.row(a2.id)).status is TaskStatus.pending
    # The heartbeat advertises the worker's queues and brings back the paused ones.
    expires, paused = await store.heartbeat_paused(
        pg.writer, "w9", hostname="h", pid=1, lease_s=30, task_types={"add": "f1"}, queues=["b"]
    )
    assert paused == ["a", "empty"] and expires is not None
    async with pg.auto() as s:
        await store.set_queue_paused(s, "a", paused=False)
        rows = {q.name: q for q in await store.list_queues(s)}
        assert rows["a"].paused is False and rows["a"].paused_at is None
        assert rows["b"].workers == 1 and rows["a"].workers == 0
        assert await store.paused_queues(s) == ["empty"]
    assert pg.sql("SELECT queues FROM worker WHERE id = 'w9'") == [(["b"],)]
    async with pg.auto() as s:
        assert await store.served_queues(s) == frozenset({"b"})
        assert (await store.stats(s)).waiting_no_queue_worker == 1, "a2 waits in a queue nobody takes from"
        await store.heartbeat(pg.writer, "w10", hostname="h", pid=1, lease_s=30, task_types={"add": "f1"})
        assert await store.served_queues(s) is None, "a worker without a list takes from every queue"
        assert (await store.stats(s)).waiting_no_queue_worker == 0
    # The counters agree with a full count.
    assert pg.sql(
        "SELECT queue, status, sum(n)::int FROM task_queue_count GROUP BY queue, status HAVING sum(n) <> 0 "
        "ORDER BY 1, 2"
    ) == pg.sql(
        "SELECT queue, status, count(*)::int FROM task WHERE status IN ('pending', 'retrying', 'running') "
        "GROUP BY queue, status ORDER BY 1, 2"
    )


# ---- per-key limits (migration 0008) ------------------------------------------------------------------------------


@dataclass
class _Done:
    """A successful outcome (store.Completion)."""

    id: uuid.UUID
    generation: int
    attempt: int
    result: str
    detail: str


async def test_the_claim_takes_a_slot_of_the_key_refuses_over_the_limit_and_every_exit_gives_it_back(pg: Pg) -> None:
    a1, a2, a3, b1, free = await create(
        pg,
        new(concurrency_key="a"),
        new(concurrency_key="a"),
        new(concurrency_key="a"),
        new(concurrency_key="b"),
        new(),
    )
    async with pg.auto() as s:
        row = await store.put_limit(s, "a", max_running=2, rate_count=None, rate_per_s=None)
        assert (row.key, row.max_running, row.running, row.origin, row.tokens_now) == ("a", 2, 0, "api", None)
    jobs = [JobRef(t.id, 1) for t in (a1, a2, a3, b1, free)]
    claimed, unserved = await store.claim_batch(pg.writer, jobs, worker_id="w1", types=["add"])
    assert {b1.id, free.id} < {c.id for c in claimed} and len(claimed) == 4, "one of a's three is over its limit"
    assert {c.concurrency_key for c in claimed} == {"a", "b", None}
    [refused] = [t for t in (a1, a2, a3) if t.id not in {c.id for c in claimed}]
    # Named so that the rest of the test reads in order: a1 and a2 run, a3 waits.
    a1, a2, a3 = sorted((a1, a2, a3), key=lambda t: t.id == refused.id)
    assert unserved == [
        store.Unserved(
            id=a3.id,
            generation=1,
            type="add",
            priority=Priority.normal,
            queue="default",
            concurrency_key="a",
            limited=True,
        )
    ]
    assert (await pg.row(a3.id)).status is TaskStatus.pending and (await pg.row(a3.id)).attempts == 0
    async with pg.auto() as s:
        keys = {k.key: k for k in await store.get_keys(s, ["a", "b", "none"])}
        assert set(keys) == {"a"} and keys["a"].running == 2, "b has no limit: no row"
    # Each way out of running gives the slot back: a completion, a failed attempt, a shutdown requeue.
    by_id = {c.id: c for c in claimed}
    c1 = by_id[a1.id]
    done = await store.complete_batch(pg.writer, [_Done(c1.id, c1.generation, c1.attempts, "1", "done")])
    assert done == {a1.id: TaskStatus.completed}
    async with pg.auto() as s:
        assert (await store.get_key(s, "a")).running == 1  # type: ignore[union-attr]
    [c3], _ = await store.claim_batch(pg.writer, [JobRef(a3.id, 1)], worker_id="w1", types=["add"])
    async with pg.tx() as s:
        failed = await store.fail_attempt(s, attempt(by_id[a2.id]), error="boom", delay_s=0.0, retry=True)
        requeued = await store.requeue(s, attempt(c3), worker_id="w1", max_requeues=3)
        await s.commit()
    assert failed is not None and failed.status is TaskStatus.retrying
    assert requeued is not None and requeued.status is TaskStatus.pending
    async with pg.auto() as s:
        assert (await store.get_key(s, "a")).running == 0  # type: ignore[union-attr]
        assert [k.key for k in await store.list_limits(s)] == ["a"]
        assert await store.delete_limit(s, "a") is True
        assert await store.delete_limit(s, "a") is False
        assert await store.list_limits(s) == []
        assert await store.get_key(s, "never") is None
    # Without a limit, nothing holds a task of the key back.
    [again] = await create(pg, new(concurrency_key="a"))
    [c], _ = await store.claim_batch(pg.writer, [JobRef(again.id, 1)], worker_id="w1", types=["add"])
    assert c.id == again.id


async def test_claims_of_overlapping_keys_from_two_writers_queue_behind_each_other(pg: Pg) -> None:
    """Two claims at once, each of tasks of the same keys in opposite orders: both finish (the keys' locks are
    taken in one order), and together they start no more than each key's limit."""
    async with pg.auto() as s:
        for key in ("x", "y", "z"):
            await store.put_limit(s, key, max_running=2, rate_count=None, rate_per_s=None)
    tasks = await create(pg, *(new(concurrency_key=k) for k in "xyz" * 4))
    other = PgWriter(pg.settings, name="other")
    try:
        first = [JobRef(t.id, 1) for t in tasks]
        results = await asyncio.gather(
            store.claim_batch(pg.writer, first, worker_id="w1", types=["add"]),
            store.claim_batch(other, list(reversed(first)), worker_id="w2", types=["add"]),
        )
    finally:
        await other.close()
    claimed = [c for got, _ in results for c in got]
    assert sorted(c.concurrency_key or "" for c in claimed) == ["x", "x", "y", "y", "z", "z"]
    assert len({c.id for c in claimed}) == 6


async def test_a_rate_refuses_claims_once_its_tokens_are_spent_and_a_type_default_never_replaces_a_put(pg: Pg) -> None:
    tasks = await create(pg, *(new(concurrency_key="r") for _ in range(3)))
    limit = store.TypeLimit(key="r", max_running=None, rate_count=2, rate_per_s=3600.0)
    async with pg.auto() as s:
        assert await store.apply_type_limits(s, [limit]) == ["r"]
        assert await store.apply_type_limits(s, [limit]) == [], "unchanged: nothing written"
        row = await store.get_key(s, "r")
        assert row is not None and row.origin == "type" and row.tokens_now == pytest.approx(2.0, abs=0.01)
    claimed, unserved = await store.claim_batch(
        pg.writer, [JobRef(t.id, 1) for t in tasks], worker_id="w1", types=["add"]
    )
    assert len(claimed) == 2 and [u.limited for u in unserved] == [True], "two tokens, three tasks"
    async with pg.auto() as s:
        row = await store.get_key(s, "r")
        assert row is not None and row.tokens_now is not None and row.tokens_now < 0.01
        assert row.next_token_in_s is not None and 1700 < row.next_token_in_s <= 1800, "one token per 1800 s"
        await store.put_limit(s, "r", max_running=5, rate_count=None, rate_per_s=None)
        assert await store.apply_type_limits(s, [limit]) == [], "a PUT wins over the type's default"
        row = await store.get_key(s, "r")
        assert row is not None and (row.origin, row.max_running, row.rate_count) == ("api", 5, None)


# ---- webhooks (migration 0011) ----------------------------------------------------------------------------------


async def test_webhooks_events_become_deliveries_that_are_leased_recorded_redelivered_and_purged(pg: Pg) -> None:
    async with pg.auto() as s:
        hook = await store.create_webhook(
            s, id=uuid.uuid4(), url="http://r/x", events=["task.completed"], filter={"type": ["add"]}, secret="whsec_a"
        )
        assert (await store.get_webhook(s, hook.id)) == hook and hook.filter == {"type": ["add"]}
        assert [w.id for w in await store.list_webhooks(s)] == [hook.id]
        start, gaps = await store.webhook_cursor(s)
        assert gaps == {} and start == await store.max_event_id(s), "migration 0011 starts at the newest event"
    plain, called = await create(pg, new(), new(callback_url="http://cb/y"))
    async with pg.auto() as s:
        events = await store.webhook_events(s, start, wanted=[TaskStatus.pending])
        assert [e.id for e in events] == sorted(e.id for e in events) and len(events) == 2
        assert {e.task.id for e in events if e.task is not None} == {plain.id, called.id}, "pending is wanted"
        events = await store.webhook_events(s, start, wanted=[])
        assert all(e.task is None for e in events), "nobody wants pending: no task is read"
        assert (await store.webhook_events(s, events[-1].id, wanted=[], gaps=[events[0].id]))[0].id == events[0].id
        async with pg.tx() as t:
            assert await store.try_webhook_lock(t)
            async with pg.tx() as other:
                assert not await store.try_webhook_lock(other)
            await store.save_webhook_cursor(t, events[-1].id, {events[0].id: 1.5})
            await t.commit()
        assert await store.webhook_cursor(s) == (events[-1].id, {events[0].id: 1.5})
        d1, d2 = uuid.uuid4(), uuid.uuid4()
        await store.insert_deliveries(
            s,
            [
                store.NewDelivery(
                    id=d1, webhook_id=hook.id, task_id=plain.id, url=hook.url, event="task.completed", body="{}"
                ),
                store.NewDelivery(
                    id=d2, webhook_id=None, task_id=called.id, url="http://cb/y", event="task.failed", body="[]"
                ),
            ],
            max_age_s=3600,
        )
        due = await store.lease_due_deliveries(s, limit=10, lease_s=60)
        assert {(d.id, d.secret) for d in due} == {(d1, "whsec_a"), (d2, None)}
        assert await store.lease_due_deliveries(s, limit=10, lease_s=60) == [], "leased: not due again yet"
        ok = dict(delivered=True, status_code=200, latency_ms=1.5, error=None, retry_in_s=0.0)
        assert await store.record_attempt(s, d1, attempts=0, **ok) == "delivered"
        assert await store.record_attempt(s, d1, attempts=0, **ok) is None, "recorded once"
        bad = dict(delivered=False, status_code=500, latency_ms=2.0, error="HTTP 500")
        assert await store.record_attempt(s, d2, attempts=0, retry_in_s=10, **bad) == "pending"
        assert await store.record_attempt(s, d2, attempts=1, retry_in_s=7200, **bad) == "failed", "past its expiry"
        [row] = await store.list_deliveries(s, hook.id)
        assert (row.status, row.attempts, row.last_status_code, row.last_latency_ms) == ("delivered", 1, 200, 1.5)
        [cb] = await store.list_task_deliveries(s, called.id)
        assert cb.webhook_id is None and cb.status == "failed" and cb.attempts == 2
        assert [a["status_code"] for a in cb.attempt_log] == [500, 500] and cb.last_error == "HTTP 500"
        again = await store.redeliver(s, d2, max_age_s=3600)
        assert again is not None and again.status == "pending" and again.attempts == 2
        assert [d.id for d in await store.lease_due_deliveries(s, limit=10, lease_s=60)] == [d2]
        assert await store.redeliver(s, uuid.uuid4(), max_age_s=1) is None
        assert (await store.get_delivery(s, d1)) == row
        assert await store.purge_deliveries(s, older_than_s=0) == 1, "the delivered one; the pending one stays"
        assert await store.delete_webhook(s, hook.id) and not await store.delete_webhook(s, hook.id)
        assert await store.get_delivery(s, d2) is not None, "a callback's delivery belongs to no webhook"


# ---- bulk actions (migration 0010) ------------------------------------------------------------------------------


async def test_a_bulk_retry_is_a_compare_and_set_per_row_resetting_what_a_retry_resets(pg: Pg) -> None:
    failed, canceled, pending, running, done, single = await create(pg, new(), new(), new(), new(), new(), new())
    worn = "status = 'failed', lost_attempts = 3, quarantined = TRUE, result_expired_at = now(), attempts = 2"
    pg.sql(f"UPDATE task SET {worn} WHERE id = ANY(%s)", ([failed.id, single.id],))
    pg.sql("UPDATE task SET status = 'canceled' WHERE id = %s", (canceled.id,))
    pg.sql("UPDATE task SET status = 'completed' WHERE id = %s", (done.id,))
    await claim(pg, running)
    every = [t.id for t in (failed, canceled, pending, running, done)]
    async with pg.auto() as s:
        op = await store.create_bulk(
            s, action="retry", filter_json="{}", priority=None, total=5, requested_by="anonymous", request_id="r"
        )
        retried = await store.bulk_step(s, op, every, last=None, finished=True, detail="retried (bulk)")
        again = await store.retry(s, single.id)
    assert {r.id for r in retried} == {failed.id, canceled.id}, "only the failed and the canceled"
    assert again is not None
    for row in (*(r for r in retried if r.id == failed.id), again):
        assert (row.status, row.attempts, row.lost_attempts, row.quarantined) == (TaskStatus.pending, 0, 0, False)
        assert row.result_expired_at is None
    assert (await pg.row(running.id)).status is TaskStatus.running
    assert (await pg.row(done.id)).status is TaskStatus.completed


async def test_bulk_operations_walk_their_matching_tasks_by_keyset_and_record_progress(pg: Pg) -> None:
    rows = await create(pg, *(new(queue="q") for _ in range(5)), new(queue="other"))
    f = store.TaskFilter(status="pending", queue="q")
    async with pg.auto() as s:
        assert await store.count_matching(s, f) == 5
        assert await store.count_matching(s, store.TaskFilter(type="nope")) == 0
        op = await store.create_bulk(
            s,
            action="cancel",
            filter_json='{"queue": "q"}',
            priority=None,
            total=5,
            requested_by="anonymous",
            request_id="r1",
        )
        assert op.status == "running" and op.total == 5 and op.filter == {"queue": "q"}
        assert await store.get_bulk(s, op.id) == op
        assert [b.id for b in await store.list_bulk(s)] == [op.id]
        since = await store.db_now(s)
    late = await create(pg, new(queue="q"))
    async with pg.auto() as s:
        first = await store.matching_page(s, f, cutoff=op.cutoff, after=None, limit=3)
        rest = await store.matching_page(s, f, cutoff=op.cutoff, after=first[-1], limit=3)
    assert len(first) == 3 and len(rest) == 2, "the task created after the operation is not its"
    assert {i for _, i in first + rest} == {r.id for r in rows[:5]} and late[0].id not in {i for _, i in rest}
    assert first == sorted(first, reverse=True), "newest first"
    async with pg.auto() as s:
        current = await store.next_bulk(s)
        assert current is not None and current.id == op.id
        [first_row] = await create(pg, new(queue="q", delay_s=0))  # not in the batch: untouched
        changed = await store.bulk_step(
            s, current, [i for _, i in first], last=first[-1], finished=False, detail="canceled (bulk)"
        )
        assert {r.id for r in changed} == {i for _, i in first} and {r.status for r in changed} == {TaskStatus.canceled}
        assert (await pg.row(first_row.id)).status is TaskStatus.pending
        # A step whose page was read before another moved the cursor changes nothing.
        assert await store.bulk_step(s, current, [i for _, i in rest], last=rest[-1], finished=True, detail="x") == []
        moved = await store.bulk_changed_since(s, since)
        assert [(b.id, b.done, b.cursor_id) for b in moved] == [(op.id, 3, first[-1][1])]
        after = await store.get_bulk(s, op.id)
        assert after is not None
        pg.sql("UPDATE task SET status = 'completed' WHERE id = %s", (rest[0][1],))
        await store.bulk_step(s, after, [i for _, i in rest], last=rest[-1], finished=True, detail="canceled (bulk)")
        final = await store.get_bulk(s, op.id)
    assert final is not None and (final.status, final.done, final.failed) == ("completed", 4, 1)
    assert final.finished_at is not None


# ---- crash quarantine and results that expire (migration 0012) ---------------------------------------------------


async def _lose(pg: Pg, row: TaskRow, *, max_lost: int = 3) -> TaskRow:
    """One attempt of `row` lost: claimed by a worker with no live lease, then reaped by another."""
    await claim(pg, row, "dead")
    async with pg.tx() as s:
        [reaped] = await store.reap_expired(s, "me", max_lost=max_lost)
        await s.commit()
    return reaped


async def test_reap_expired_quarantines_a_task_at_its_max_lost_th_lost_attempt_whatever_retries_are_left(
    pg: Pg,
) -> None:
    [row] = await create(pg, new(max_retries=10))
    for n in (1, 2):
        row = await _lose(pg, row)
        assert (row.status, row.lost_attempts, row.attempts, row.quarantined) == (TaskStatus.retrying, n, n, False)
        assert row.error == "worker lost: its lease expired" and row.finished_at is None
    row = await _lose(pg, row)
    assert (row.status, row.lost_attempts, row.attempts, row.quarantined) == (TaskStatus.failed, 3, 3, True)
    assert row.error == "worker died during 3 attempts" and row.finished_at is not None
    assert (await pg.details(row.id))[-1] == (
        TaskStatus.failed,
        "quarantined: worker died during 3 attempts (TASKPROC_MAX_LOST_ATTEMPTS); not retried",
    )
    # An ordinary failed attempt in between counts against max_retries but not as a lost one.
    [other] = await create(pg, new(max_retries=10))
    other = await _lose(pg, other)
    c = await claim(pg, other, "w1")
    async with pg.tx() as s:
        failed = await store.fail_attempt(s, attempt(c), error="E: handler", delay_s=0.0, retry=True)
        await s.commit()
    assert failed is not None and (failed.status, failed.lost_attempts, failed.attempts) == (TaskStatus.retrying, 1, 2)
    # A retry starts afresh: no lost attempts, not quarantined.
    async with pg.auto() as s:
        again = await store.retry(s, row.id)
    assert again is not None
    assert (again.lost_attempts, again.quarantined, again.status) == (0, False, TaskStatus.pending)


async def test_reap_expired_cancels_rather_than_quarantines_a_task_whose_cancel_was_requested(pg: Pg) -> None:
    [row] = await create(pg, new(max_retries=10))
    row = await _lose(pg, row, max_lost=2)
    c = await claim(pg, row, "dead")
    pg.sql("UPDATE task SET cancel_requested = TRUE WHERE id = %s", (c.id,))
    async with pg.tx() as s:
        [reaped] = await store.reap_expired(s, "me", max_lost=2)
        await s.commit()
    assert (reaped.status, reaped.quarantined, reaped.lost_attempts) == (TaskStatus.canceled, False, 2)


async def test_expire_results_drops_results_past_their_ttl_in_batches_and_keeps_the_rest(pg: Pg) -> None:
    due1, due2, young, no_ttl, no_result, waiting = await create(
        pg,
        new(result_ttl_s=5.0),
        new(result_ttl_s=5.0),
        new(result_ttl_s=60.0),
        new(),
        new(result_ttl_s=5.0),
        new(result_ttl_s=1.0),
    )
    assert due1.result_ttl_s == 5.0 and no_ttl.result_ttl_s is None and due1.result_expired_at is None
    finished = [due1.id, due2.id, young.id, no_ttl.id, no_result.id]
    pg.sql(
        "UPDATE task SET status = 'completed', result = '{\"x\": 1}', finished_at = now() - interval '10 seconds' "
        "WHERE id = ANY(%s)",
        (finished,),
    )
    pg.sql("UPDATE task SET result = NULL WHERE id = %s", (no_result.id,))
    pg.sql("UPDATE task SET result = '{\"x\": 1}' WHERE id = %s", (waiting.id,))  # not finished: never expires
    events_before = pg.sql("SELECT count(*) FROM task_event")
    async with pg.auto() as s:
        assert await store.expire_results(s, batch=1) == 1
        assert await store.expire_results(s, batch=1) == 1
        assert await store.expire_results(s, batch=1) == 0
    for task in (due1, due2):
        row = await pg.row(task.id)
        assert row.result is None and row.result_expired_at is not None and row.status is TaskStatus.completed
    for task in (young, no_ttl, waiting):
        row = await pg.row(task.id)
        assert row.result == {"x": 1} and row.result_expired_at is None
    assert (await pg.row(no_result.id)).result_expired_at is None, "nothing to drop, nothing marked"
    assert pg.sql("SELECT count(*) FROM task_event") == events_before, "the history stays as it was"


async def test_expire_results_skips_rows_another_transaction_holds(pg: Pg) -> None:
    rows = await create(pg, *(new(result_ttl_s=1.0) for _ in range(2)))
    pg.sql(
        "UPDATE task SET status = 'failed', result = '1', finished_at = now() - interval '1 minute' WHERE id = ANY(%s)",
        ([r.id for r in rows],),
    )
    locked = min(r.id for r in rows)
    async with pg.tx() as holder:
        await holder.execute(sa.text("SELECT 1 FROM task WHERE id = :id FOR UPDATE"), {"id": locked})
        async with pg.auto() as s:
            assert await store.expire_results(s, batch=10) == 1
        await holder.rollback()
    assert (await pg.row(locked)).result == 1
    # A retry of the task whose result expired starts afresh: no longer expired.
    [expired] = [r.id for r in rows if r.id != locked]
    assert (await pg.row(expired)).result_expired_at is not None
    async with pg.auto() as s:
        again = await store.retry(s, expired)
    assert again is not None and again.result_expired_at is None and again.result is None


# ---- stats history (migration 0016) -----------------------------------------------------------------------------


async def test_stats_samples_are_taken_once_per_interval_listed_and_pruned(pg: Pg) -> None:
    async with pg.tx() as s:
        assert await store.try_stats_sample_lock(s)
        await store.prune_stats_samples(s, keep_s=0)
        first = await store.take_stats_sample(s, interval_s=10)
        assert first is not None and first.interval_s > 0
        assert await store.take_stats_sample(s, interval_s=10) is None, "sampled less than half an interval ago"
        assert [r.at for r in await store.stats_samples(s, window_s=3600)] == [first.at]
        await s.rollback()
    async with pg.tx() as s:
        assert await store.stats_samples(s, window_s=3600) == [], "rolled back"
