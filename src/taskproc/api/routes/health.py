"""Probes and metrics: /healthz, /readyz, /metrics. Always open, even when API keys are on."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from taskproc import metrics, queue, store
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
    responses={
        200: {
            "model": Readiness,
            "description": "Postgres reachable: the API can serve. `status` is `ok`, or `degraded: redis` while "
            "Redis is unreachable (tasks are still accepted, safe in Postgres, and queued when Redis is back).",
        },
        503: {"model": Readiness, "description": "Postgres unreachable; `checks` says what failed."},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: Postgres reachable; Redis reported in `checks`, not required."""
    state = request.app.state

    async def check_db() -> str:
        async with state.engine.connect() as conn:
            await store.ping(conn)
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
        _record(request, name, checks[name] == "ok", checks[name])
    # Only Postgres decides: without Redis the API still accepts tasks (the reconciler queues them later), and a
    # Redis outage taking every API pod out of the Service would turn it into a full outage.
    ready = checks["postgres"] == "ok"
    failed = [k for k, v in checks.items() if v != "ok"]
    if not failed:
        status = "ok"
    elif ready:
        status = "degraded: " + ", ".join(failed)
    else:
        status = "unavailable: " + ", ".join(failed)
    body = Readiness(status=status, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _record(request: Request, dependency: str, up: bool, detail: str) -> None:
    """Set the dependency gauge, and log when this process sees the dependency go away or come back."""
    metrics.DEPENDENCY_UP.labels(dependency).set(1 if up else 0)
    state = request.app.state
    seen: dict[str, bool] | None = getattr(state, "dependency_up", None)
    if seen is None:
        seen = state.dependency_up = {}
    if seen.get(dependency, True) != up:
        if up:
            log.warning("%s available again", dependency)
        else:
            log.warning("%s unavailable: %s", dependency, detail)
    seen[dependency] = up


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics."""
    await _refresh_gauges(request)
    body, content_type = metrics.render_latest()
    return Response(body, media_type=content_type)


async def _refresh_gauges(request: Request) -> None:
    """Queue depth and worker count are facts about the system, read at scrape time, each at a cost that does
    not grow with the backlog: counters in Postgres, ZCOUNT/ZCARD in Redis."""
    state = request.app.state
    try:
        async with state.sessions() as session:
            stats = await asyncio.wait_for(get_stats(session=session), timeout=2.0)
            queues = await asyncio.wait_for(store.list_queues(session, oldest=False), timeout=2.0)
        metrics.WORKERS.set(stats.workers)
        metrics.TASKS_WAITING_NO_WORKER.set(stats.waiting_no_worker)
        for q in queues:
            metrics.QUEUE_RUNNING.labels(q.name).set(q.running)
            metrics.QUEUE_PAUSED.labels(q.name).set(1 if q.paused else 0)
        _record(request, "postgres", True, "ok")
    except Exception as exc:
        log.warning("could not refresh task gauges: %s", type(exc).__name__)
        _record(request, "postgres", False, f"unavailable ({type(exc).__name__})")
    try:
        sizes = await asyncio.wait_for(queue.sizes_by_queue(state.redis), timeout=2.0)
        for name, size in sizes.items():
            metrics.QUEUE_DEFERRED.labels(name).set(size.deferred)
            # Ready = in the set workers take from: due now and not started (Postgres' counters can't tell due
            # from delayed, time moves without a write).
            by_priority = await asyncio.wait_for(queue.ready_by_priority(state.redis, name), timeout=2.0)
            for prio, n in by_priority.items():
                metrics.QUEUE_DEPTH.labels(name, prio.value).set(n)
        held, saturated = await asyncio.wait_for(queue.held_totals(state.redis), timeout=2.0)
        metrics.LIMIT_HELD.set(held)
        metrics.LIMIT_KEYS_SATURATED.set(saturated)
        _record(request, "redis", True, "ok")
    except Exception as exc:
        log.warning("could not read the deferred queue: %s", type(exc).__name__)
        _record(request, "redis", False, f"unavailable ({type(exc).__name__})")
