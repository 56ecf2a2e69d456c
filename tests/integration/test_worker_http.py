"""The worker's /metrics and /healthz server (worker/httpserver.py), in process over real sockets: its answers,
that it lives on the event loop (a blocked loop answers nothing), and that it leaves arq's signal handlers alone."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from taskproc.dev.embedded import free_port
from taskproc.worker.httpserver import WorkerHttpServer, health_app


async def test_answers_paths_statuses_and_bodies() -> None:
    last_loop_at = [time.monotonic()]
    port = free_port()
    before = signal.getsignal(signal.SIGTERM)
    server = await WorkerHttpServer.start(health_app(lambda: last_loop_at[0], stale_after_s=30), port=port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for path in ("/healthz", "/"):
                r = await client.get(path)
                assert (r.status_code, r.content) == (200, b'{"status":"ok"}'), path
                assert r.headers["content-type"] == "application/json"
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert b"taskproc_tasks_running" in r.content
            r = await client.get("/nope")
            assert (r.status_code, r.content) == (404, b'{"detail":"not found"}')
            last_loop_at[0] = time.monotonic() - 31
            r = await client.get("/healthz")
            assert (r.status_code, r.content) == (503, b'{"detail":"worker loop stalled"}')
        assert signal.getsignal(signal.SIGTERM) == before, "the server must not take over the process's signals"
    finally:
        await server.stop()


async def test_a_blocked_loop_answers_nothing() -> None:
    port = free_port()
    server = await WorkerHttpServer.start(health_app(time.monotonic, stale_after_s=30), port=port)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        outcome: list[object] = []

        def probe() -> None:
            try:
                outcome.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code)
            except httpx.TimeoutException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join(timeout=3)  # blocks this loop (and so the server) for as long as the probe takes
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], httpx.TimeoutException), outcome
        # And once the loop runs again, it answers again.
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        await server.stop()


async def test_a_port_in_use_fails_the_start() -> None:
    port = free_port()
    server = await WorkerHttpServer.start(health_app(time.monotonic, stale_after_s=30), port=port)
    try:
        try:
            await WorkerHttpServer.start(health_app(time.monotonic, stale_after_s=30), port=port)
        except OSError:
            pass
        else:
            raise AssertionError("a second server on the same port started")
    finally:
        await server.stop()
