"""Crash and shutdown safety with real worker processes: kill -9, SIGTERM, and a late worker; the compare-and-set
checks that need no process boundary run with an arq worker in process.

Every stack here runs with a 3 s lease (TASKPROC_LEASE_S) and a 5 s shutdown grace, set by tests/support.py.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from taskproc import queue

from conftest import StackFactory
from inprocess import InProcessFactory, wait_until, worker_runtime
from support import Proc, Stack, wait_for

pytestmark = pytest.mark.slow

LEASE_S = 3.0


def running_on(stack: Stack, task_id: str, timeout: float = 30.0) -> Proc:
    """Wait until the task is running and return the worker process that claimed it."""
    stack.wait_status(task_id, "running", timeout=timeout)
    [(worker_id,)] = stack.sql("SELECT worker_id FROM task WHERE id = %s", (task_id,))
    pid = int(worker_id.split("-")[-2])
    for proc in stack.workers:
        if proc.pid == pid:
            return proc
    raise AssertionError(f"task {task_id} runs on {worker_id}, not one of our workers")


def statuses(events: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in events]


def terminal_events(events: list[dict[str, Any]]) -> int:
    return sum(e["status"] in ("completed", "failed", "canceled") for e in events)


def test_sigkill_mid_task_is_rerun_within_the_lease(stack_factory: StackFactory) -> None:
    """A worker killed with SIGKILL (as by the OOM killer): its task is recovered by another worker within
    about one lease, although the task's own timeout is ten minutes, and the lost try counts as an attempt.
    A task with no retries left fails instead of staying `running` forever."""
    with stack_factory(workers=1) as stack:
        task = stack.submit("sleep", {"duration_ms": 3000}, timeout_s=600, max_retries=3)
        last_try = stack.submit("sleep", {"duration_ms": 60_000}, timeout_s=600, max_retries=0)
        victim = running_on(stack, task["id"])
        assert running_on(stack, last_try["id"]) is victim
        survivor = stack.start_worker()
        stack.wait_ready(2)
        victim.kill()
        killed_at = time.monotonic()

        def rerun() -> dict[str, Any] | None:
            t = stack.get(task["id"])
            return t if t["status"] != "retrying" and t["attempts"] == 2 else None

        wait_for(rerun, timeout=LEASE_S * 2 + 5, what="the task to run again on the surviving worker")
        recovered_after = time.monotonic() - killed_at
        print(f"recovered {recovered_after:.1f}s after the kill (lease {LEASE_S}s)")
        # Lease 3 s, reaper every 0.5 s: generous margin for a loaded two-core machine.
        assert recovered_after < LEASE_S * 2 + 5
        done = stack.wait_status(task["id"], {"completed", "failed"}, timeout=30)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2
        events = stack.events(task["id"])
        assert statuses(events) == ["pending", "running", "retrying", "running", "completed"], events
        assert "worker lost" in (events[2]["detail"] or "")
        assert f"-{survivor.pid}-" in (events[3]["detail"] or "")

        failed = stack.wait_status(last_try["id"], {"failed", "completed"}, timeout=10)
        assert failed["status"] == "failed"
        assert failed["attempts"] == 1
        assert "worker lost" in (failed["error"] or "")


def test_sigterm_requeues_a_task_longer_than_the_grace_without_spending_an_attempt(
    stack_factory: StackFactory,
) -> None:
    """SIGTERM (Kubernetes scale-down): the worker stops taking tasks, waits the grace (3 s here), then
    puts its unfinished task back to pending with its attempt given back; another worker completes it."""
    with stack_factory(workers=2, env={"TASKPROC_SHUTDOWN_GRACE_S": "3"}) as stack:
        task = stack.submit("sleep", {"duration_ms": 8000}, timeout_s=600, max_retries=0)
        first = running_on(stack, task["id"])
        [second] = [w for w in stack.workers if w is not first]
        # A task submitted after the signal must go to the other worker, not the one shutting down.
        first.signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        late = stack.submit("add", {"a": 1, "b": 1})
        assert stack.wait_status(late["id"], "completed", timeout=20)["result"] == {"sum": 2}
        assert f"-{second.pid}-" in (stack.events(late["id"])[1]["detail"] or "")

        assert first.wait(timeout=30) == 0, first.tail()
        stopped_after = time.monotonic() - signalled_at
        assert 2.5 < stopped_after < 15.0, stopped_after
        done = stack.wait_status(task["id"], {"completed", "failed"}, timeout=40)
        # max_retries=0: had the aborted try been counted, the task would have failed.
        assert done["status"] == "completed", done
        assert done["attempts"] == 1
        events = stack.events(task["id"])
        assert statuses(events) == ["pending", "running", "pending", "running", "completed"], events
        assert "shut down" in (events[2]["detail"] or "")
        [(started_by,)] = stack.sql(
            "SELECT detail FROM task_event WHERE task_id = %s AND status = 'running' ORDER BY id DESC LIMIT 1",
            (task["id"],),
        )
        assert f"-{second.pid}-" in started_by
        # The stopped worker unregistered itself.
        assert stack.sql("SELECT count(*) FROM worker WHERE pid = %s", (first.pid,)) == [(0,)]


def test_sigterm_lets_a_short_task_finish(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack:
        task = stack.submit("sleep", {"duration_ms": 1500}, timeout_s=600)
        worker = running_on(stack, task["id"])
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.tail()
        done = stack.get(task["id"])
        assert done["status"] == "completed", done
        assert done["attempts"] == 1
        assert statuses(stack.events(task["id"])) == ["pending", "running", "completed"]


def test_a_late_worker_cannot_overwrite_a_newer_state(stack_factory: StackFactory) -> None:
    """A worker frozen (SIGSTOP) past its lease is presumed dead; its task is re-run and completed by the
    other worker. When the frozen worker wakes up and finishes its stale try, the compare-and-set on the
    row rejects its write: the terminal state is recorded once."""
    with stack_factory(workers=2) as stack:
        task = stack.submit("sleep", {"duration_ms": 2500}, timeout_s=600, max_retries=3)
        frozen = running_on(stack, task["id"])
        frozen.signal(signal.SIGSTOP)
        try:
            done = stack.wait_status(task["id"], {"completed", "failed"}, timeout=LEASE_S * 2 + 20)
        finally:
            frozen.signal(signal.SIGCONT)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2
        wait_for(
            lambda: "stale completion ignored" in frozen.log_path.read_text(),
            timeout=30,
            what="the frozen worker to try (and fail) to record its completion",
        )
        after = stack.get(task["id"])
        assert after["status"] == "completed"
        assert after["updated_at"] == done["updated_at"]
        events = stack.events(task["id"])
        assert terminal_events(events) == 1, events
        assert statuses(events) == ["pending", "running", "retrying", "running", "completed"], events
        # The woken worker carries on normally.
        again = stack.submit("add", {"a": 2, "b": 2})
        assert stack.wait_status(again["id"], "completed", timeout=20)["result"] == {"sum": 4}


async def test_a_write_for_a_stale_generation_is_ignored(inprocess_factory: InProcessFactory) -> None:
    """Compare-and-set directly: while a task runs, its row moves to a newer generation (as a reaper or a
    cancel would); the running try's completion must not land. (In process: no process boundary matters.)"""
    async with inprocess_factory(workers=1) as stack:
        task = await stack.submit("sleep", {"duration_ms": 1500}, timeout_s=600)
        await stack.wait_status(task["id"], "running")
        stack.sql(
            "UPDATE task SET generation = generation + 1, status = 'failed', error = 'decided elsewhere', "
            "finished_at = now() WHERE id = %s",
            (task["id"],),
        )

        async def stale_try_finished() -> bool:
            return "stale completion ignored" in stack.logs()

        await wait_until(stale_try_finished, timeout=20, what="the worker to finish its stale try")
        after = await stack.get(task["id"])
        assert after["status"] == "failed"
        assert after["error"] == "decided elsewhere"
        assert after["result"] is None
        assert "completed" not in statuses(await stack.events(task["id"]))


