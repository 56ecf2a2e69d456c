"""The `taskproc` command: server roles (api, worker, migrate, up) and the client commands."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from taskproc.config import Settings, get_settings

app = typer.Typer(
    name="taskproc",
    help="taskproc: a Kubernetes-native task processing service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the REST API (uvicorn)."""
    import uvicorn

    from taskproc.logging import configure_logging

    settings = get_settings()
    configure_logging(settings, "api")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes serve /metrics in turn: they must share counters through files, or each scrape
        # would see one process's numbers.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="taskproc-metrics-")
    uvicorn.run(
        "taskproc.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=10,
    )


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to take tasks from (default: TASKPROC_WORKER_QUEUES, else every queue)."
        ),
    ] = None,
) -> None:
    """Run a worker process (arq): takes tasks from Redis, records their state in Postgres."""
    from taskproc import tracing
    from taskproc.logging import configure_logging
    from taskproc.tasks import load_task_modules
    from taskproc.worker.main import run_worker

    settings = get_settings()
    if queues is not None:
        # Through the settings' own validator: the same split and name check as TASKPROC_WORKER_QUEUES.
        settings = Settings.model_validate({**settings.model_dump(), "worker_queues": queues})
    configure_logging(settings, "worker")
    tracing.setup("worker")
    load_task_modules(settings.task_modules)
    run_worker(settings)


@app.command()
def migrate(
    wait: Annotated[float, typer.Option(help="Seconds to wait for the database to accept connections.")] = 60.0,
    wait_for_schema: Annotated[
        bool,
        typer.Option(
            "--wait-for-schema",
            help="Do not migrate: wait until the schema is at the head revision of this version, then exit 0.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait-for-schema: seconds to wait before exiting with status 1.")
    ] = 600.0,
) -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    from taskproc.logging import configure_logging
    from taskproc.migrate import SchemaNotReadyError
    from taskproc.migrate import migrate as run_migrations
    from taskproc.migrate import wait_for_schema as wait_schema

    settings = get_settings()
    configure_logging(settings, "migrate")
    if wait_for_schema:
        try:
            wait_schema(settings, timeout)
        except SchemaNotReadyError as exc:
            typer.echo(f"taskproc migrate --wait-for-schema: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    run_migrations(settings, wait_s=wait)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="API interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    data_dir: Annotated[Path, typer.Option(help="Where the embedded Postgres and Redis keep their data.")] = Path(
        ".taskproc"
    ),
    api_key: Annotated[
        str | None, typer.Option(help="Require this API key on /api/v1 (sets TASKPROC_API_KEYS).")
    ] = None,
) -> None:
    """Run the whole stack locally: embedded Postgres and Redis, migrations, the API and workers."""
    # Imported here: taskproc.dev is developer tooling that the api/worker/migrate roles never load.
    from taskproc.dev import EmbeddedExtraMissingError
    from taskproc.dev.stack import run_stack

    try:
        code = run_stack(host=host, port=port, workers=workers, data_dir=data_dir, api_key=api_key)
    except EmbeddedExtraMissingError as exc:
        typer.echo(f"taskproc up: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _register_client_commands() -> None:
    try:
        from taskproc.client_cli import register
    except ImportError:
        return
    register(app)


_register_client_commands()


def main() -> None:
    app()
