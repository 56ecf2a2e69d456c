"""The FastAPI application."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_fastapi_instrumentator import Instrumentator
from redis.asyncio import Redis

from taskproc import __version__, bulk, samples, scheduler, tracing, webhooks
from taskproc.api.deps import AuthDep
from taskproc.api.errors import install_error_handlers
from taskproc.api.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    DeadlineMiddleware,
    RequestIdMiddleware,
)
from taskproc.api.routes import bulk as bulk_routes
from taskproc.api.routes import events, health, limits, meta, queues, schedules, tasks, web
from taskproc.api.routes import history as history_routes
from taskproc.api.routes import webhooks as webhook_routes
from taskproc.api.routing import DocstringRoute
from taskproc.config import Settings, get_settings
from taskproc.db import create_engine, create_sessionmaker
from taskproc.maintenance import run_in_api
from taskproc.tasks import load_task_modules, registry

log = logging.getLogger("taskproc.api")

DESCRIPTION = """
Submit tasks over HTTP; workers run them; every state change is recorded in Postgres.

When API keys are configured, every `/api/v1` route needs `Authorization: Bearer <key>`.
"""


# Probes and scrapes: a span every few seconds per pod that says nothing about any task.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    load_task_modules(settings.task_modules)
    tracing.setup("api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The budget's 2 x P as one pool that keeps them: an overflow connection is closed when it comes back to
        # a full pool, so under a steady load above P every request paid a new backend (a fork in Postgres, a
        # connect here) and never reused a prepared statement.
        engine = create_engine(settings, pool_size=2 * settings.db_pool_size, max_overflow=0, autocommit=True)
        app.state.engine = engine
        # Autocommit: every write the API makes is one statement that is atomic on its own (a compare-and-set
        # that appends its event, or the batch insert with its events), so BEGIN and COMMIT would only add
        # two round trips to every request, reads included.
        app.state.sessions = create_sessionmaker(engine)
        app.state.redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
            retry_on_timeout=False,
        )
        # Everything loaded so far lives as long as the process. Without this, every full collection walks
        # all of it (FastAPI, pydantic, SQLAlchemy: ~80 ms measured here), stalling every request in flight.
        gc.collect()
        gc.freeze()
        try:
            # The reconciler and the promotion of due tasks run here too, so that with workers scaled to zero
            # an accepted task still reaches arq:queue, where KEDA looks.
            async with run_in_api(settings, app.state.redis) as maintenance:
                # The cron scheduler too, on the maintenance connection: schedules fire with no worker running.
                sessions = maintenance.sessions if maintenance is not None else None
                # And the bulk operations' batches, and the webhook deliveries from their outbox in Postgres.
                async with (
                    scheduler.run_in_api(settings, app.state.redis, app.state.registry, sessions),
                    bulk.run_in_api(settings, app.state.redis, sessions),
                    webhooks.run_in_api(settings, sessions),
                    # And the samples behind the dashboard's charts (GET /api/v1/stats/history).
                    samples.run_in_api(settings, sessions),
                ):
                    yield
        finally:
            await app.state.redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="taskproc",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry support makes the HTTP server spans once tracing.setup has installed a
        # provider (with none, it passes requests through). Its metrics and logs stay off: taskproc has its own.
        telemetry={
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
            "exclude": _untraced,
        },
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.api_keys = [k.encode() for k in settings.all_api_keys()]

    install_error_handlers(app)

    api = APIRouter(prefix="/api/v1", dependencies=[AuthDep], route_class=DocstringRoute)
    api.include_router(bulk_routes.tasks_router)
    api.include_router(tasks.router)
    api.include_router(bulk_routes.router)
    api.include_router(schedules.router)
    api.include_router(queues.router)
    api.include_router(limits.router)
    api.include_router(meta.router)
    api.include_router(history_routes.router)
    api.include_router(events.router)
    api.include_router(webhook_routes.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(web.router)

    Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["/metrics", "/healthz", "/readyz", "/api/v1/events"],
    ).instrument(app)

    # Outermost last: ids are assigned and every request is logged (401s and 413s too), keys are checked before
    # the body is read, limits are enforced before anything parses it, and the
    # deadline starts once the body has arrived.
    app.add_middleware(DeadlineMiddleware, deadline_s=settings.request_timeout_s)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=app.state.api_keys)
    app.add_middleware(RequestIdMiddleware)
    return app
