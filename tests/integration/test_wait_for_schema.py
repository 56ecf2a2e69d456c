"""`taskproc migrate --wait-for-schema` (the init container of API and worker pods): exits 0 only once the schema
is at the head revision this package ships, never migrates, and exits nonzero after its timeout."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psycopg
from alembic import command

from taskproc.config import Settings
from taskproc.dev.embedded import free_port
from taskproc.migrate import alembic_config, migrate, schema_heads

from support import TASKPROC, Servers, wait_for


def _fresh_db(servers: Servers, name: str) -> str:
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return servers.pg.url_for(name)


def _wait_cmd(timeout: float) -> list[str]:
    return [TASKPROC, "migrate", "--wait-for-schema", "--timeout", str(timeout)]


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "TASKPROC_DATABASE_URL": url, "TASKPROC_LOG_FORMAT": "text"}


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def test_fresh_database_times_out_nonzero_and_is_not_migrated(servers: Servers) -> None:
    url = _fresh_db(servers, "wait_schema_fresh")
    started = time.monotonic()
    proc = subprocess.run(_wait_cmd(2), env=_env(url), capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed >= 2
    assert "has the migration Job" in proc.stderr
    assert _tables(url) == [], "--wait-for-schema must never migrate"


def test_unreachable_database_times_out_nonzero() -> None:
    url = f"postgresql://taskproc:x@127.0.0.1:{free_port()}/taskproc"
    proc = subprocess.run(_wait_cmd(1), env=_env(url), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unreachable" in proc.stderr


def test_migrated_database_exits_zero(servers: Servers) -> None:
    url = _fresh_db(servers, "wait_schema_migrated")
    migrate(Settings(database_url=url), wait_s=10)  # type: ignore[arg-type]
    proc = subprocess.run(_wait_cmd(5), env=_env(url), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_waits_through_an_older_revision_until_the_migration_finishes(servers: Servers, tmp_path: Path) -> None:
    """Started against a schema one revision behind (an upgrade in progress), it keeps waiting, and exits 0 as
    soon as the migration reaches head."""
    url = _fresh_db(servers, "wait_schema_upgrade")
    settings = Settings(database_url=url)  # type: ignore[arg-type]
    cfg = alembic_config(settings)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "-1")
    log = tmp_path / "wait.log"
    with log.open("w") as out:
        waiter = subprocess.Popen(_wait_cmd(120), env=_env(url), stdout=out, stderr=subprocess.STDOUT)
    try:
        # it has seen the old revision and keeps waiting
        wait_for(lambda: "waiting for" in log.read_text(), timeout=30, what="the 'waiting for' log line")
        assert waiter.poll() is None
        heads = schema_heads(settings)
        command.upgrade(cfg, "head")
        wait_for(lambda: waiter.poll() is not None, timeout=30, what="--wait-for-schema to exit")
        assert waiter.returncode == 0
        with psycopg.connect(url) as conn:
            assert {v for (v,) in conn.execute("SELECT version_num FROM alembic_version")} == heads
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait()
