"""Read latency with a large table: bulk-load task rows, then time the API's read endpoints one by one."""

from __future__ import annotations

import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import psycopg

from bench.http import Conn, summarize_ms
from bench.stack import TaskprocStack

# Rows are generated in Postgres (INSERT ... SELECT generate_series), newest first: g = 1 is the newest task,
# created_at steps back 0.5 s per row (1M rows span ~5.8 days, inside the 7-day retention).
# Status mix: the newest 2% hold the in-flight tasks (half pending, some retrying and running); older ones are
# 96% completed, 3% failed, 1% canceled. Types 40% sleep, 30% add, 20% text_stats, 10% sum_pairs; priorities
# 10% high, 80% normal, 10% low; 5% carry an idempotency key. Overall about 94.7% completed, 2.9% failed,
# 1% canceled, 1% pending, 0.2% retrying, 0.2% running.
LOAD_SQL = """
INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, result, error,
                  idempotency_key, generation, run_at, worker_id, cancel_requested, created_at, started_at,
                  finished_at, updated_at)
SELECT gen_random_uuid(), x.type, x.priority, x.payload, x.status,
       CASE x.status WHEN 'pending' THEN 0 WHEN 'failed' THEN 4 WHEN 'retrying' THEN 1
                     WHEN 'completed' THEN 1 + (x.g %% 50 = 0)::int ELSE 1 END,
       3, 300, CASE WHEN x.status = 'completed' THEN x.result END,
       CASE WHEN x.status IN ('failed', 'retrying') THEN 'TaskFailedError: simulated failure' END,
       CASE WHEN x.g %% 20 = 0 THEN 'bench-' || x.g END,
       CASE WHEN x.status = 'retrying' THEN 2 ELSE 1 END,
       CASE WHEN x.status = 'retrying' THEN now() + interval '30 seconds' ELSE x.created END,
       CASE WHEN x.status = 'running' THEN 'bench-gone-worker' END,
       false, x.created,
       CASE WHEN x.status <> 'pending' THEN x.created + interval '5 milliseconds' END,
       CASE WHEN x.status IN ('completed', 'failed', 'canceled') THEN x.created + interval '20 milliseconds' END,
       x.created + interval '20 milliseconds'
FROM (
  SELECT s.g, now() - make_interval(secs => s.g * 0.5) AS created,
         CASE WHEN s.g <= %(inflight)s THEN
                CASE WHEN s.h < 500 THEN 'pending' WHEN s.h < 600 THEN 'retrying'
                     WHEN s.h < 700 THEN 'running' ELSE 'completed' END
              ELSE CASE WHEN s.h < 960 THEN 'completed' WHEN s.h < 990 THEN 'failed' ELSE 'canceled' END
         END AS status,
         t.type, t.payload, t.result,
         CASE (s.g * 17) %% 10 WHEN 0 THEN 'high' WHEN 9 THEN 'low' ELSE 'normal' END AS priority
  FROM (SELECT g, (g * 7919) %% 1000 AS h, (g * 31) %% 100 AS k
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g) s
  CROSS JOIN LATERAL (
    SELECT CASE WHEN s.k < 40 THEN 'sleep' WHEN s.k < 70 THEN 'add' WHEN s.k < 90 THEN 'text_stats'
                ELSE 'sum_pairs' END AS type,
           CASE WHEN s.k < 40 THEN '{"duration_ms": 0}'::jsonb WHEN s.k < 70 THEN '{"a": 1, "b": 2}'::jsonb
                WHEN s.k < 90 THEN '{"text": "the quick brown fox"}'::jsonb
                ELSE '{"pairs": [[1, 2], [3, 4]]}'::jsonb END AS payload,
           CASE WHEN s.k < 40 THEN '{"slept_ms": 0}'::jsonb WHEN s.k < 70 THEN '{"sum": 3}'::jsonb
                WHEN s.k < 90 THEN '{"characters": 19, "words": 4, "lines": 1, "top_words": []}'::jsonb
                ELSE '{"results": [3, 7]}'::jsonb END AS result
  ) t
) x
"""

# One 'retrying' event per retry that happened (what GET /stats counts), written for the loaded rows.
EVENTS_SQL = """
INSERT INTO task_event (task_id, at, status, attempt, detail)
SELECT id, started_at, 'retrying', 1, 'attempt 1 failed; retry'
FROM task WHERE attempts >= 2 OR status = 'retrying'
"""


