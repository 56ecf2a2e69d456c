"""The worker's hot path in Postgres: claims and completions written for a whole batch in one statement.

A no-op task costs a worker two writes, its claim and its outcome. Issued one by one through the ORM they cost
several round trips and about a millisecond of CPU each; here every claim a loop iteration takes is one
statement, and every outcome that arrives while the previous write is in flight is written by the next one.
Both are single compare-and-set statements in autocommit on a dedicated psycopg connection, prepared once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import sql

from taskproc.config import Settings

log = logging.getLogger("taskproc.worker")

# Rows of one claim: everything the worker needs to run the attempt.
CLAIM_SQL = sql.SQL(
    "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(gens)s::int[]) AS i(id, gen)), "
    "t AS (UPDATE task SET status = 'running', attempts = task.attempts + 1, started_at = now(), "
    "worker_id = %(worker)s, finished_at = NULL, updated_at = now() FROM input "
    "WHERE task.id = input.id AND task.generation = input.gen AND task.status IN ('pending', 'retrying') "
    "AND NOT task.cancel_requested AND task.type = ANY(%(types)s::text[]) "
    "RETURNING task.id, task.generation, task.type, task.priority, task.payload, task.attempts, task.timeout_s, "
    "task.run_at, task.started_at), "
    "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, started_at, 'running', attempts, %(detail)s FROM t), "
    # Jobs this worker would claim if it served their type: left untouched, for a worker that does.
    # Only the jobs the claim did not take are looked up again (usually none).
    "u AS (SELECT task.id, task.generation, task.type, task.priority FROM input JOIN task "
    "ON task.id = input.id AND task.generation = input.gen WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = input.id) "
    "AND task.status IN ('pending', 'retrying') AND NOT task.cancel_requested "
    "AND NOT (task.type = ANY(%(types)s::text[]))) "
    "SELECT TRUE, * FROM t UNION ALL SELECT FALSE, u.id, u.generation, u.type, u.priority, NULL::jsonb, NULL::int, "
    "NULL::float8, NULL::timestamptz, NULL::timestamptz FROM u"
)

COMPLETE_SQL = sql.SQL(
    "WITH input AS (SELECT * FROM unnest(%(ids)s::uuid[], %(gens)s::int[], %(attempts)s::int[], "
    "%(results)s::text[], %(details)s::text[]) AS i(id, gen, attempt, result, detail)), "
    # Postgres is the truth for cancels: an attempt that finishes after a cancel was accepted (its Redis abort
    # lost, or too late) ends `canceled`, never `completed`. Its result is kept, as the record of what ran.
    "t AS (UPDATE task SET status = CASE WHEN task.cancel_requested THEN 'canceled' ELSE 'completed' END, "
    "result = input.result::jsonb, error = NULL, finished_at = now(), "
    "worker_id = NULL, updated_at = now() FROM input "
    "WHERE task.id = input.id AND task.generation = input.gen AND task.attempts = input.attempt "
    "AND task.status = 'running' "
    "RETURNING task.id, task.status, task.updated_at, task.attempts, input.detail), "
    "e AS (INSERT INTO task_event (task_id, at, status, attempt, detail) "
    "SELECT id, updated_at, status, attempts, CASE WHEN status = 'canceled' "
    "THEN 'canceled: a cancel was requested while it ran; ' || detail || ', result kept' ELSE detail END FROM t) "
    "SELECT id, status FROM t"
)


@dataclass(frozen=True)
class Claimed:
    """One attempt this worker now owns."""

    id: uuid.UUID
    generation: int
    type: str
    priority: str
    payload: Any
    attempts: int
    timeout_s: float
    run_at: datetime
    started_at: datetime


class PgWriter:
    """One autocommit psycopg connection, (re)opened on demand and dropped after any failure.

    Every call is bounded by the database timeout plus a margin on our side too: a frozen server (SIGSTOP, a
    dead network path) enforces no statement_timeout, and a worker must not hang on it.
    """

    def __init__(self, settings: Settings, *, name: str) -> None:
        self._conninfo = settings.libpq_url
        self._timeout = settings.db_timeout_s
        self._name = name
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            ms = int(self._timeout * 1000)
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=max(1, int(self._timeout)),
                options=f"-c statement_timeout={ms + 2000} -c lock_timeout={ms}",
                application_name=f"taskproc-worker-{self._name}",
            )
        return self._conn

    async def fetch(self, query: sql.SQL, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            async with asyncio.timeout(self._timeout + 3):
                conn = await self._connection()
                cur = await conn.execute(query, params, prepare=True)
                return await cur.fetchall()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await conn.close()


@dataclass(frozen=True)
class Unserved:
    """A job this worker could have claimed but does not serve the type of."""

    id: uuid.UUID
    generation: int
    type: str
    priority: str


async def claim(
    writer: PgWriter, jobs: Sequence[tuple[uuid.UUID, int]], *, worker_id: str, types: Sequence[str]
) -> tuple[list[Claimed], list[Unserved]]:
    """Claim the jobs whose task waits on that generation and has a type in `types`; also returns the waiting
    ones of other types (left untouched in Postgres)."""
    rows = await writer.fetch(
        CLAIM_SQL,
        {
            "ids": [task_id for task_id, _ in jobs],
            "gens": [gen for _, gen in jobs],
            "worker": worker_id,
            "detail": f"started by {worker_id}",
            "types": list(types),
        },
    )
    claimed = [Claimed(*row[1:]) for row in rows if row[0]]
    unserved = [Unserved(*row[1:5]) for row in rows if not row[0]]
    return claimed, unserved


@dataclass
class Outcome:
    """A successful attempt waiting to be written."""

    id: uuid.UUID
    generation: int
    attempt: int
    result: str
    detail: str
    done: asyncio.Future[str | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Completer:
    """Writes successful outcomes in batches: whatever arrived while the previous write was in flight.

    An outcome exists only in this process, so a batch is retried until Postgres takes it (each row is a
    compare-and-set: rewriting one that did commit changes nothing, and a late write after the lease was lost
    is ignored). Callers wait on their outcome's future; the writer keeps going if they are cancelled, so an
    outcome handed over is written even while the worker shuts down (see drain()).
    """

    def __init__(self, writer: PgWriter, *, max_batch: int = 500) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self._pending: list[Outcome] = []
        # After a batch Postgres refused as a whole, this many outcomes are written one per statement.
        self._isolate = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def complete(self, outcome: Outcome) -> str | None:
        """Hand over an outcome and wait until it is written; the status it gave the row (`completed`, or
        `canceled` if a cancel was requested meanwhile), None if the row had moved on (a stale attempt).

        Raises what Postgres raised if it refuses this outcome itself (not for an outage: that is retried).
        """
        self._pending.append(outcome)
        self._idle.clear()
        self._ready.set()
        return await asyncio.shield(outcome.done)

    async def run(self, *, transient: tuple[type[BaseException], ...]) -> None:
        delay = 0.2
        while True:
            if not self._pending:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            batch = self._pending[: 1 if self._isolate else self._max_batch]
            try:
                written = await self._write(batch)
            except transient as exc:
                log.warning(
                    "postgres unavailable (%s); %d outcomes kept, retrying in %.1fs",
                    type(exc).__name__,
                    len(batch),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            except Exception as exc:
                # Not the connection: Postgres refuses a value (a result jsonb cannot hold, such as \u0000).
                # Write the batch again one outcome at a time, so only the refused one fails.
                if len(batch) > 1:
                    self._isolate = len(batch)
                    continue
                del self._pending[:1]
                self._isolate = max(0, self._isolate - 1)
                if not batch[0].done.done():
                    batch[0].done.set_exception(exc)
                continue
            delay = 0.2
            self._isolate = max(0, self._isolate - len(batch))
            del self._pending[: len(batch)]
            for outcome in batch:
                if not outcome.done.done():
                    outcome.done.set_result(written.get(outcome.id))

    async def _write(self, batch: list[Outcome]) -> dict[uuid.UUID, str]:
        rows = await self._writer.fetch(
            COMPLETE_SQL,
            {
                "ids": [o.id for o in batch],
                "gens": [o.generation for o in batch],
                "attempts": [o.attempt for o in batch],
                "results": [o.result for o in batch],
                "details": [o.detail for o in batch],
            },
        )
        return {cast(uuid.UUID, row[0]): cast(str, row[1]) for row in rows}

    async def close(self) -> None:
        await self._writer.close()

    async def drain(self, within_s: float) -> bool:
        """Wait until every outcome handed over is written (on shutdown); False if that takes over `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
