"""Connections: the async SQLAlchemy engine on psycopg 3 and the session factory used by the API and the
workers, and the workers' dedicated autocommit psycopg connections (PgWriter). The statements are in
taskproc.store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from taskproc.config import Settings


def create_engine(
    settings: Settings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pre_ping: bool = True,
    autocommit: bool = False,
) -> AsyncEngine:
    """An engine whose every wait is bounded, so a Postgres outage surfaces as an error, never a hang.

    `pre_ping` costs a round trip per checkout; the worker turns it off, since it retries every statement that
    fails on a dead connection anyway (and the pool is invalidated on the first such error). `autocommit`: every
    connection is opened in autocommit (the API's), set once per connection; an engine's
    `execution_options(isolation_level=...)` switched it on at every checkout and back at every checkin.
    """
    timeout = settings.db_timeout_s
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=pool_size or settings.db_pool_size,
        # As many again on demand: the "2 x" of the connection budget (docs/configuration.md, "Postgres connections").
        max_overflow=(pool_size or settings.db_pool_size) if max_overflow is None else max_overflow,
        pool_timeout=timeout,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        connect_args={
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000) + 2000} -c lock_timeout={int(timeout * 1000)}",
            "application_name": "taskproc",
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session


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

    async def fetch(self, query: sql.SQL, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one prepared statement; its rows by column name."""
        try:
            async with asyncio.timeout(self._timeout + 3):
                conn = await self._connection()
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query, params, prepare=True)
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
