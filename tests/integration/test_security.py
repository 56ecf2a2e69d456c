"""API keys, open probes, and secrets kept out of answers, logs and metrics: the keys in process, the failing
backends with real API and worker processes."""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskproc.dev.embedded import free_port

from inprocess import InProcessFactory
from support import TASKPROC, Proc, Servers, wait_for

pytestmark = pytest.mark.slow

PROBES = ["/healthz", "/readyz", "/metrics"]


async def api_operations(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """Every documented /api/v1 operation, path parameters filled with a random task id."""
    spec = (await client.get("/openapi.json")).json()
    ops = []
    for path, item in spec["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        concrete = path.replace("{task_id}", str(uuid.uuid4()))
        ops += [(method.upper(), concrete) for method in item if method in ("get", "post", "patch", "put", "delete")]
    assert len(ops) >= 8, ops
    return ops


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["detail"], str)


async def test_api_keys_guard_every_api_route_and_leave_probes_open(inprocess_factory: InProcessFactory) -> None:
    key1, key2 = f"k1-{secrets.token_urlsafe(24)}", f"k2-{secrets.token_urlsafe(24)}"
    wrong = f"wrong-{secrets.token_urlsafe(24)}"
    env = {"TASKPROC_API_KEYS": f"{key1}, {key2}", "TASKPROC_LOG_LEVEL": "debug"}
    async with inprocess_factory(workers=0, env=env) as stack:
        client = stack.client
        for method, path in await api_operations(client):
            assert_unauthorized(await client.request(method, path, json={}))
            assert_unauthorized(
                await client.request(method, path, json={}, headers={"Authorization": f"Bearer {wrong}"})
            )
        for header in ("", f"Basic {key1}", f"Token {key1}", "Bearer", f"Bearer {key1}x", f"Bearer  {key2}x", key1):
            assert_unauthorized(await client.get("/api/v1/tasks", headers={"Authorization": header}))
        for path in PROBES:
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/openapi.json")).status_code == 200

        for key in (key1, key2):
            r = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/stats", headers={"authorization": f"bearer {key1}"})).status_code == 200
        r = await client.post(
            "/api/v1/tasks",
            json={"type": "add", "payload": {"a": 40, "b": 2}},
            headers={"Authorization": f"Bearer {key2}"},
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
        stack.client.headers["Authorization"] = f"Bearer {key1}"
        await stack.start_worker()
        assert (await stack.wait_status(task_id, "completed"))["result"] == {"sum": 42}
        metrics = (await client.get("/metrics")).text

        # API and worker share this process, so its log holds both roles' lines.
        logs = stack.logs()
        assert "401" in logs  # the refusals were logged ...
        for secret in (key1, key2, wrong):
            assert secret not in logs  # ... but no key, right or wrong, ever is
            assert secret not in metrics


async def test_api_keys_file(inprocess_factory: InProcessFactory, tmp_path: Path) -> None:
    key, commented = f"file-{secrets.token_urlsafe(24)}", f"old-{secrets.token_urlsafe(24)}"
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated out:\n# {commented}\n\n  {key}  \n")
    async with inprocess_factory(workers=0, env={"TASKPROC_API_KEYS_FILE": str(keys_file)}) as stack:
        assert_unauthorized(await stack.client.get("/api/v1/stats"))
        assert_unauthorized(await stack.client.get("/api/v1/stats", headers={"Authorization": f"Bearer {commented}"}))
        r = await stack.client.get("/api/v1/stats", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert key not in stack.logs()


async def test_without_api_keys_the_api_is_open(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=0) as stack:
        assert (await stack.client.get("/api/v1/stats")).status_code == 200
        # A stray header does not matter when auth is off.
        r = await stack.client.get("/api/v1/stats", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 200


def test_no_secret_in_answers_logs_or_metrics_when_backends_fail(servers: Servers, tmp_path: Path) -> None:
    """An API and a worker whose database and Redis URLs carry passwords, pointed at ports where nothing
    listens: every error they produce (503 answers, readiness details, warnings, metrics) names the failure
    without ever repeating a password."""
    db_pw, redis_pw = f"dbpw-{secrets.token_urlsafe(16)}", f"rdpw-{secrets.token_urlsafe(16)}"
    dead_pg, dead_redis = free_port(), free_port()
    port = free_port()
    env = {
        **os.environ,
        "TASKPROC_LOG_FORMAT": "text",
        "TASKPROC_WORKER_METRICS_PORT": "0",
        "TASKPROC_DATABASE_URL": f"postgresql://taskproc:{db_pw}@127.0.0.1:{dead_pg}/taskproc",
        "TASKPROC_REDIS_URL": f"redis://:{redis_pw}@127.0.0.1:{dead_redis}/0",
        "TASKPROC_LOG_LEVEL": "debug",
        "TASKPROC_DB_TIMEOUT_S": "1",
    }
    api = Proc("api", [TASKPROC, "api", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path).start()
    # The worker gets a working Redis (a db index of its own), so it goes on to try the database.
    redis_db = servers.take_redis_db()
    worker_env = {**env, "TASKPROC_REDIS_URL": servers.redis.url.rsplit("/", 1)[0] + f"/{redis_db}"}
    worker = Proc("worker", [TASKPROC, "worker"], worker_env, tmp_path).start()
    answers: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(lambda: client.get("/healthz").status_code == 200, timeout=60, what="the API to answer")
            calls: list[tuple[str, str, Any]] = [
                ("GET", "/readyz", None),
                ("GET", "/metrics", None),
                ("GET", "/api/v1/tasks", None),
                ("GET", "/api/v1/stats", None),
                ("POST", "/api/v1/tasks", {"type": "add", "payload": {"a": 1, "b": 2}}),
                ("GET", f"/api/v1/tasks/{uuid.uuid4()}", None),
            ]
            for method, path, body in calls:
                r = client.request(method, path, json=body)
                assert r.status_code in (200, 503), (path, r.status_code, r.text)
                if path.startswith("/api"):
                    assert r.status_code == 503
                    assert r.headers["content-type"] == "application/json"
                answers.append(f"{r.headers}\n{r.text}")
            answers.append(client.get("/metrics").text)
        wait_for(
            lambda: worker.log_path.read_text().count("postgres unavailable") >= 2,
            timeout=30,
            what="the worker to complain",
        )
    finally:
        api.stop()
        worker.stop()
        servers.give_back_redis_db(redis_db)
    text = "\n".join(answers) + api.log_path.read_text() + worker.log_path.read_text()
    assert "unavailable" in text
    assert db_pw not in text
    assert redis_pw not in text