def load(database_url: str, rows: int, log: Callable[[str], None], chunk: int = 100_000) -> dict[str, Any]:
    t0 = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE task, task_event, worker")
        for lo in range(1, rows + 1, chunk):
            hi = min(rows, lo + chunk - 1)
            conn.execute(LOAD_SQL, {"lo": lo, "hi": hi, "inflight": rows // 50})  # type: ignore[arg-type]
            log(f"  loaded {hi:,} / {rows:,} rows ({time.perf_counter() - t0:.0f}s)")
        conn.execute(EVENTS_SQL)  # type: ignore[arg-type]
        load_s = time.perf_counter() - t0
        # Autovacuum would get there on its own for an insert-only table; do it now so the plans are settled.
        conn.execute("VACUUM (ANALYZE) task")
        conn.execute("VACUUM (ANALYZE) task_event")
        mix = dict(conn.execute("SELECT status, count(*) FROM task GROUP BY status ORDER BY 2 DESC").fetchall())
        events = conn.execute("SELECT count(*) FROM task_event").fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('task'))").fetchone()
        ids = [r[0] for r in conn.execute("SELECT id FROM task TABLESAMPLE BERNOULLI (0.1) LIMIT 1000").fetchall()]
    return {
        "rows": rows,
        "status_mix": mix,
        "events": events[0] if events else 0,
        "table_size": size[0] if size else "",
        "load_s": round(load_s, 1),
        "vacuum_analyze_s": round(time.perf_counter() - t0 - load_s, 1),
        "_sample_ids": [str(i) for i in ids],
    }


async def measure(stack: TaskprocStack, sample_ids: list[str], *, requests: int, warmup: int = 20) -> dict[str, Any]:
    """~`requests` sequential requests per endpoint (after a warm-up), on one keep-alive connection."""
    conn = Conn("127.0.0.1", stack.port)
    rng = random.Random(11)
    first = await conn.json("GET", "/api/v1/tasks?status=completed&limit=50")
    cursor = urllib.parse.quote(first["next_cursor"])
    endpoints: dict[str, Callable[[], str]] = {
        "get_by_id": lambda: f"/api/v1/tasks/{rng.choice(sample_ids)}",
        "list_status_completed": lambda: "/api/v1/tasks?status=completed&limit=50",
        "list_status_completed_page2": lambda: f"/api/v1/tasks?status=completed&limit=50&cursor={cursor}",
        "list_type_add": lambda: "/api/v1/tasks?type=add&limit=50",
        "list_status_failed_type_text_stats": lambda: "/api/v1/tasks?status=failed&type=text_stats&limit=50",
        "stats": lambda: "/api/v1/stats",
    }
    out: dict[str, Any] = {}
    try:
        for name, path in endpoints.items():
            for _ in range(warmup):
                await conn.json("GET", path())
            latencies = []
            for _ in range(requests):
                url = path()
                t0 = time.perf_counter()
                status, raw = await conn.request("GET", url)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"GET {url}: HTTP {status}: {raw[:200]!r}")
            out[name] = summarize_ms(latencies)
    finally:
        await conn.close()
    return out


STATS_SQL = (
    "SELECT 's' AS kind, status AS k, count(*) AS n FROM task GROUP BY status "
    "UNION ALL SELECT 'q', priority, count(*) FROM task "
    "WHERE status IN ('pending', 'retrying') AND run_at <= now() GROUP BY priority "
    "UNION ALL SELECT 'r', '', count(*) FROM task_event WHERE status = 'retrying' "
    "UNION ALL SELECT 'w', '', count(*) FROM worker WHERE expires_at > now()"
)


def explain(database_url: str) -> dict[str, str]:
    """Server-side plans and times of the stats query and a filtered page, for the write-up."""
    queries = {
        "stats": STATS_SQL,
        "list_status_failed_type_text_stats": (
            "SELECT * FROM task WHERE status = 'failed' AND type = 'text_stats' "
            "ORDER BY created_at DESC, id DESC LIMIT 51"
        ),
    }
    out = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, sql in queries.items():
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()  # type: ignore[arg-type]
            out[name] = "\n".join(r[0] for r in rows)
    return out
