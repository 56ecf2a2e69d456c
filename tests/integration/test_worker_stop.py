"""Processes asked to stop stop: arq's hard stop (SIGINT, or SIGTERM without a grace period) cancels the worker
loop while it waits for a wake-up, and an API shut down right after start cancels its maintenance loops while
their first pass connects; neither cancel may be lost."""

from __future__ import annotations

import asyncio
import signal
import time
import warnings

from inprocess import InProcessFactory


async def test_a_hard_stop_ends_an_idle_worker_loop(inprocess_factory: InProcessFactory) -> None:
    # Long idle waits: the loop is certainly inside its wait for a wake-up when the stop arrives.
    async with inprocess_factory(env={"TASKPROC_WORKER_POLL_S": "30"}) as stack:
        worker = await stack.start_worker()
        task = next(t for w, t in stack.workers if w is worker)
        stack.workers.clear()  # stopped here, not by the fixture
        done = await stack.submit()
        await stack.wait_status(done["id"], "completed")
        worker.handle_sig(signal.SIGINT)
        # Before the fix, Python 3.11's wait_for swallowed this cancel (the stop also set the wake-up event in
        # the same turn) and the loop ran on for ever.
        finished, _ = await asyncio.wait({task}, timeout=15)
        assert finished, "the worker loop did not end after a hard stop"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)  # arq 0.28's close
            await worker.close()


async def test_an_api_stopped_right_after_start_ends_its_maintenance_loops(inprocess_factory: InProcessFactory) -> None:
    started = time.monotonic()
    # The in-process stack bounds its shutdown at 30 s and fails with the coroutines still waiting. Before the
    # fix a maintenance loop whose cancel arrived during its first connection swallowed it and slept on.
    async with inprocess_factory() as stack:
        r = await stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": "x"}})
        assert r.status_code == 422
    assert time.monotonic() - started < 15
