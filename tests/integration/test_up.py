"""`taskproc up`, the command behind `make run`: a whole stack from one command, data kept across runs."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from taskproc.dev.embedded import free_port

from support import TASKPROC, wait_for


def _start_up(data_dir: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_")}
    env["TASKPROC_WORKER_METRICS_PORT"] = str(free_port())
    with open(log, "ab") as out:
        return subprocess.Popen(
            [TASKPROC, "up", "--data-dir", str(data_dir), "--port", str(port), "--workers", "2", *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _roles(pid: int) -> list[str]:
    roles = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        # What `ps` shows: ".../python .../bin/taskproc api --host ..." or ".../bin/taskproc worker".
        line = " ".join(cmd)
        for role in ("taskproc api", "taskproc worker"):
            if f"{role}" in line and f"{role} " in line + " ":
                roles.append(role)
    return roles


def test_up_runs_everything_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    up = _start_up(data_dir, port, log)
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, timeout=90, what="up ready")
        wait_for(lambda: httpx.get(f"{base}/api/v1/stats", timeout=5).json()["workers"] == 2, what="2 workers")
        roles = _roles(up.pid)
        assert roles.count("taskproc api") == 1, roles
        assert roles.count("taskproc worker") == 2, roles
        printed = log.read_text()
        assert f"http://127.0.0.1:{port}/" in printed
        r = httpx.post(f"{base}/api/v1/tasks", json={"type": "add", "payload": {"a": 20, "b": 22}}, timeout=10)
        task_id = r.json()["id"]
        wait_for(
            lambda: httpx.get(f"{base}/api/v1/tasks/{task_id}", timeout=5).json()["status"] == "completed",
            what="task completed",
        )
        children = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)

    # Same data dir again: Postgres and Redis data were kept, so the task is still there.
    up = _start_up(data_dir, port, log)
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, timeout=90, what="up again")
        task = httpx.get(f"{base}/api/v1/tasks/{task_id}", timeout=5).json()
        assert task["status"] == "completed"
        assert task["result"] == {"sum": 42}
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_up_with_api_key(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start_up(tmp_path / "data", port, tmp_path / "up.log", "--api-key", "s3cret-key")
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, timeout=90, what="up ready")
        assert httpx.get(f"{base}/api/v1/stats", timeout=5).status_code == 401
        ok = httpx.get(f"{base}/api/v1/stats", headers={"Authorization": "Bearer s3cret-key"}, timeout=5)
        assert ok.status_code == 200
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    assert "s3cret-key" not in (tmp_path / "up.log").read_text()
