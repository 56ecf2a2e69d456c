"""Per-operation costs behind the worker's throughput: `python -m bench.micro [--loop uvloop]`.

Each line runs one way of doing a step of a task's life many times, sequentially, against embedded Postgres
and Redis, and reports wall time, client CPU and server CPU per task. The "now" rows are what taskproc does
today (SQLAlchemy AsyncSession with pool_pre_ping around one CTE statement; arq's per-job Redis protocol),
the other rows are the alternatives proposed in bench/README.md. Sequential on purpose: it isolates the cost
per operation; the full benchmark shows what it adds up to under concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from taskproc.config import Settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from taskproc.migrate import migrate
from taskproc.store import TASK_COLUMNS

from bench.procs import tree_cpu_s

CLAIM_SETS = "status = 'running', attempts = attempts + 1, started_at = now(), worker_id = :worker, finished_at = NULL"
CLAIM_WHERE = "id = :id AND generation = :gen AND status IN ('pending', 'retrying') AND NOT cancel_requested"
CLAIM_ONE_SQL = (
    f"WITH t AS (UPDATE task SET {CLAIM_SETS}, updated_at = now() WHERE {CLAIM_WHERE} "
    f"RETURNING {TASK_COLUMNS}), e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, updated_at, status, attempts, 'started' FROM t) SELECT * FROM t"
)
CLAIM_BATCH_SQL = (
    f"WITH t AS (UPDATE task SET {CLAIM_SETS}, updated_at = now() "
    "WHERE id = ANY(%(ids)s) AND generation = 1 AND status IN ('pending', 'retrying') AND NOT cancel_requested "
    f"RETURNING {TASK_COLUMNS}), e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, updated_at, status, attempts, 'started' FROM t) SELECT * FROM t"
)
SEED_SQL = """
INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, run_at,
                  cancel_requested, created_at, updated_at)
SELECT gen_random_uuid(), 'sleep', 'normal', '{"duration_ms": 0}', 'pending', 0, 3, 300, 1, now(), false, now(), now()
FROM generate_series(1, %(n)s)
"""
# The proposed Redis side: one script hands out up to ARGV[2] due jobs and parks them in an in-flight set with
# a deadline, so a crashed worker's jobs can be found; Postgres' compare-and-set already makes a claim unique.
POP_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #ids do
  redis.call('ZREM', KEYS[1], ids[i])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ids[i])
end
return ids
"""


class Timer:
    def __init__(self, pg_pid: int, redis_pid: int) -> None:
        self.pg_pid, self.redis_pid = pg_pid, redis_pid
        self.rows: list[tuple[str, float, float, float]] = []

    async def run(self, name: str, fn: Callable[[], Awaitable[Any]], calls: int, per_call: int = 1) -> None:
        for _ in range(min(20, calls)):
            await fn()
        c0, s0, t0 = time.process_time(), self._server(), time.perf_counter()
        for _ in range(calls):
            await fn()
        wall, cpu, server = time.perf_counter() - t0, time.process_time() - c0, self._server() - s0
        n = calls * per_call
        self.rows.append((name, wall / n * 1e6, cpu / n * 1e6, server / n * 1e6))
        print(f"{name:78s} {wall / n * 1e6:7.0f} {cpu / n * 1e6:7.0f} {server / n * 1e6:7.0f}", flush=True)

    def _server(self) -> float:
        return tree_cpu_s(self.pg_pid) + tree_cpu_s(self.redis_pid)


