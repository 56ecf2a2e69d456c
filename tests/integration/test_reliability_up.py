"""`taskproc up` as a user runs it: a worker child killed with SIGKILL comes back, and its task still runs.

To stay cheap it uses the session's Postgres and Redis (a fresh database and db index) instead of starting
embedded ones; the supervisor logic is the same either way.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from taskproc.dev.embedded import free_port

from support import TASKPROC, Servers, wait_for

pytestmark = pytest.mark.slow


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid`: pid -> command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmdline
    return out


def workers_of(pid: int) -> set[int]:
    return {p for p, cmd in children(pid).items() if cmd.endswith("taskproc worker")}


@pytest.fixture
def up(servers: Servers, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client, str, Path]]:
    database = servers.new_database()
    redis_db = servers.take_redis_db()
    key = f"up-{secrets.token_urlsafe(16)}"
    port = free_port()
    env = {
        **os.environ,
        "TASKPROC_DATABASE_URL": servers.pg.url_for(database),
        "TASKPROC_REDIS_URL": servers.redis.url.rsplit("/", 1)[0] + f"/{redis_db}",
        "TASKPROC_WORKER_METRICS_PORT": "0",
        "TASKPROC_LOG_FORMAT": "text",
        "TASKPROC_LEASE_S": "3",
        "TASKPROC_SHUTDOWN_GRACE_S": "2",
    }
    log_path = tmp_path / "up.log"
    argv = [TASKPROC, "up", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    argv += ["--data-dir", str(tmp_path / "data"), "--api-key", key]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield proc, client, key, log_path
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        servers.give_back_redis_db(redis_db)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_up_restarts_a_killed_worker_and_its_task_still_runs(
    up: tuple[subprocess.Popen[bytes], httpx.Client, str, Path],
) -> None:
    proc, client, key, log_path = up

    def tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60, what=f"taskproc up to be ready\n{tail()}")
    # --api-key turns auth on; the probes stay open.
    assert client.get("/api/v1/stats").status_code == 401
    client.headers["Authorization"] = f"Bearer {key}"
    wait_for(lambda: client.get("/api/v1/stats").json()["workers"] == 2, timeout=60, what="two live workers")
    before = workers_of(proc.pid)
    assert len(before) == 2, children(proc.pid)

    r = client.post("/api/v1/tasks", json={"type": "sleep", "payload": {"duration_ms": 3000}, "timeout_s": 600})
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]

    def running_pid() -> int | None:
        task = client.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] != "running":
            return None
        events = client.get(f"/api/v1/tasks/{task_id}/events").json()
        return int(events[-1]["detail"].split("-")[-2])  # "started by <host>-<pid>-<suffix>"

    victim = wait_for(running_pid, timeout=30, what="the task to start")
    assert victim in before
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        now = workers_of(proc.pid)
        return now if len(now) == 2 and victim not in now else None

    after = wait_for(replaced, timeout=30, what="the supervisor to replace the killed worker")
    assert len(after & before) == 1
    assert "was killed by SIGKILL" in log_path.read_text()

    done = wait_for(
        lambda: (t := client.get(f"/api/v1/tasks/{task_id}").json())["status"] in ("completed", "failed") and t,
        timeout=40,
        what="the task to finish",
    )
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    wait_for(lambda: client.get("/api/v1/stats").json()["workers"] == 2, timeout=30, what="two live workers again")

    # Ctrl-C / SIGTERM stops the whole stack cleanly.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0, tail()
    for pid in after:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10, what=f"worker {pid} to exit")
    assert key not in log_path.read_text()
