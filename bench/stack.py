"""The embedded servers and the taskproc processes under test."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from taskproc.dev.supervisor import taskproc_argv

from bench.procs import Monitor, Proc, wait_until

# Redis database index per system, all on the one embedded server.
REDIS_DB = {"taskproc": 0, "arq-defaults": 1, "arq-tuned": 2, "celery-broker": 3, "celery-backend": 4}


class Servers:
    """Embedded Postgres (fsync off: `fast=True`) and Redis (no persistence), shared by every system."""

    def __init__(self, root: Path, *, pg_settings: dict[str, str] | None = None) -> None:
        self.root = root
        self.pg = EmbeddedPostgres(root / "pg", fast=True, settings=pg_settings)
        self.redis = EmbeddedRedis(root / "redis", persist=False)

    def start(self) -> None:
        self.pg.start()
        self.redis.start()

    def stop(self) -> None:
        self.redis.stop()
        self.pg.stop()

    def redis_url(self, system: str) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{REDIS_DB[system]}"

    def pg_pids(self) -> list[int]:
        pid = self.pg.pid
        return [pid] if pid else []

    def redis_pids(self) -> list[int]:
        pid = self.redis.pid
        return [pid] if pid else []


class TaskprocStack:
    """`taskproc api` and W `taskproc worker` processes, as in a deployment (one uvicorn process)."""

    def __init__(self, servers: Servers, log_dir: Path, monitor: Monitor) -> None:
        self.servers = servers
        self.log_dir = log_dir
        self.monitor = monitor
        self.port = free_port()
        self.database_url = servers.pg.url
        self.env = {
            **os.environ,
            "TASKPROC_DATABASE_URL": self.database_url,
            "TASKPROC_REDIS_URL": servers.redis_url("taskproc"),
            # Warnings only: logging stays on its real code path (records are created and filtered) but does
            # not write one line per task to a file, which no production deployment at this rate would keep.
            "TASKPROC_LOG_LEVEL": "warning",
            "TASKPROC_WORKER_METRICS_PORT": "0",
        }
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._n = 0
        monitor.watch("api", lambda: [self.api.pid] if self.api and self.api.alive() else [])
        monitor.watch("worker", lambda: [w.pid for w in self.workers if w.alive()])

    def migrate(self) -> None:
        from taskproc.config import Settings
        from taskproc.migrate import migrate

        migrate(Settings(database_url=self.database_url), wait_s=60)  # type: ignore[arg-type]

    def start_api(self) -> None:
        argv = taskproc_argv("api", "--host", "127.0.0.1", "--port", str(self.port))
        self.api = Proc("taskproc-api", argv, self.env, self.log_dir).start()
        wait_until(self._ready, timeout=60, what="taskproc API /readyz")

    def _ready(self) -> bool:
        assert self.api is not None
        if not self.api.alive():
            raise RuntimeError(f"taskproc api exited:\n{self.api.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/stats", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            self._n += 1
            self.workers.append(
                Proc(f"taskproc-worker{self._n}", taskproc_argv("worker"), self.env, self.log_dir).start()
            )
        wait_until(self._workers_live(count), timeout=60, what=f"{count} live taskproc workers")

    def _workers_live(self, count: int) -> Any:
        def check() -> bool:
            for w in self.workers:
                if not w.alive():
                    raise RuntimeError(f"{w.name} exited:\n{w.tail()}")
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM worker WHERE expires_at > now()").fetchone()
            return row is not None and row[0] >= count

        return check

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop(timeout=40)
        self.workers.clear()
        # Their leases: a restarted set must not be counted together with the old rows.
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM worker")

    def stop(self) -> None:
        self.stop_workers()
        if self.api is not None:
            self.api.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in [self.api, *self.workers] if p is not None)
