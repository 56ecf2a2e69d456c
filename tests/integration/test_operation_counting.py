"""Every route of the OpenAPI schema counts its calls in taskproc_api_operations_total, once per call, with the
outcome its answer had; in process (httpx.ASGITransport on create_app) against a real Postgres and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from taskproc import metrics
from taskproc.api.main import create_app
from taskproc.config import Settings

from support import Servers


def counts() -> dict[tuple[str, str], float]:
    [family] = metrics.API_OPERATIONS.collect()
    return {(s.labels["operation"], s.labels["outcome"]): s.value for s in family.samples if s.name.endswith("_total")}


@pytest.fixture
async def app(servers: Servers) -> AsyncIterator[FastAPI]:
    name = servers.new_database()
    index = servers.take_redis_db()
    settings = Settings(
        database_url=servers.pg.url_for(name),  # type: ignore[arg-type]
        redis_url=servers.redis.url.rsplit("/", 1)[0] + f"/{index}",  # type: ignore[arg-type]
        api_maintenance=False,
    )
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        servers.give_back_redis_db(index)
        with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_every_route_in_the_schema_counts_each_call_once(app: FastAPI) -> None:
    spec = app.openapi()
    calls = [(path, method, op["operationId"]) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(calls) >= 12, calls
    counted: set[str] = set()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        for path, method, operation_id in calls:
            before = counts()
            # A bad Last-Event-ID answers the endless event stream at once (422); other routes ignore it.
            r = await client.request(
                method.upper(),
                path.replace("{task_id}", str(uuid.uuid4())),
                json={"type": "add", "payload": {"a": 1, "b": 2}, "tasks": [], "priority": "high"},
                headers={"Last-Event-ID": "not-an-id"},
            )
            after = counts()
            changed = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
            assert len(changed) == 1, (method, path, r.status_code, changed)
            [((counted_op, outcome), delta)] = changed.items()
            assert delta == 1.0, (method, path, changed)
            counted.add(counted_op)
            # The label is the route's name, which FastAPI's operationId starts with.
            assert operation_id.startswith(f"{counted_op}_"), (operation_id, counted_op)
            expected = {200: "ok", 201: "ok", 204: "ok", 404: "not_found", 409: "conflict", 422: "invalid"}
            assert outcome == expected.get(r.status_code, "?"), (method, path, r.status_code, r.text, outcome)
    assert len(counted) == len(calls), "each operation has a label of its own"
