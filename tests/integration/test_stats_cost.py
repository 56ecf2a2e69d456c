"""/api/v1/stats (also filtered by queue) and /metrics cost the same at any backlog: they read counters kept by
triggers (migrations 0005, 0008) and Redis, never the task table. Proved by Postgres' own per-table statistics:
scans of `task` stay put while the calls read the counter tables."""

from __future__ import annotations

import psycopg
import pytest
from test_metrics import scrape, value

from taskproc.config import Settings
from taskproc.migrate import migrate

from conftest import StackFactory
from support import Servers, Stack, wait_for

pytestmark = pytest.mark.slow

WAITING = 30_000


def _scan_count(stack: Stack, table: str) -> int:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _scans(stack: Stack, table: str) -> int:
    """Scans, rows and index entries read on `table`, as Postgres' statistics show them (backends report them
    when idle, at most once a second)."""
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        # Index entries read count too: a count(*) over a partial index is an index-only scan, no heap fetch.
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + coalesce(seq_tup_read, 0) "
            "+ coalesce(idx_tup_fetch, 0) + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes i "
            "WHERE i.relid = t.relid) FROM pg_stat_user_tables t WHERE relname = %s",
            (table,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_stats_and_metrics_read_no_task_rows(stack_factory: StackFactory) -> None:
    # The API's own maintenance (reconciler) would read the table; it is not what this measures.
    # Nor the stats sampler (its first sample is one interval after start).
    env = {"TASKPROC_API_MAINTENANCE": "false", "TASKPROC_RECONCILE_S": "3600", "TASKPROC_STATS_SAMPLE_S": "300"}
    with stack_factory(workers=0, env=env) as stack:
        stack.sql("ALTER TABLE task SET (autovacuum_enabled = false)")
        stack.sql(
            "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
            "run_at, cancel_requested, created_at, updated_at, queue) "
            "SELECT gen_random_uuid(), 'add', (ARRAY['high', 'normal', 'low'])[1 + i %% 3], '{}', "
            "CASE WHEN i %% 5 = 0 THEN 'retrying' ELSE 'pending' END, 0, 3, 1, 1, "
            "now() + CASE WHEN i %% 2 = 0 THEN interval '1 hour' ELSE interval '0' END, false, now(), now(), "
            "CASE WHEN i %% 7 = 0 THEN 'reports' ELSE 'default' END FROM generate_series(1, %s) AS i",
            (WAITING,),
        )
        expected = dict(
            stack.sql("SELECT priority, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY priority")
        )
        in_reports = dict(stack.sql("SELECT status, count(*) FROM task WHERE queue = 'reports' GROUP BY status"))
        reports_waiting = dict(
            stack.sql("SELECT priority, count(*) FROM task WHERE queue = 'reports' GROUP BY priority")
        )
        # The API has not touched `task` so far (readiness reads the counters), so it has no reads of it still
        # to report: the baseline is settled.
        before_task, before_counts = _scans(stack, "task"), _scan_count(stack, "task_count")
        for _ in range(3):
            stats = stack.client.get("/api/v1/stats").json()
            m = scrape(f"{stack.url}/metrics")
        # The calls' statistics have all arrived once the counter table shows its 6 reads (one per call; the
        # same backends report both tables at once).
        wait_for(lambda: _scan_count(stack, "task_count") >= before_counts + 6, timeout=10, what="the API's statistics")
        assert _scans(stack, "task") == before_task, "the task table was read"
        # Waiting = pending or retrying, delayed ones included, by priority.
        assert stats["queue"] == {p: expected.get(p, 0) for p in ("high", "normal", "low")}, (stats, expected)
        assert sum(stats["queue"].values()) == WAITING

        # One queue's numbers: from its own counters (migration 0008), at the same cost. Each call reads
        # task_type_waiting once (its unserved tasks), which tells when the calls' statistics have arrived.
        before_task, before_type_counts = _scans(stack, "task"), _scan_count(stack, "task_type_waiting")
        for _ in range(3):
            reports = stack.client.get("/api/v1/stats", params={"queue": "reports"}).json()
        wait_for(
            lambda: _scan_count(stack, "task_type_waiting") >= before_type_counts + 3,
            timeout=10,
            what="the API's statistics of the filtered calls",
        )
        assert _scans(stack, "task") == before_task, "the task table was read for one queue's stats"
        assert reports["tasks"]["pending"] == in_reports["pending"] and reports["tasks"]["total"] == WAITING // 7
        assert reports["tasks"]["retrying"] == in_reports["retrying"]
        assert reports["queue"] == {p: reports_waiting.get(p, 0) for p in ("high", "normal", "low")}, reports
        assert reports["waiting_no_worker"] == reports["waiting_no_queue_worker"] == WAITING // 7, "no worker runs"
        # The ready-queue gauge comes from Redis: only tasks submitted through the API are in it, the due ones.
        stack.submit("add", priority="high")
        stack.submit("add", priority="low", delay_s=3600)
        m = scrape(f"{stack.url}/metrics")
        assert value(m, "taskproc_queue_depth", priority="high") == 1
        assert value(m, "taskproc_queue_depth", priority="low") == 0
        assert value(m, "taskproc_queue_deferred") == 1


def test_waiting_counters_match_a_full_count(servers: Servers) -> None:
    url = servers.pg.url_for(servers.new_database())
    migrate(Settings(database_url=url), wait_s=10)  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
            "run_at, cancel_requested, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'add', (ARRAY['high', 'normal', 'low'])[1 + i % 3], '{}', 'pending', 0, 3, "
            "1, 1, now(), false, now(), now() FROM generate_series(1, 300) AS i"
        )
        conn.execute("UPDATE task SET status = 'running' WHERE id IN (SELECT id FROM task LIMIT 150)")
        conn.execute(
            "UPDATE task SET status = 'retrying' WHERE id IN (SELECT id FROM task WHERE status = 'running' LIMIT 40)"
        )
        conn.execute("UPDATE task SET status = 'completed' WHERE status = 'running'")
        conn.execute(
            "UPDATE task SET priority = 'high' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 30)"
        )
        conn.execute(
            "UPDATE task SET priority = 'low', status = 'pending' WHERE status = 'retrying' AND priority = 'high'"
        )
        conn.execute("UPDATE task SET run_at = now() + interval '1 hour' WHERE status = 'pending'")  # no change
        conn.execute("DELETE FROM task WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 25)")
        conn.execute("DELETE FROM task WHERE status = 'completed'")
        counted = dict(
            conn.execute(
                "SELECT priority, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY priority"
            ).fetchall()
        )
        kept = {
            p: int(n)
            for p, n in conn.execute("SELECT priority, sum(n) FROM task_wait_count GROUP BY priority").fetchall()
            if int(n) != 0
        }
    assert kept == counted