async def test_a_claim_whose_worker_is_not_running_it_is_handed_back(inprocess_factory: InProcessFactory) -> None:
    """The row says `running` on a live worker that does not actually run it (its claim committed but the
    answer was lost, or its outcome could not be written before the attempt was cancelled): the worker notices
    within a reaper tick, puts it back to pending with the attempt given back, and it runs normally. Without
    this the task would stay `running` forever, since the worker's lease never expires. (In process.)"""
    async with inprocess_factory(workers=1) as stack:
        task = await stack.submit("add", {"a": 5, "b": 6}, delay_s=3600, max_retries=0)
        [(worker_id,)] = stack.sql("SELECT id FROM worker")
        stack.sql(
            "UPDATE task SET status = 'running', attempts = 1, worker_id = %s, started_at = now() WHERE id = %s",
            (worker_id, task["id"]),
        )
        done = await stack.wait_status(task["id"], {"completed", "failed"}, timeout=30)
        assert done["status"] == "completed", done
        assert done["result"] == {"sum": 11}
        assert done["attempts"] == 1
        events = await stack.events(task["id"])
        assert statuses(events) == ["pending", "pending", "running", "completed"], events
        assert "no longer running there" in (events[1]["detail"] or "")


async def test_one_reaper_pass_hands_back_a_claim_this_worker_does_not_run_and_it_then_runs(
    inprocess_factory: InProcessFactory,
) -> None:
    """The same orphan, stepped: a bare WorkerRuntime whose claim committed but never reached it (the row is
    `running` under its id, nothing runs it here). One reaper pass hands it back with the attempt given back;
    the next tick, claim and execute run it once."""
    async with inprocess_factory(workers=0) as stack, worker_runtime(stack.settings) as rt:
        task = await stack.submit("add", {"a": 5, "b": 6}, max_retries=0)
        stack.sql(
            "UPDATE task SET status = 'running', attempts = 1, worker_id = %s, started_at = now() WHERE id = %s",
            (rt.worker_id, task["id"]),
        )
        assert await rt.reap_lost() == 1
        back = await stack.get(task["id"])
        assert (back["status"], back["attempts"], back["started_at"]) == ("pending", 0, None), back
        assert await rt.reap_lost() == 0, "handed back once"

        tick = await rt.ticker.tick(10)
        assert [job for job, _ in tick.taken] == [queue.job_id(uuid.UUID(task["id"]), 2)], tick
        [claimed] = await rt.claim(tick.taken)
        await rt.execute(claimed)
        done = await stack.get(task["id"])
        assert (done["status"], done["result"], done["attempts"]) == ("completed", {"sum": 11}, 1), done
        events = await stack.events(task["id"])
        assert statuses(events) == ["pending", "pending", "running", "completed"], events
        assert "no longer running there" in (events[1]["detail"] or "")


