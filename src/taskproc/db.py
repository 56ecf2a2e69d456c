"""Async SQLAlchemy engine on psycopg 3, and the session factory used by the API and the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from taskproc.config import Settings


def create_engine(
    settings: Settings, *, pool_size: int | None = None, max_overflow: int | None = None, pre_ping: bool = True
) -> AsyncEngine:
    """An engine whose every wait is bounded, so a Postgres outage surfaces as an error, never a hang.

    `pre_ping` costs a round trip per checkout; the worker turns it off, since it retries every statement that
    fails on a dead connection anyway (and the pool is invalidated on the first such error).
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
