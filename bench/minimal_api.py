"""The reference for taskproc's single POST: the least a FastAPI + uvicorn endpoint can do for the same work.

`POST /api/v1/tasks` validates a small pydantic body, writes the task row and its first event in one prepared
psycopg statement (autocommit: one round trip, durable when Postgres answers), then adds the job to a sorted
set and publishes a wake-up in one Redis MULTI (one round trip), and answers 201 with the id. No auth, no
middleware, no logging, no metrics, no idempotency lookup: what remains is the framework, the driver and the
two round trips, which is the floor taskproc's API is compared with (bench/api_load.py runs both side by side).

It writes into a migrated taskproc database (its own, so its rows do not mix with taskproc's), so Postgres
does the same work for both: the same table, indexes and counter triggers.

    python -m bench.minimal_api --port 8100 --database-url postgresql://... --redis-url redis://.../5
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field
from redis.asyncio import Redis

# The same columns taskproc's insert fills, for one row, with the event in the same statement.
INSERT = (
    "WITH ins AS (INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, "
    "generation, run_at, cancel_requested, created_at, updated_at, queue) "
    "VALUES (%(id)s, %(type)s, %(priority)s, CAST(%(payload)s AS jsonb), 'pending', 0, 3, 300, 1, now(), FALSE, "
    "now(), now(), 'default') RETURNING id, created_at), "
    "ev AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, created_at, 'pending', 0, 'accepted' FROM ins) "
    "SELECT id, created_at FROM ins"
)


class TaskIn(BaseModel):
    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: str = "normal"


def create_app(database_url: str, redis_url: str, pool_size: int = 10) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            database_url, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        app.state.pool = pool
        app.state.redis = Redis.from_url(redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/v1/tasks", status_code=201)
    async def create_task(task: TaskIn) -> Response:
        task_id = uuid.uuid4()
        params = {"id": task_id, "type": task.type, "priority": task.priority, "payload": json.dumps(task.payload)}
        async with app.state.pool.connection() as conn:
            cur = await conn.execute(INSERT, params, prepare=True)
            row = await cur.fetchone()
        async with app.state.redis.pipeline(transaction=True) as pipe:
            pipe.zadd("minimal:queue", {f"{task_id}.1": time.time() * 1000})
            pipe.publish("minimal:wake", b"1")
            await pipe.execute()
        body = json.dumps({"id": str(task_id), "status": "pending", "created_at": row[1].isoformat()})
        return Response(body, status_code=201, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--redis-url", required=True)
    args = p.parse_args()
    # The same server settings as `taskproc api` (taskproc.cli): one process, no access log.
    uvicorn.run(
        create_app(args.database_url, args.redis_url),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
