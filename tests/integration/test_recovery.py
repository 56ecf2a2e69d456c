"""Leases, the reaper, the reconciler, clocks and idempotent creates, in process against the real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from taskproc import testhooks
from taskproc.api.main import create_app
from taskproc.config import Settings

from support import Servers


@dataclass
class Env:
    db_url: str
    redis_url: str

    def settings(self, **overrides: object) -> Settings:
        return Settings(database_url=self.db_url, redis_url=self.redis_url, **overrides)  # type: ignore[arg-type]

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


@pytest.fixture
def env(servers: Servers) -> Iterator[Env]:
    name = servers.new_database()
    index = servers.take_redis_db()
    yield Env(servers.pg.url_for(name), servers.redis.url.rsplit("/", 1)[0] + f"/{index}")
    servers.give_back_redis_db(index)
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def api(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(env.settings(api_maintenance=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


# ---- issue 12 case 13 -------------------------------------------------------------------------------------


async def test_create_with_a_key_whose_task_is_purged_between_insert_and_read_creates_a_new_task(
    env: Env, api: httpx.AsyncClient
) -> None:
    body = {"type": "add", "payload": {"a": 1, "b": 2}, "idempotency_key": "purged-in-between"}
    first = await api.post("/api/v1/tasks", json=body)
    assert first.status_code == 201, first.text

    purged = []

    async def purge() -> None:
        # Retention deleting the existing task right after our insert yielded to it.
        async with await psycopg.AsyncConnection.connect(env.db_url, autocommit=True) as conn:
            cur = await conn.execute("DELETE FROM task WHERE idempotency_key = %s", ("purged-in-between",))
            purged.append(cur.rowcount)

    with testhooks.installed("create.after_insert", purge):
        again = await api.post("/api/v1/tasks", json=body)
    assert purged == [1]
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
    assert env.sql("SELECT count(*) FROM task WHERE idempotency_key = 'purged-in-between'") == [(1,)]
