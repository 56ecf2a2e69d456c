"""Probes and metrics: /healthz, /readyz, /metrics. Always open, even when API keys are on."""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from taskproc import metrics, queue
from taskproc.api.routing import DocstringRoute
from taskproc.services.tasks import get_stats

router = APIRouter(tags=["health"], route_class=DocstringRoute)
log = logging.getLogger("taskproc.api")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Postgres or Redis unreachable; `checks` says which."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: Postgres and Redis both reachable."""
    state = request.app.state

    async def check_db() -> str:
        async with state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return "ok"

    async def check_redis() -> str:
        await state.redis.ping()
        return "ok"

    checks: dict[str, str] = {}
    for name, fn in (("postgres", check_db), ("redis", check_redis)):
        try:
            checks[name] = await asyncio.wait_for(fn(), timeout=2.0)
        except Exception as exc:
            checks[name] = f"unavailable ({type(exc).__name__})"
    ready = all(v == "ok" for v in checks.values())
    failed = [k for k, v in checks.items() if v != "ok"]
    body = Readiness(status="ok" if ready else "unavailable: " + ", ".join(failed), checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics."""
    await _refresh_gauges(request)
    body, content_type = metrics.render_latest()
    return Response(body, media_type=content_type)


async def _refresh_gauges(request: Request) -> None:
    """Queue depth and worker count are facts about the system, read at scrape time."""
    state = request.app.state
    try:
        async with state.sessions() as session:
            stats = await asyncio.wait_for(get_stats(session=session), timeout=2.0)
        for prio in ("high", "normal", "low"):
            metrics.QUEUE_DEPTH.labels(prio).set(getattr(stats.queue, prio))
        metrics.WORKERS.set(stats.workers)
        metrics.TASKS_WAITING_NO_WORKER.set(stats.waiting_no_worker)
    except Exception as exc:
        log.warning("could not refresh task gauges: %s", type(exc).__name__)
    try:
        _, deferred, _ = await asyncio.wait_for(queue.queue_sizes(state.redis), timeout=2.0)
        metrics.QUEUE_DEFERRED.set(deferred)
    except Exception as exc:
        log.warning("could not read the deferred queue: %s", type(exc).__name__)
