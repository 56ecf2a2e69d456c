"""Postgres crashes (SIGKILL of the postmaster, then a restart on the same port) while two workers are in the
middle of batched claims and completions of thousands of short tasks.

The test kills the session's embedded Postgres, which every stack shares; tests run one at a time, and it leaves
the server running again.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from conftest import StackFactory
from support import Servers, Stack, wait_for

pytestmark = pytest.mark.slow

TASKS = 3000
# The first crash restarts at once (crash recovery only); after the second the database stays down until every
# worker has met refused connections.
STAY_DOWN = [False, True]


def done_count(stack: Stack) -> int:
    with psycopg.connect(stack.database_url, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT count(*) FROM task WHERE status = 'completed'").fetchone()
    assert row is not None
    return int(row[0])


def _outage_lines(stack: Stack) -> list[int]:
    """Per worker, how many times its log says it met an unreachable Postgres so far."""
    return [
        sum(
            line.count("unavailable") + line.count("failed, will retry") for line in w.log_path.read_text().splitlines()
        )
        for w in stack.workers
    ]


def crash_postgres(servers: Servers, stack: Stack, *, stay_down: bool) -> float:
    """SIGKILL the postmaster (and its backends, as an OOM kill of the server would), and start it again: at
    once, or (`stay_down`) once every worker has met the outage and met it again on a retry after its backoff,
    as its log says; returns how long the database was unavailable."""
    assert servers.pg.pid is not None
    before = _outage_lines(stack)
    started = time.monotonic()
    servers.pg.kill()
    if stay_down:
        wait_for(
            lambda: all(n >= b + 2 for n, b in zip(_outage_lines(stack), before, strict=True)),
            timeout=30,
            what="every worker to meet the outage twice",
        )
    servers.pg.start()
    return time.monotonic() - started


def test_postgres_killed_mid_batches_every_task_completes_exactly_once(
    stack_factory: StackFactory, servers: Servers
) -> None:
    """Each task ends `completed` with exactly one `completed` event, none is lost or left waiting, after the
    database was killed twice while claims and completions were being written in batches."""
    with stack_factory(workers=2) as stack:
        ids: list[str] = []
        for start in range(0, TASKS, 1000):
            items = [{"type": "add", "payload": {"a": i, "b": 1}} for i in range(start, start + 1000)]
            r = stack.client.post("/api/v1/tasks/batch", json={"tasks": items})
            assert r.status_code == 201, r.text
            ids += [t["id"] for t in r.json()["items"]]
        crashed_at: list[int] = []
        for n, stay_down in enumerate(STAY_DOWN):
            # Kill while work is in flight: some tasks done, many still to claim.
            target = TASKS * (n + 1) // (len(STAY_DOWN) + 2)
            wait_for(lambda t=target: done_count(stack) >= t, timeout=60, interval=0.02, what=f"{target} done")
            crashed_at.append(done_count(stack))
            restart_s = crash_postgres(servers, stack, stay_down=stay_down)
            print(f"crash {n + 1}: Postgres killed at {crashed_at[-1]} completed, back after {restart_s:.1f}s")
            assert crashed_at[-1] < TASKS, "every task finished before the crash: the test proves nothing"

        started = time.monotonic()
        wait_for(lambda: done_count(stack) == TASKS, timeout=90, interval=0.5, what="every task to complete")
        print(f"all {TASKS} completed {time.monotonic() - started:.1f}s after the last restart")

        rows = stack.sql("SELECT id::text, status, result FROM task")
        assert len(rows) == TASKS
        assert {r[0] for r in rows} == set(ids)
        assert {r[1] for r in rows} == {"completed"}
        by_id = {r[0]: r[2] for r in rows}
        assert all(by_id[task_id] == {"sum": i + 1} for i, task_id in enumerate(ids))
        completed_events = stack.sql(
            "SELECT task_id::text, count(*) FROM task_event WHERE status = 'completed' GROUP BY task_id"
        )
        assert len(completed_events) == TASKS
        assert {count for _, count in completed_events} == {1}
        [(other_terminal,)] = stack.sql("SELECT count(*) FROM task_event WHERE status IN ('failed', 'canceled')")
        assert other_terminal == 0
        reruns = stack.sql(
            "SELECT count(*) FROM (SELECT task_id FROM task_event WHERE status = 'running' "
            "GROUP BY task_id HAVING count(*) > 1) t"
        )
        print(f"tasks claimed more than once (claim committed, answer lost in the crash): {reruns[0][0]}")
        # The stack still serves once the dust has settled.
        later = stack.submit("add", {"a": 20, "b": 22})
        assert stack.wait_status(later["id"], "completed", timeout=30)["result"] == {"sum": 42}
