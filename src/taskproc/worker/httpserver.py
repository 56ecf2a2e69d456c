"""The worker's /metrics and /healthz: a small Starlette app served by uvicorn on the worker's own event loop.

On the loop on purpose: if the loop stalls (a handler that blocks it, a deadlock), /healthz stops answering
and the kubelet restarts the pod; and if the loop runs but the worker's iteration has not come round for
`stale_after_s`, /healthz answers 503. arq keeps the process's signals: this server installs no handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskproc.metrics import render_latest

log = logging.getLogger("taskproc.worker")


def health_app(last_loop_at: Callable[[], float], *, stale_after_s: float) -> Starlette:
    """/metrics (Prometheus text), /healthz and / (200 `{"status":"ok"}`, or 503 when the worker loop has not
    iterated for `stale_after_s`), 404 `{"detail":"not found"}` for anything else."""

    async def metrics(request: Request) -> Response:
        body, content_type = render_latest()
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> JSONResponse:
        if time.monotonic() - last_loop_at() < stale_after_s:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"detail": "worker loop stalled"}, status_code=503)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return JSONResponse({"detail": "not found" if status == 404 else "method not allowed"}, status_code=status)

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/", healthz)],
        exception_handlers={404: not_found, 405: not_found},
    )


class _LoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # arq owns SIGTERM/SIGINT (graceful shutdown); uvicorn's handlers would replace its handlers.
        yield


class WorkerHttpServer:
    """uvicorn serving an ASGI app on the running loop, on a socket bound before start() returns."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    @classmethod
    async def start(cls, app: Starlette, *, port: int, host: str = "0.0.0.0") -> WorkerHttpServer:  # noqa: S104
        # Bound here, so a port in use fails the start-up at once, and connections made from now on wait in
        # the backlog until uvicorn accepts them.
        sock = socket.create_server((host, port))
        config = uvicorn.Config(
            app, lifespan="off", access_log=False, log_config=None, log_level="warning", ws="none", loop="none"
        )
        server = _LoopServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="worker-http")
        return cls(server, task)

    async def stop(self) -> None:
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