TASK_MODULE = '''
import asyncio

from pydantic import BaseModel

from taskproc.tasks.registry import TaskContext, task_type


class Empty(BaseModel):
    pass


@task_type("own_timeout", payload=Empty)
async def own_timeout(payload: Empty, ctx: TaskContext) -> None:
    """Times out on its own (asyncio.wait_for inside the handler)."""
    await asyncio.wait_for(asyncio.sleep(10), 0.05)


@task_type("own_cancel", payload=Empty)
async def own_cancel(payload: Empty, ctx: TaskContext) -> None:
    """Raises CancelledError although nobody cancelled it."""
    raise asyncio.CancelledError("handler gave up")


@task_type("nul_result", payload=Empty)
async def nul_result(payload: Empty, ctx: TaskContext) -> dict[str, str]:
    """Valid JSON that Postgres' jsonb refuses to store."""
    return {"text": "a\\u0000b"}
'''


def test_handler_raising_timeout_or_cancelled_error_fails_the_attempt_instead_of_looping(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    """Only the task's own timeout means "timed out", and only a real cancellation means "aborted": the same
    exceptions raised by a handler are ordinary failures, retried per max_retries, never re-run forever."""
    (tmp_path / "reliability_task_types.py").write_text(TASK_MODULE)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "TASKPROC_TASK_MODULES": "reliability_task_types",
    }
    with stack_factory(workers=1, env=env) as stack:
        timeout = stack.submit("own_timeout", {}, max_retries=1, timeout_s=60)
        cancel = stack.submit("own_cancel", {}, max_retries=0)
        t = stack.wait_status(timeout["id"], {"failed", "completed", "canceled"}, timeout=30)
        c = stack.wait_status(cancel["id"], {"failed", "completed", "canceled"}, timeout=30)
        assert (t["status"], t["attempts"]) == ("failed", 2), t
        assert t["error"].startswith("TimeoutError"), t
        assert (c["status"], c["attempts"]) == ("failed", 1), c
        assert "CancelledError: handler gave up" in c["error"]
        assert statuses(stack.events(cancel["id"])) == ["pending", "running", "failed"]


