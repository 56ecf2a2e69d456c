"""Embedded Postgres and Redis: real servers in a temporary directory, real clients."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

import taskproc.dev.embedded
from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from taskproc.dev.supervisor import Supervisor

from support import pid_alive, wait_for

PACKAGE_ROOT = str(Path(taskproc.dev.embedded.__file__).resolve().parents[2])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh directory directly under /tmp rather than pytest's tmp_path.

    As root, postgres runs as another user that must traverse every parent of its data directory, and each
    pytest session starting on the machine resets /tmp/pytest-of-root to 0700: a concurrent session would
    make our servers fail to start.
    """
    path = Path(tempfile.mkdtemp(prefix="taskproc-embedded-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def pg(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(data_dir, fast=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pg_scalar(url: str, query: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# -- Postgres -----------------------------------------------------------------------------------------


def test_postgres_query_and_data_survive_stop_start_and_kill(pg: EmbeddedPostgres) -> None:
    url, port = pg.url, pg.port
    assert url == f"postgresql://postgres@127.0.0.1:{port}/taskproc"
    assert pg.is_running()
    assert pg.pid is not None
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("taskproc", "postgres")
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('before stop')")

    pg.stop()
    assert not pg.is_running()
    assert pg.pid is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
    pg.start()
    assert pg.url == url
    assert pg_scalar(url, "SELECT v FROM t") == "before stop"

    # A committed transaction survives a crash, even in fast mode (fsync off only matters for OS crashes).
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO t VALUES ('before kill')")
    old_pid = pg.pid
    assert old_pid is not None
    pg.kill()
    assert not pg.is_running()
    assert not pid_alive(old_pid)
    pg.restart()
    assert pg.pid != old_pid
    assert pg.port == port
    assert pg_scalar(url, "SELECT count(*) FROM t") == 2
    assert pg_scalar(url, "SHOW max_connections") == "200"
    assert pg_scalar(url, "SHOW fsync") == "off"
    assert pg_scalar(url, "SHOW synchronous_commit") == "on"


def test_postgres_restart_of_a_dead_server_and_settings(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings={"application_name": "embedded-test"})
    with server:
        assert pg_scalar(server.url, "SHOW fsync") == "on"
        assert pg_scalar(server.url, "SHOW application_name") == "embedded-test"
        pid = server.pid
        assert pid is not None
        # The way a supervisor sees a crash: the process is gone, restart() brings it back.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not server.is_running(), what="postgres to die")
        server.restart()
        assert server.is_running()
        assert pg_scalar(server.url_for("postgres"), "SELECT 1") == 1
    assert not server.is_running()


def test_postgres_stops_a_leftover_server_on_the_same_data_dir(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir, fast=True)
    second = EmbeddedPostgres(data_dir, fast=True)
    try:
        first.start()
        leftover = first.pid
        second.start()
        assert second.pid != leftover
        assert leftover is not None
        assert not pid_alive(leftover)
        assert not first.is_running()
        assert pg_scalar(second.url, "SELECT 1") == 1
    finally:
        first.stop()
        second.stop()


def test_postgres_ignores_a_stale_pid_file_whose_pid_was_reused(pg: EmbeddedPostgres) -> None:
    pidfile = pg.pgdata / "postmaster.pid"
    content = pidfile.read_text().split("\n")
    pg.kill()
    # The crashed postmaster's pid now belongs to an unrelated live process (here: this test process).
    content[0] = str(os.getpid())
    pidfile.write_text("\n".join(content))
    pg.start()
    assert pg_scalar(pg.url, "SELECT 1") == 1


def test_postgres_start_failure_names_the_cause(data_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = EmbeddedPostgres(data_dir, port=blocker.getsockname()[1], fast=True)
        with pytest.raises(EmbeddedServerError, match="exited with code") as info:
            server.start(timeout=30)
    assert "could not" in str(info.value)  # postgres' own "could not bind/create listen socket" line
    assert not server.is_running()
    # initdb succeeded and is not redone; the server starts once the port is free.
    assert (server.pgdata / "PG_VERSION").exists()
    with server:
        assert pg_scalar(server.url, "SELECT 1") == 1


def test_postgres_refuses_a_foreign_non_empty_data_dir(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "something").write_text("not a cluster")
    with pytest.raises(EmbeddedServerError, match="not a PostgreSQL data directory"):
        EmbeddedPostgres(data_dir).start()


# -- Redis --------------------------------------------------------------------------------------------


def redis_get(url: str, key: str) -> bytes | None:
    with redis.Redis.from_url(url) as client:
        value = client.get(key)
    assert value is None or isinstance(value, bytes)
    return value


def redis_set(url: str, key: str, value: str) -> None:
    with redis.Redis.from_url(url) as client:
        assert client.set(key, value)


def test_redis_persistent_keeps_data_across_stop_and_kill(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    with server:
        url, port = server.url, server.port
        assert url == f"redis://127.0.0.1:{port}/0"
        redis_set(url, "k", "v1")
        assert redis_get(url, "k") == b"v1"
        server.stop()
        assert not server.is_running()
        assert server.pid is None
        server.start()
        assert server.url == url
        assert redis_get(url, "k") == b"v1"
        # Redis write()s the AOF before replying, so an acknowledged write survives a process crash.
        redis_set(url, "k", "v2")
        old_pid = server.pid
        server.kill()
        assert old_pid is not None
        assert not pid_alive(old_pid)
        server.restart()
        assert server.port == port
        assert redis_get(url, "k") == b"v2"
    assert (data_dir / "redis" / "appendonly.aof").exists()


def test_redis_without_persistence_restarts_empty(data_dir: Path) -> None:
    # Data written by a persistent server first must not leak into a non-persistent one on the same dir.
    with EmbeddedRedis(data_dir) as durable:
        redis_set(durable.url, "old", "x")
    server = EmbeddedRedis(data_dir, persist=False)
    with server:
        assert redis_get(server.url, "old") is None
        redis_set(server.url, "k", "v")
        server.restart()
        assert redis_get(server.url, "k") is None
        redis_set(server.url, "k", "v")
        server.kill()
        server.start()
        assert redis_get(server.url, "k") is None
    assert not (data_dir / "redis" / "dump.rdb").exists()


def test_redis_stops_a_leftover_server_on_the_same_dir(data_dir: Path) -> None:
    first = EmbeddedRedis(data_dir)
    second = EmbeddedRedis(data_dir)
    try:
        first.start()
        redis_set(first.url, "k", "v")
        leftover = first.pid
        second.start()
        assert leftover is not None
        assert not pid_alive(leftover)
        assert redis_get(second.url, "k") == b"v"
    finally:
        first.stop()
        second.stop()


def test_redis_start_failure_names_the_cause(data_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = EmbeddedRedis(data_dir, port=blocker.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match=r"(?s)exited with code.*Address already in use"):
            server.start(timeout=10)
    assert not server.is_running()


# -- both, as the parent dies -------------------------------------------------------------------------

DRIVER = """
import sys
from pathlib import Path
from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis
data = Path(sys.argv[1])
pg = EmbeddedPostgres(data, fast=True)
pg.start()
r = EmbeddedRedis(data)
r.start()
(data / "pids.tmp").write_text(f"{pg.pid} {r.pid}")
(data / "pids.tmp").rename(data / "pids")
sys.stdin.read()
"""


def test_servers_shut_down_when_their_parent_is_sigkilled(data_dir: Path) -> None:
    data = data_dir
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DRIVER), str(data)], stdin=subprocess.PIPE, env=env
    )
    try:
        wait_for(lambda: (data / "pids").exists() or parent.poll() is not None, timeout=60, what="servers")
        assert parent.poll() is None, "driver failed to start the servers"
        pg_pid, redis_pid = (int(p) for p in (data / "pids").read_text().split())
        parent.kill()
    finally:
        parent.wait()
        assert parent.stdin is not None
        parent.stdin.close()
    wait_for(lambda: not pid_alive(pg_pid) and not pid_alive(redis_pid), what="servers to exit")
    # They shut down cleanly (fast shutdown / SIGTERM), not by a crash.
    assert "database system is shut down" in (data / "postgres.log").read_text()
    assert "ready to exit" in (data / "redis.log").read_text()


def test_supervisor_restarts_a_crashed_embedded_server(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    with server:
        redis_set(server.url, "k", "v")
        supervisor = Supervisor([], services={"redis": server}, poll_interval=0.02)
        thread = threading.Thread(target=supervisor.run, daemon=True)
        thread.start()
        try:
            old_pid = server.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            wait_for(lambda: server.pid not in (None, old_pid), what="redis to be restarted")
        finally:
            supervisor.stop()
            thread.join(15)
        assert not thread.is_alive()
        assert supervisor.restart_counts() == {"redis": 1}
        assert redis_get(server.url, "k") == b"v"
