"""Recovery with real processes: the API alone keeps stranded work visible to KEDA; worker liveness at start."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import psycopg
import redis

from taskproc.config import Settings
from taskproc.embedded import free_port
from taskproc.migrate import migrate
from taskproc.queue import parse_job_id

from conftest import StackFactory
from support import TASKPROC, TERMINAL, Proc, Servers, wait_for


def test_with_no_workers_the_api_alone_makes_stranded_and_due_tasks_visible_in_arq_queue(
    stack_factory: StackFactory,
) -> None:
    with stack_factory(workers=0) as stack:
        ready = [stack.submit()["id"] for _ in range(3)]
        delayed = stack.submit(delay_s=4)["id"]
        r = redis.Redis.from_url(stack.redis_url)
        try:
            # Redis restarted empty (an OOM kill, a node drain): this test's db index flushed.
            r.flushdb()
            assert r.zcard("arq:queue") == 0
            # The key KEDA reads: the ready ones come back via the API's reconciler, the delayed one once the
            # API promotes it when it falls due.
            # The delayed one may already be due when the first pass runs, so the ready ones are checked by
            # membership, not by the count reaching exactly three.
            def queued_tasks() -> set[str]:
                return {parse_job_id(m.decode())[0].hex for m in r.zrange("arq:queue", 0, -1)}

            ready_hex = {uuid.UUID(t).hex for t in ready}
            wait_for(lambda: ready_hex <= queued_tasks(), timeout=20, what="ready tasks back in arq:queue")
            wait_for(
                lambda: queued_tasks() == ready_hex | {uuid.UUID(delayed).hex},
                timeout=20,
                what="the due delayed task in arq:queue",
            )
            assert r.zcard("taskproc:deferred") == 0
        finally:
            r.close()
        stack.start_worker()
        for task_id in [*ready, delayed]:
            assert stack.wait_status(task_id, TERMINAL)["status"] == "completed"


def test_worker_answers_healthz_before_the_schema_exists_and_registers_once_it_does(
    servers: Servers, tmp_path: Path
) -> None:
    name = f"unmigrated_{os.getpid()}"
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = servers.pg.url_for(name)
    index = servers.take_redis_db()
    port = free_port()
    env = {
        **os.environ,
        "TASKPROC_DATABASE_URL": db_url,
        "TASKPROC_REDIS_URL": servers.redis.url.rsplit("/", 1)[0] + f"/{index}",
        "TASKPROC_LOG_FORMAT": "text",
        "TASKPROC_WORKER_METRICS_PORT": str(port),
        "TASKPROC_LEASE_S": "3",
    }
    worker = Proc("worker", [TASKPROC, "worker"], env, tmp_path).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            wait_for(lambda: client.get("/healthz").status_code == 200, timeout=30, what="worker /healthz")
            assert worker.alive()
            migrate(Settings(database_url=db_url), wait_s=30)  # type: ignore[arg-type]

            def registered() -> bool:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    return conn.execute("SELECT count(*) FROM worker").fetchone() == (1,)

            wait_for(registered, timeout=30, what="the worker to register")
            assert client.get("/healthz").status_code == 200
    except BaseException:
        print(worker.tail())
        raise
    finally:
        worker.stop()
        servers.give_back_redis_db(index)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