def test_a_job_taken_by_a_worker_killed_before_it_claimed_the_task_is_queued_again(
    stack_factory: StackFactory,
) -> None:
    """A worker killed after it took jobs off the queue (into the running set) but before its claim committed:
    the rows are still pending and no queue holds their jobs. Once a job has been taken for longer than a lease,
    the reconciler puts it back in the queue if its task still waits, and deletes it if the task moved on, so
    stale entries neither hide work nor count as backlog."""
    with stack_factory(workers=0) as stack:
        waiting = stack.submit("add", {"a": 2, "b": 3})
        finished = stack.submit("add", {"a": 0, "b": 0})
        stack.sql("UPDATE task SET status = 'completed', finished_at = now() WHERE id = %s", (finished["id"],))
        ghost = f"{uuid.uuid4()}.1"  # a job whose task was deleted
        a_minute_ago = queue.now_ms() - 60_000
        with redis.Redis.from_url(stack.redis_url) as r:
            taken = [f"{waiting['id']}.1", f"{finished['id']}.1", ghost]
            r.zrem(queue.QUEUE_KEY, *taken)
            r.zadd(queue.RUNNING_KEY, dict.fromkeys(taken, a_minute_ago))
            assert r.zcard(queue.QUEUE_KEY) == 0

            stack.start_worker()
            done = stack.wait_status(waiting["id"], {"completed", "failed"}, timeout=30)
            assert done["status"] == "completed"
            assert done["result"] == {"sum": 5}
            assert done["attempts"] == 1
            wait_for(lambda: r.zcard(queue.RUNNING_KEY) == 0, timeout=20, what="the abandoned jobs to be deleted")
            assert r.zcard(queue.QUEUE_KEY) == 0
        assert statuses(stack.events(waiting["id"])) == ["pending", "running", "completed"]
        assert stack.get(finished["id"])["status"] == "completed"


def test_a_result_postgres_refuses_fails_its_task_and_spares_the_others_in_its_batch(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    """Successful outcomes are written in batches. A result Postgres will not store (jsonb has no \\u0000)
    must fail only its own task, permanently and with a clear error, and the worker must go on writing the
    outcomes around it."""
    (tmp_path / "reliability_task_types.py").write_text(TASK_MODULE)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "TASKPROC_TASK_MODULES": "reliability_task_types",
    }
    with stack_factory(workers=0, env=env) as stack:
        items = [{"type": "add", "payload": {"a": i, "b": 1}} for i in range(30)]
        items.insert(15, {"type": "nul_result", "payload": {}, "max_retries": 3})
        r = stack.client.post("/api/v1/tasks/batch", json={"tasks": items})
        assert r.status_code == 201, r.text
        tasks = r.json()["items"]
        stack.start_worker()
        done = [stack.wait_status(t["id"], {"completed", "failed", "canceled"}) for t in tasks]
        bad = done.pop(15)
        assert (bad["status"], bad["attempts"]) == ("failed", 1), bad
        assert bad["error"].startswith("result could not be stored"), bad["error"]
        assert [t["status"] for t in done] == ["completed"] * 30
        assert [t["result"] for t in done] == [{"sum": i + 1} for i in range(30)]
        later = stack.submit("add", {"a": 2, "b": 2})
        assert stack.wait_status(later["id"], {"completed", "failed"})["result"] == {"sum": 4}
