"""Migrations: a fresh database upgrades to head, matches the models, downgrades and upgrades again; the
trigger-maintained counters agree with a full count after inserts, updates and deletes."""

from __future__ import annotations

import psycopg
from alembic import command

from taskproc.config import Settings
from taskproc.migrate import alembic_config, migrate

from support import Servers


def _fresh_db(servers: Servers, name: str) -> str:
    with psycopg.connect(servers.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return servers.pg.url_for(name)


def test_upgrade_check_downgrade_upgrade(servers: Servers) -> None:
    url = _fresh_db(servers, "migrations_roundtrip")
    settings = Settings(database_url=url)  # type: ignore[arg-type]
    migrate(settings, wait_s=10)
    migrate(settings, wait_s=10)  # idempotent
    cfg = alembic_config(settings)
    command.check(cfg)  # the models and the migrations describe the same schema
    command.downgrade(cfg, "base")
    with psycopg.connect(url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    assert [t for (t,) in tables] == ["alembic_version"]
    command.upgrade(cfg, "head")
    command.check(cfg)


def test_counters_match_a_full_count(servers: Servers) -> None:
    url = _fresh_db(servers, "migrations_counters")
    migrate(Settings(database_url=url), wait_s=10)  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
            "run_at, cancel_requested, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'add', 'normal', '{}', 'pending', 0, 3, 1, 1, now(), false, now(), now() "
            "FROM generate_series(1, 200)"
        )
        conn.execute("UPDATE task SET status = 'running' WHERE id IN (SELECT id FROM task LIMIT 120)")
        conn.execute(
            "UPDATE task SET status = 'retrying' WHERE id IN (SELECT id FROM task WHERE status = 'running' LIMIT 30)"
        )
        conn.execute("UPDATE task SET status = 'completed' WHERE status = 'running'")
        conn.execute("UPDATE task SET status = 'completed' WHERE status = 'no-such-status'")
        conn.execute("UPDATE task SET priority = 'high' WHERE status = 'pending'")  # no status change
        conn.execute("DELETE FROM task WHERE id IN (SELECT id FROM task WHERE status = 'completed' LIMIT 40)")
        counted = dict(conn.execute("SELECT status, count(*) FROM task GROUP BY status").fetchall())
        kept = {
            s: int(n)
            for s, n in conn.execute("SELECT status, sum(n) FROM task_count GROUP BY status").fetchall()
            if int(n) != 0 and not s.startswith("_")
        }
        retried = conn.execute("SELECT sum(n) FROM task_count WHERE status = '_retried'").fetchone()
    assert kept == counted
    assert counted == {"pending": 80, "retrying": 30, "completed": 50}
    assert retried is not None and int(retried[0]) == 30


def test_waiting_per_type_counters_match_a_full_count(servers: Servers) -> None:
    url = _fresh_db(servers, "migrations_type_counters")
    migrate(Settings(database_url=url), wait_s=10)  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO task (id, type, priority, payload, status, attempts, max_retries, timeout_s, generation, "
            "run_at, cancel_requested, created_at, updated_at) "
            "SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END, 'normal', '{}', "
            "CASE WHEN i % 5 = 0 THEN 'completed' ELSE 'pending' END, 0, 3, 1, 1, now(), false, now(), now() "
            "FROM generate_series(1, 300) AS i"
        )
        conn.execute(
            "UPDATE task SET status = 'running' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 100)"
        )
        conn.execute(
            "UPDATE task SET status = 'retrying' WHERE id IN (SELECT id FROM task WHERE status = 'running' LIMIT 40)"
        )
        conn.execute(
            "UPDATE task SET status = 'canceled' WHERE id IN (SELECT id FROM task WHERE status = 'pending' LIMIT 10)"
        )
        conn.execute("UPDATE task SET priority = 'high' WHERE status = 'retrying'")  # still waiting: no change
        conn.execute(
            "DELETE FROM task WHERE id IN (SELECT id FROM task WHERE status IN ('pending', 'completed') LIMIT 50)"
        )
        counted = dict(
            conn.execute(
                "SELECT type, count(*) FROM task WHERE status IN ('pending', 'retrying') GROUP BY type"
            ).fetchall()
        )
        kept = {
            t: int(n)
            for t, n in conn.execute("SELECT type, sum(n) FROM task_type_waiting GROUP BY type").fetchall()
            if int(n) != 0
        }
    assert kept == counted
    assert sum(counted.values()) > 0
