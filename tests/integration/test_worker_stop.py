"""A worker asked to stop stops: arq's hard stop (SIGINT, or SIGTERM without a grace period) cancels the loop
while it waits for a wake-up, and that cancel must not be lost."""

from __future__ import annotations

import asyncio
import signal
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
