"""Rolling upgrade from the previous release with work in flight.

The previous release is named in tests/integration/previous_release.toml (the one place to bump). Its source is
unpacked with `git archive <commit>` and installed in its own venv, cached under
~/.cache/taskproc-test/release-<commit> (or $TASKPROC_TEST_CACHE), so only the first run pays for the install.

The test migrates a fresh database with the OLD version, runs the OLD API and two OLD workers with running, queued
and delayed tasks, migrates with the NEW version while they run, then replaces the processes one at a time as a
Kubernetes rolling update would (the new API beside the old one, then each worker), submitting more work at every
step: old workers meet tasks created by the new API. Every task must end `completed`, once.

Only task types both versions know are submitted: a v0.1.0 worker fails a claimed task of a type (or a payload
field) it does not know, at once and for good (its runtime's "unknown task type" / "invalid payload" paths run
after its claim), and no change in the new version's code can reach into the old process. Once the previous
release is one that leaves unknown types to other workers, add a type only the new version serves here.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from support import ROOT, TASKPROC, Proc, Servers, wait_for

pytestmark = pytest.mark.slow

RELEASE_FILE = Path(__file__).with_name("previous_release.toml")
# Installed beside the release: v0.1.0 did not declare greenlet, which SQLAlchemy's asyncio needs and which newer
# SQLAlchemy no longer pulls in itself, so a fresh install of it cannot start its API or workers.
RELEASE_EXTRAS = ["greenlet"]


@dataclass(frozen=True)
class Release:
    tag: str
    commit: str
    taskproc: str  # the release's `taskproc` executable


def _install_release(tag: str, commit: str) -> Release:
    cache = Path(os.environ.get("TASKPROC_TEST_CACHE", Path.home() / ".cache" / "taskproc-test"))
    home = cache / f"release-{commit}"
    venv = home / "venv"
    ready = home / "ready"
    home.mkdir(parents=True, exist_ok=True)
    with (home / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent sessions install it once
        stamp = f"{tag} {commit} {' '.join(RELEASE_EXTRAS)}\n"
        if not ready.exists() or ready.read_text() != stamp:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=False)
            if archive.returncode != 0:
                pytest.fail(
                    f"cannot unpack the previous release {tag} ({commit}) from {ROOT}: "
                    f"{archive.stderr.decode(errors='replace').strip()} "
                    "(a shallow clone lacks it: git fetch --unshallow)"
                )
            src = home / "src"
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(venv, ignore_errors=True)
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(src, filter="data")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            done = subprocess.run([*pip, str(src), *RELEASE_EXTRAS], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.fail(f"installing {tag} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            ready.write_text(stamp)
    return Release(tag, commit, str(venv / "bin" / "taskproc"))


@pytest.fixture(scope="module")
def previous_release() -> Release:
    spec = tomllib.loads(RELEASE_FILE.read_text())
    return _install_release(spec["tag"], spec["commit"])


@pytest.fixture
def upgrade_db(servers: Servers) -> Iterator[tuple[str, str]]:
    """An EMPTY database (not the template: that one is migrated by the new version) and a Redis db index."""
    name = f"upgrade_{os.getpid()}"
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    index = servers.take_redis_db()
    try:
        yield servers.pg.url_for(name), servers.redis.url.rsplit("/", 1)[0] + f"/{index}"
    finally:
        servers.give_back_redis_db(index)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    from taskproc.dev.embedded import free_port

    return free_port()


class Rollout:
    """Processes of both versions on one database and Redis db, started and stopped one by one."""

    def __init__(self, database_url: str, redis_url: str, workdir: Path) -> None:
        self.workdir = workdir
        self.database_url = database_url
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_")}
        self.env = {
            **env,
            "TASKPROC_DATABASE_URL": database_url,
            "TASKPROC_REDIS_URL": redis_url,
            "TASKPROC_LOG_FORMAT": "text",
            "TASKPROC_WORKER_METRICS_PORT": "0",
            "TASKPROC_RETRY_BASE_S": "0.2",
            "TASKPROC_LEASE_S": "3",
            "TASKPROC_RECONCILE_S": "2",
            "TASKPROC_SHUTDOWN_GRACE_S": "3",
            # Two slots per worker, so some tasks run while others wait in the queue.
            "TASKPROC_WORKER_CONCURRENCY": "2",
        }
        self.procs: list[Proc] = []
        self.client: httpx.Client | None = None
        self.clients: list[httpx.Client] = []

    def env_for(self, taskproc: str) -> dict[str, str]:
        if taskproc == TASKPROC:
            return self.env
        # The old release must import only itself, whatever the test run puts on PYTHONPATH.
        return {k: v for k, v in self.env.items() if k != "PYTHONPATH"}

    def run(self, taskproc: str, *args: str) -> None:
        argv = [taskproc, *args]
        done = subprocess.run(argv, env=self.env_for(taskproc), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{taskproc} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    def start(self, name: str, taskproc: str, *args: str) -> Proc:
        proc = Proc(name, [taskproc, *args], self.env_for(taskproc), self.workdir).start()
        self.procs.append(proc)
        return proc

    def start_api(self, name: str, taskproc: str) -> tuple[Proc, httpx.Client]:
        port = _free_port()
        proc = self.start(name, taskproc, "api", "--host", "127.0.0.1", "--port", str(port))
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
        self.clients.append(client)

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"{name} exited:\n{proc.tail()}")  # not an Exception: wait_for does not retry it
            return client.get("/readyz").status_code == 200

        wait_for(ready, timeout=60, what=f"{name} /readyz")
        self.client = client
        return proc, client

    def stop(self, proc: Proc) -> None:
        proc.stop()
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit too.
        assert proc.popen is not None and proc.popen.returncode in (0, -signal.SIGTERM), (
            f"{proc.name} exited badly:\n{proc.tail()}"
        )

    def workers_live(self, n: int) -> None:
        assert self.client is not None
        client = self.client
        wait_for(lambda: client.get("/api/v1/stats").json()["workers"] >= n, timeout=60, what=f"{n} live workers")

    def submit(self, tag: str, count: int, **fields: Any) -> list[str]:
        assert self.client is not None
        duration_ms = fields.pop("duration_ms", 200)
        items = [{"type": "sleep", "payload": {"duration_ms": duration_ms}, **fields} for _ in range(count)]
        for i, item in enumerate(items):
            item["idempotency_key"] = f"{tag}-{i}"
        r = self.client.post("/api/v1/tasks/batch", json={"tasks": items})
        assert r.status_code == 201, r.text
        return [t["id"] for t in r.json()["items"]]

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(60)}" for p in self.procs)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.procs:
            proc.stop()


def test_rolling_upgrade_from_the_previous_release_with_work_in_flight(
    previous_release: Release, upgrade_db: tuple[str, str], tmp_path: Path
) -> None:
    old = previous_release.taskproc
    new = TASKPROC
    rollout = Rollout(*upgrade_db, tmp_path)
    started = time.monotonic()
    try:
        rollout.run(old, "migrate")
        [(old_head,)] = rollout.sql("SELECT version_num FROM alembic_version")
        old_api, _ = rollout.start_api("api-old", old)
        old_workers = [rollout.start(f"worker-old{i}", old, "worker") for i in range(2)]
        rollout.workers_live(2)

        ids: list[str] = []
        # Running (4 slots) and queued behind them; delayed ones come due during and after the rollout.
        ids += rollout.submit("old-long", 4, duration_ms=2500, priority="high")
        ids += rollout.submit("old-queued", 30, duration_ms=100)
        ids += rollout.submit("old-delayed", 10, duration_ms=100, delay_s=6)
        ids += rollout.submit("old-low", 10, duration_ms=50, priority="low")
        wait_for(
            lambda: rollout.sql("SELECT count(*) FROM task WHERE status = 'running'")[0][0] >= 3,
            timeout=30,
            what="old workers running tasks",
        )

        # The new version's migrations run while the old processes keep working.
        rollout.run(new, "migrate")
        [(new_head,)] = rollout.sql("SELECT version_num FROM alembic_version")

        # API: the new one beside the old one, then the old one goes.
        rollout.start_api("api-new", new)
        ids += rollout.submit("new-api-old-workers", 20, duration_ms=100)
        ids += rollout.submit("new-api-delayed", 5, duration_ms=100, delay_s=4)
        rollout.stop(old_api)

        # Workers, one at a time: a new one starts, then an old one is stopped (SIGTERM, as on scale-down).
        for i, old_worker in enumerate(old_workers):
            rollout.start(f"worker-new{i}", new, "worker")
            rollout.workers_live(3)
            ids += rollout.submit(f"mixed-workers-{i}", 20, duration_ms=100)
            ids += rollout.submit(f"mixed-long-{i}", 2, duration_ms=2000)
            rollout.stop(old_worker)
        ids += rollout.submit("all-new", 20, duration_ms=50)

        def finished() -> bool:
            [(waiting,)] = rollout.sql(
                "SELECT count(*) FROM task WHERE status NOT IN ('completed', 'failed', 'canceled')"
            )
            return waiting == 0

        wait_for(finished, timeout=60, interval=0.3, what="every task to finish after the rollout")
        print(
            f"{previous_release.tag} ({old_head}) -> working tree ({new_head}): {len(ids)} tasks, "
            f"{time.monotonic() - started:.1f}s"
        )

        rows = rollout.sql("SELECT id::text, status, attempts, error FROM task")
        assert {r[0] for r in rows} == set(ids), "tasks lost or unexpected"
        bad = [r for r in rows if r[1] != "completed"]
        assert not bad, bad[:10]
        per_task = rollout.sql(
            "SELECT task_id::text, count(*) FILTER (WHERE status = 'completed'), "
            "count(*) FILTER (WHERE status IN ('failed', 'canceled')) FROM task_event GROUP BY task_id"
        )
        assert len(per_task) == len(ids)
        assert {(c, f) for _, c, f in per_task} == {(1, 0)}, [r for r in per_task if r[1:] != (1, 0)][:10]
    except BaseException:
        print(rollout.logs())
        raise
    finally:
        rollout.close()
