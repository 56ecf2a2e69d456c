"""GET /api/v1/stats?queue= (issue 14: "filters by queue in list and stats") through a real API process and a
real worker process: one queue's exact numbers as its tasks move through every status, the per-queue numbers
adding up to the service-wide ones, the SDK's and the CLI's filter; and the per-queue counters of migration
0009 agreeing with a full count of the task table, seeded from existing rows by the upgrade and put back by
the downgrade. That the filtered call reads no task row at any backlog is in test_stats_cost.py."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from alembic import command
from test_schedules_processes import cli

from taskproc.client import TaskprocClient
from taskproc.config import Settings
from taskproc.migrate import alembic_config

from conftest import StackFactory
from support import Servers, Stack

pytestmark = pytest.mark.slow

STATUSES = ("pending", "running", "retrying", "completed", "failed", "canceled")
PRIORITIES = ("high", "normal", "low")


def counts(**n: int) -> dict[str, int]:
    return {**dict.fromkeys(STATUSES, 0), **n, "total": sum(n.values())}


def waiting(**n: int) -> dict[str, int]:
    return {**dict.fromkeys(PRIORITIES, 0), **n}


def stats(stack: Stack, queue: str | None = None) -> dict[str, Any]:
    r = stack.client.get("/api/v1/stats", params={"queue": queue} if queue else None)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_stats_of_one_queue_follow_its_tasks_through_every_status(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        a_due = [stack.submit(queue="a", priority="high"), *(stack.submit(queue="a") for _ in range(2))]
        stack.submit(queue="a", priority="low", delay_s=3600)
        b = [stack.submit(queue="b", priority="low") for _ in range(2)]
        stack.submit()  # the default queue
        # No worker at all: every waiting task waits for one, by type and by queue.
        assert stats(stack, "a") == {
            "tasks": counts(pending=4),
            "queue": waiting(high=1, normal=2, low=1),
            "retried_total": 0,
            "workers": 0,
            "waiting_no_worker": 4,
            "waiting_no_queue_worker": 4,
        }

        stack.start_worker(env={"TASKPROC_WORKER_QUEUES": "a"})
        stack.wait_ready(workers=1)
        for t in a_due:
            stack.wait_status(t["id"], "completed")
        running = stack.submit("sleep", {"duration_ms": 120_000}, queue="a")
        failing = stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, queue="a", max_retries=1)
        stack.wait_status(running["id"], "running")
        stack.wait_status(failing["id"], "failed")
        assert stats(stack, "a") == {
            "tasks": counts(pending=1, running=1, completed=3, failed=1),
            "queue": waiting(low=1),  # the delayed one
            "retried_total": 1,
            "workers": 1,
            "waiting_no_worker": 0,
            "waiting_no_queue_worker": 0,
        }
        # The worker serves b's type but not b: its tasks wait for a worker of their queue.
        assert stats(stack, "b") == {
            "tasks": counts(pending=2),
            "queue": waiting(low=2),
            "retried_total": 0,
            "workers": 0,
            "waiting_no_worker": 0,
            "waiting_no_queue_worker": 2,
        }

        assert stack.client.post(f"/api/v1/tasks/{running['id']}/cancel").status_code == 200
        stack.wait_status(running["id"], "canceled")
        assert stack.client.post(f"/api/v1/tasks/{b[0]['id']}/cancel").status_code == 200
        assert stats(stack, "b")["tasks"] == counts(pending=1, canceled=1)
        assert stack.client.delete(f"/api/v1/tasks/{b[0]['id']}").status_code == 204
        a, b_now = stats(stack, "a"), stats(stack, "b")
        assert a["tasks"] == counts(pending=1, completed=3, failed=1, canceled=1)
        assert a["queue"] == waiting(low=1) and a["retried_total"] == 1
        assert b_now["tasks"] == counts(pending=1) and b_now["queue"] == waiting(low=1)
        assert b_now["waiting_no_queue_worker"] == 1

        # Every queue's numbers add up to the service-wide ones (workers aside: one worker may take from many).
        total = stats(stack)
        per_queue = [a, b_now, stats(stack, "default")]
        for group in ("tasks", "queue"):
            assert {k: sum(q[group][k] for q in per_queue) for k in total[group]} == total[group]
        for key in ("retried_total", "waiting_no_worker", "waiting_no_queue_worker"):
            assert sum(q[key] for q in per_queue) == total[key], key
        assert total["waiting_no_queue_worker"] == 2, "b's and default's waiting task"
        assert stats(stack, "never-used") == {
            "tasks": counts(),
            "queue": waiting(),
            "retried_total": 0,
            "workers": 0,
            "waiting_no_worker": 0,
            "waiting_no_queue_worker": 0,
        }
        bad = stack.client.get("/api/v1/stats", params={"queue": "Not a queue"})
        assert bad.status_code == 422, bad.text
        spec = stack.client.get("/openapi.json").json()["paths"]["/api/v1/stats"]["get"]
        [param] = [p for p in spec["parameters"] if p["name"] == "queue"]
        assert param["in"] == "query" and param["schema"]["anyOf"][0]["pattern"] == "^[a-z0-9_-]{1,64}$"
        assert "that queue's" in spec["description"], spec

        with TaskprocClient(stack.url) as client:
            assert client.stats(queue="a").model_dump() == a
            assert client.stats().model_dump() == total
        shown = cli(stack, "stats", "--queue", "a", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == a
        human = cli(stack, "stats", "--queue", "b")
        assert human.returncode == 0, human.stderr
        assert "workers 0" in human.stdout and "low 1" in human.stdout


def _fresh_db(servers: Servers, name: str) -> str:
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return servers.pg.url_for(name)


FULL_COUNT = "SELECT queue, status, priority, count(*)::int FROM task GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
KEPT_COUNT = (
    "SELECT queue, status, priority, sum(n)::int FROM task_queue_count WHERE status <> '_retried' "
    "GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3"
)
FULL_WAITING = (
    "SELECT queue, type, count(*)::int FROM task WHERE status IN ('pending', 'retrying') GROUP BY 1, 2 ORDER BY 1, 2"
)
KEPT_WAITING = "SELECT queue, type, sum(n)::int FROM task_type_waiting GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2"
RETRIED = (
    "SELECT queue, sum(n)::int FROM task_queue_count WHERE status = '_retried' GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1"
)


def test_the_per_queue_counters_match_a_full_count_across_upgrade_changes_and_downgrade(servers: Servers) -> None:
    url = _fresh_db(servers, "migrations_queue_stats")
    cfg = alembic_config(Settings(database_url=url))  # type: ignore[arg-type]
    command.upgrade(cfg, "0007")
    with psycopg.connect(url, autocommit=True) as conn:

        def sql(query: str) -> list[tuple[Any, ...]]:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

        sql(
            "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
            "run_at, cancel_requested, created_at, updated_at, queue) "
            "SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'add' ELSE 'sleep' END, "
            "(ARRAY['high', 'normal', 'low'])[1 + i % 3], '{}', "
            "CASE WHEN i % 5 = 0 THEN 'completed' ELSE 'pending' END, 0, 3, 1, 1, now(), false, now(), now(), "
            "(ARRAY['default', 'a', 'b'])[1 + i % 4 % 3] FROM generate_series(1, 400) AS i"
        )
        # Retries before the upgrade are seeded from the events, as migration 0002 seeded task_count's.
        sql("UPDATE task SET status = 'retrying' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 20)")
        sql(
            "INSERT INTO task_event (task_id, at, status, attempt) "
            "SELECT id, now(), 'retrying', 1 FROM task WHERE status = 'retrying'"
        )
        retried_before = sql("SELECT queue, count(*)::int FROM task WHERE status = 'retrying' GROUP BY 1 ORDER BY 1")

        command.upgrade(cfg, "head")
        assert sql(KEPT_COUNT) == sql(FULL_COUNT)
        assert sql(KEPT_WAITING) == sql(FULL_WAITING)
        assert sql(RETRIED) == retried_before

        sql("UPDATE task SET status = 'running' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 150)")
        sql("UPDATE task SET status = 'retrying' WHERE id IN (SELECT id FROM task WHERE status = 'running' LIMIT 40)")
        sql("UPDATE task SET status = 'completed' WHERE status = 'running'")
        sql("UPDATE task SET status = 'failed' WHERE id IN (SELECT id FROM task WHERE status = 'retrying' LIMIT 15)")
        sql("UPDATE task SET priority = 'high' WHERE status = 'pending' AND priority = 'low'")  # priority only
        sql("UPDATE task SET queue = 'c' WHERE id IN (SELECT id FROM task WHERE status = 'retrying' LIMIT 10)")
        sql("UPDATE task SET queue = 'c' WHERE id IN (SELECT id FROM task WHERE status = 'completed' LIMIT 10)")
        sql("UPDATE task SET run_at = now() + interval '1 hour' WHERE status = 'pending'")  # no counted change
        sql("DELETE FROM task WHERE id IN (SELECT id FROM task WHERE status IN ('pending', 'completed') LIMIT 60)")
        sql("UPDATE task SET status = 'canceled' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 5)")
        assert sql(KEPT_COUNT) == sql(FULL_COUNT)
        assert sql(KEPT_WAITING) == sql(FULL_WAITING)
        # 20 retries seeded plus the 40 transitions since, by the queue each task was in at the time.
        assert sum(n for _, n in sql(RETRIED)) == 60
        assert {row[0] for row in sql(FULL_COUNT)} == {"default", "a", "b", "c"}

        command.downgrade(cfg, "0007")
        assert sql(
            "SELECT queue, status, sum(n)::int FROM task_queue_count GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2"
        ) == sql(
            "SELECT queue, status, count(*)::int FROM task WHERE status IN ('pending', 'retrying', 'running') "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert sql("SELECT type, sum(n)::int FROM task_type_waiting GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1") == sql(
            "SELECT type, count(*)::int FROM task WHERE status IN ('pending', 'retrying') GROUP BY 1 ORDER BY 1"
        )
        sql("UPDATE task SET status = 'running' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 5)")
        [(running,)] = sql("SELECT sum(n)::int FROM task_queue_count WHERE status = 'running'")
        assert running == 5, "the 0007 triggers count again after the downgrade"
