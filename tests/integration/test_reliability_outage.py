"""Outages of the backing services, with real processes: Redis restarted empty or down, Postgres stopped.

These tests stop and start the session's embedded servers (same port), which every stack shares; tests run one
at a time, and each one leaves the servers running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conftest import StackFactory
from support import Servers, Stack, wait_for

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed", "canceled"}


@contextmanager
def redis_stopped(servers: Servers) -> Iterator[None]:
    servers.redis.stop()
    try:
        yield
    finally:
        servers.redis.start()


@contextmanager
def postgres_stopped(servers: Servers) -> Iterator[None]:
    servers.pg.stop()
    try:
        yield
    finally:
        servers.pg.start()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    tree = [pid]
    for p in tree:
        tree += [c for c, parent in parents.items() if parent == p]
    return tree


@contextmanager
def postgres_frozen(servers: Servers) -> Iterator[None]:
    """Every Postgres process stopped (SIGSTOP): connections stay open but nothing answers, as when the server
    hangs or the network silently drops its packets."""
    assert servers.pg.pid is not None
    pids = process_tree(servers.pg.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def queue_size(stack: Stack) -> int:
    with redis.Redis.from_url(stack.redis_url) as r:
        return int(r.zcard("arq:queue")) + int(r.zcard("taskproc:deferred"))


def all_terminal(stack: Stack, ids: list[str]) -> list[dict[str, Any]] | None:
    tasks = [stack.get(i) for i in ids]
    return tasks if all(t["status"] in TERMINAL for t in tasks) else None


def assert_recorded_once(stack: Stack, ids: list[str]) -> None:
    rows = stack.sql(
        "SELECT task_id::text, count(*) FROM task_event WHERE status IN ('completed', 'failed', 'canceled') "
        "AND task_id = ANY(%s::uuid[]) GROUP BY task_id",
        (ids,),
    )
    counts = dict(rows)
    assert all(counts.get(i) == 1 for i in ids), counts


def test_redis_restarted_empty_loses_no_accepted_task(stack_factory: StackFactory, servers: Servers) -> None:
    """Tasks accepted (201) while no worker runs, ready and delayed ones, and one running across the restart:
    Redis comes back with an empty dataset, and the reconciler puts the waiting ones back on the queue."""
    with stack_factory(workers=1, env={"TASKPROC_SHUTDOWN_GRACE_S": "1"}) as stack:
        long = stack.submit("sleep", {"duration_ms": 4000}, timeout_s=600)
        stack.wait_status(long["id"], "running")
        stack.stop_workers()  # SIGTERM: `long` goes back to pending
        stack.wait_status(long["id"], "pending")
        ready = [stack.submit("add", {"a": i, "b": 1})["id"] for i in range(10)]
        delayed = [stack.submit("add", {"a": i, "b": 2}, delay_s=1.5)["id"] for i in range(5)]
        assert queue_size(stack) == 16

        servers.redis.restart()
        assert queue_size(stack) == 0
        # The API keeps working against the restarted server.
        after = stack.submit("add", {"a": 100, "b": 1})["id"]

        stack.start_worker()
        stack.start_worker()
        ids = [long["id"], *ready, *delayed, after]
        tasks = wait_for(lambda: all_terminal(stack, ids), timeout=60, what="every accepted task to finish")
        assert [t["status"] for t in tasks] == ["completed"] * len(ids)
        assert [t["result"]["sum"] for t in tasks[1:11]] == [i + 1 for i in range(10)]
        assert_recorded_once(stack, ids)
        # Whichever process held the reconciler's lock: a worker or the API (which reconciles too).
        procs = [p for p in [stack.api, *stack.workers] if p is not None]
        assert "reconciler re-enqueued" in "".join(p.log_path.read_text() for p in procs)


def test_redis_restarted_under_running_workers(stack_factory: StackFactory, servers: Servers) -> None:
    """Redis restarts empty while workers run tasks and more wait: nothing is lost or run twice to the end."""
    with stack_factory(workers=2) as stack:
        ids = [stack.submit("sleep", {"duration_ms": 300})["id"] for _ in range(40)]
        ids += [stack.submit("sleep", {"duration_ms": 100}, delay_s=1)["id"] for _ in range(10)]
        wait_for(lambda: stack.get(ids[0])["status"] != "pending", what="the first task to start")
        servers.redis.restart()
        ids += [stack.submit("sleep", {"duration_ms": 50})["id"] for _ in range(10)]
        tasks = wait_for(lambda: all_terminal(stack, ids), timeout=90, what="every task to finish")
        assert {t["status"] for t in tasks} == {"completed"}
        assert_recorded_once(stack, ids)


def test_redis_down_readyz_says_so_and_submissions_still_run(stack_factory: StackFactory, servers: Servers) -> None:
    with stack_factory(workers=1) as stack:
        with redis_stopped(servers):
            r = stack.client.get("/readyz")
            assert r.status_code == 200, "Redis down does not take the API out (test_readiness.py)"
            body = r.json()
            assert "redis" in body["status"]
            assert body["checks"]["redis"] != "ok"
            assert body["checks"]["postgres"] == "ok"
            assert stack.client.get("/healthz").status_code == 200

            t0 = time.monotonic()
            r = stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 20, "b": 22}})
            assert r.status_code == 201, r.text
            assert time.monotonic() - t0 < 5
            task_id = r.json()["id"]
            batch = stack.client.post(
                "/api/v1/tasks/batch", json={"tasks": [{"type": "add", "payload": {"a": i, "b": 0}} for i in range(3)]}
            )
            assert batch.status_code == 201, batch.text
            assert stack.get(task_id)["status"] == "pending"
        wait_for(lambda: stack.client.get("/readyz").status_code == 200, timeout=20, what="/readyz to recover")
        done = stack.wait_status(task_id, "completed", timeout=30)
        assert done["result"] == {"sum": 42}
        for item in batch.json()["items"]:
            assert stack.wait_status(item["id"], "completed", timeout=30)["result"]["sum"] == item["payload"]["a"]


@pytest.mark.parametrize("lease_s", [3, 30], ids=["outage-longer-than-lease", "outage-shorter-than-lease"])
def test_postgres_outage_answers_503_fast_and_loses_nothing(
    stack_factory: StackFactory, servers: Servers, lease_s: int
) -> None:
    """Postgres stops while tasks run, wait and fall due: the API answers 503 JSON within 5 s instead of
    hanging, /readyz is 503, workers back off; when Postgres returns every task completes, each recorded once,
    none left running. The outage (about 5 s) is run once longer and once shorter than the lease."""
    with stack_factory(workers=2, env={"TASKPROC_LEASE_S": str(lease_s)}) as stack:
        running = [stack.submit("sleep", {"duration_ms": 1500}, timeout_s=600)["id"] for _ in range(6)]
        due_later = [stack.submit("sleep", {"duration_ms": 100}, delay_s=1)["id"] for _ in range(6)]
        wait_for(
            lambda: all(stack.get(i)["status"] == "running" for i in running), what="the first tasks to be running"
        )
        with postgres_stopped(servers):
            down_at = time.monotonic()
            for method, path, body in [
                ("POST", "/api/v1/tasks", {"type": "add", "payload": {"a": 1, "b": 1}}),
                ("GET", f"/api/v1/tasks/{running[0]}", None),
                ("GET", "/api/v1/tasks", None),
                ("GET", "/api/v1/stats", None),
            ]:
                t0 = time.monotonic()
                r = stack.client.request(method, path, json=body, timeout=httpx.Timeout(10.0))
                took = time.monotonic() - t0
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json"
                assert "detail" in r.json()
                assert took < 5.0, (method, path, took)
            r = stack.client.get("/readyz")
            assert r.status_code == 503
            assert "postgres" in r.json()["status"]
            assert stack.client.get("/healthz").status_code == 200
            # Hold the outage until the running handlers are done (their outcomes can't be written) and the
            # workers' leases have run out.
            wait_for(
                lambda: (
                    time.monotonic() - down_at > 4.5
                    and all("OperationalError" in w.log_path.read_text() for w in stack.workers)
                ),
                timeout=30,
                what="the workers to notice the outage",
            )
        assert all(w.alive() for w in stack.workers)
        wait_for(lambda: stack.client.get("/readyz").status_code == 200, timeout=20, what="/readyz to recover")
        after = stack.submit("add", {"a": 1, "b": 2})["id"]
        ids = [*running, *due_later, after]
        tasks = wait_for(lambda: all_terminal(stack, ids), timeout=60, what="every task to finish")
        assert {t["status"] for t in tasks} == {"completed"}, [(t["id"], t["status"], t["error"]) for t in tasks]
        assert_recorded_once(stack, ids)
        assert stack.sql("SELECT count(*) FROM task WHERE status = 'running'") == [(0,)]
        # Their outcomes were kept while Postgres was away and written when it came back: no try was lost, even
        # when the outage outlasted the lease (workers do not reap each other right after an outage).
        assert [t["attempts"] for t in tasks[: len(running)]] == [1] * len(running), [
            [(e["status"], e["detail"]) for e in stack.events(i)] for i in running
        ]


def test_frozen_postgres_answers_503_within_5s_and_recovers(stack_factory: StackFactory, servers: Servers) -> None:
    """Postgres stops answering without closing anything (SIGSTOP on all its processes): open connections
    would wait for TCP to give up, so the API's request deadline answers 503 instead; workers wait, and when
    Postgres resumes every task finishes, none re-run, and the API serves again on the same pool."""
    with stack_factory(workers=1) as stack:
        warm = stack.submit("add", {"a": 1, "b": 1})
        stack.wait_status(warm["id"], "completed")
        task = stack.submit("sleep", {"duration_ms": 1500}, timeout_s=600)
        stack.wait_status(task["id"], "running")
        with postgres_frozen(servers):
            frozen_at = time.monotonic()
            for method, path, body in [
                ("GET", f"/api/v1/tasks/{task['id']}", None),
                ("POST", "/api/v1/tasks", {"type": "add", "payload": {"a": 1, "b": 1}}),
                ("GET", "/readyz", None),
            ]:
                t0 = time.monotonic()
                r = stack.client.request(method, path, json=body, timeout=httpx.Timeout(30.0))
                took = time.monotonic() - t0
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json"
                assert "detail" in r.json() or "checks" in r.json()
                assert took < 5.5, (method, path, took)
            assert stack.client.get("/healthz").status_code == 200
            wait_for(lambda: time.monotonic() - frozen_at > 4, timeout=10, what="the freeze to outlast the lease")
        wait_for(lambda: stack.client.get("/readyz").status_code == 200, timeout=20, what="/readyz to recover")
        done = stack.wait_status(task["id"], {"completed", "failed"}, timeout=30)
        assert (done["status"], done["attempts"]) == ("completed", 1), stack.events(task["id"])
        after = stack.submit("add", {"a": 2, "b": 2})
        assert stack.wait_status(after["id"], "completed", timeout=30)["result"] == {"sum": 4}