async def _main(pg: EmbeddedPostgres, redis_port: int, timer: Timer, n: int) -> None:
    print(f"{'operation (per task)':78s} {'wall us':>7s} {'cli us':>7s} {'srv us':>7s}")
    settings = Settings(database_url=pg.url)  # type: ignore[arg-type]
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(SEED_SQL, {"n": n * 7})  # type: ignore[arg-type]
        ids = [r[0] for r in conn.execute("SELECT id FROM task").fetchall()]
    pending = iter(ids)

    # ---- Postgres: claiming one task ----
    engine = create_engine(settings, pool_size=4)
    sessions = create_sessionmaker(engine)

    claim_text = sa.text(CLAIM_ONE_SQL)

    async def claim_now() -> None:
        async with sessions() as session:
            await session.execute(claim_text, {"id": next(pending), "gen": 1, "worker": "w"})
            await session.commit()

    await timer.run("PG claim, now: AsyncSession + pre-ping (ping, BEGIN, CTE, COMMIT = 4 round trips)", claim_now, n)

    auto = create_engine(settings, pool_size=4).execution_options(isolation_level="AUTOCOMMIT")

    async def claim_core() -> None:
        async with auto.connect() as conn:
            (await conn.execute(claim_text, {"id": next(pending), "gen": 1, "worker": "w"})).fetchall()

    await timer.run(
        "PG claim: SQLAlchemy Core connection, AUTOCOMMIT (pre-ping + statement = 2 round trips)", claim_core, n
    )

    bare = create_async_engine(settings.sqlalchemy_url, pool_size=4, pool_pre_ping=False, isolation_level="AUTOCOMMIT")

    async def claim_core_noping() -> None:
        async with bare.connect() as conn:
            (await conn.execute(claim_text, {"id": next(pending), "gen": 1, "worker": "w"})).fetchall()

    await timer.run(
        "PG claim: SQLAlchemy Core connection, AUTOCOMMIT, no pre-ping (1 round trip)", claim_core_noping, n
    )
    await bare.dispose()

    raw = await psycopg.AsyncConnection.connect(pg.url, autocommit=True)
    claim_raw_sql = CLAIM_ONE_SQL.replace(":id", "%(id)s").replace(":gen", "%(gen)s").replace(":worker", "%(worker)s")

    async def claim_raw() -> None:
        await (await raw.execute(claim_raw_sql, {"id": next(pending), "gen": 1, "worker": "w"})).fetchall()  # type: ignore[arg-type]

    await timer.run("PG claim: psycopg AsyncConnection, autocommit, prepared (1 round trip)", claim_raw, n)

    claim_batch_sql = CLAIM_BATCH_SQL.replace(":worker", "%(worker)s")

    async def claim_batch() -> None:
        batch = [next(pending) for _ in range(50)]
        await (await raw.execute(claim_batch_sql, {"ids": batch, "worker": "w"})).fetchall()  # type: ignore[arg-type]

    await timer.run("PG claim: 50 tasks per statement (id = ANY(...)), psycopg autocommit", claim_batch, n // 50, 50)
    await raw.close()
    await engine.dispose()
    await auto.dispose()

    # ---- Redis: taking one job off the queue and finishing it ----
    redis = Redis(port=redis_port)
    await redis.flushdb()
    jobs = [f"{uuid.uuid4()}.1" for _ in range(n * 3)]
    await redis.zadd("arq:queue", {j: i for i, j in enumerate(jobs)})
    for start in range(0, len(jobs), 1000):
        await redis.mset({f"arq:job:{j}": b"{}" for j in jobs[start : start + 1000]})
    todo = iter(jobs)

    async def arq_protocol() -> None:
        job = next(todo)
        async with redis.pipeline(transaction=True) as pipe:  # Worker.start_jobs
            await pipe.watch(f"arq:in-progress:{job}")
            await pipe.exists(f"arq:in-progress:{job}")
            await pipe.zscore("arq:queue", job)
            pipe.multi()
            pipe.psetex(f"arq:in-progress:{job}", 86_400_000, b"1")
            await pipe.execute()
        async with redis.pipeline(transaction=True) as pipe:  # Worker.run_job
            pipe.get(f"arq:job:{job}")
            pipe.incr(f"arq:retry:{job}")
            pipe.expire(f"arq:retry:{job}", 88400)
            pipe.zrem("arq:abort", job)
            await pipe.execute()
        async with redis.pipeline(transaction=True) as pipe:  # Worker.finish_job (keep_result=0)
            pipe.zrem("arq:abort", job)
            pipe.zrem("arq:queue", job)
            pipe.delete(f"arq:in-progress:{job}", f"arq:retry:{job}", f"arq:job:{job}")
            await pipe.execute()

    await timer.run("Redis, now: arq's per-job protocol (start 4 + run 1 + finish 1 = 6 round trips)", arq_protocol, n)

    pop = redis.register_script(POP_SCRIPT)

    async def batched() -> None:
        taken = await pop(keys=["arq:queue", "taskproc:inflight"], args=[time.time() * 1000, 50, 0])
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zrem("taskproc:inflight", *taken)
            pipe.delete(*(b"arq:job:" + j for j in taken))
            await pipe.execute()

    await timer.run(
        "Redis: one script pops 50 jobs, one pipeline finishes them (2 round trips / 50)", batched, n // 50, 50
    )
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="operations per line")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="taskproc-micro-"))
    pg = EmbeddedPostgres(root / "pg", fast=True)
    redis = EmbeddedRedis(root / "redis", persist=False)
    pg.start()
    redis.start()
    try:
        migrate(Settings(database_url=pg.url), wait_s=30)  # type: ignore[arg-type]
        assert pg.pid is not None
        assert redis.pid is not None
        timer = Timer(pg.pid, redis.pid)
        coro = _main(pg, redis.port, timer, args.n)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
