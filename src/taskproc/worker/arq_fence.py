"""Every use taskproc makes of arq beyond its documented surface, in this one module.

arq runs the worker process: `Worker.run()` (the event loop, `on_startup`/`on_shutdown` with `ctx`, whose
`ctx["redis"]` is arq's pool), the SIGINT/SIGTERM handlers and the graceful shutdown (stop taking jobs, wait up
to `job_completion_wait` for the running ones, cancel the rest, then `on_shutdown`). The loop that takes jobs is
taskproc's own (worker/main.py: one TICK_SCRIPT round trip per iteration, jobs claimed in batches, no per-job
records), and plugging it in needs these undocumented members of `arq.worker.Worker`, each checked against the
installed arq by tests/unit/test_arq_fence.py (`PRIVATE_SURFACE` below is the list that test walks):

- `_poll_iteration()`: overridden. arq's `main()` calls it once per `poll_delay` (0 here); it is `iterate()`.
- `tasks` (dict job id -> asyncio.Task): our attempts are registered there, because arq's shutdown waits for
  and then cancels exactly those (`_wait_for_tasks_to_complete`, `handle_sig`).
- `allow_pick_jobs`: arq sets it to False when a graceful shutdown starts; the loop stops taking jobs then.
- `heart_beat()`: arq's health-check record (its `arq --check`), called once per iteration as arq's loop does.
- `handle_sig(signum)` and `handle_sig_wait_for_completion(signum)`: wrapped, so the runtime hears of the
  shutdown first (stop claiming, hand running attempts back) and arq's own handling follows.
- `close()`: wrapped: an attempt cancelled by the shutdown ends in CancelledError (after handing its attempt
  back), which arq's `close()` would re-raise from its gather; ours waits for them with return_exceptions first.
- `main()` calls `_poll_iteration` and `_wait_for_tasks_to_complete` cancels `self.tasks` (behaviour relied on,
  checked in the source by the test).
- `RedisSettings.conn_timeout / conn_retries / conn_retry_delay`: fields of arq's settings class, set after
  `from_dsn` (it has no parameters for them) so that start-up rides out a Redis that is slow to come up.

Nothing outside this module touches any of them: worker/main.py subclasses `FencedWorker` and uses only its
public methods. `arq` is pinned in pyproject.toml to the minor versions the test passes on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from functools import partial
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

log = logging.getLogger("taskproc.worker")

# member of arq.worker.Worker (or arq.connections.RedisSettings) -> why taskproc needs it
PRIVATE_SURFACE: dict[str, str] = {
    "Worker._poll_iteration": "overridden: taskproc's loop iteration",
    "Worker.tasks": "running attempts, waited for and cancelled by arq's shutdown",
    "Worker.allow_pick_jobs": "False once a graceful shutdown began",
    "Worker.heart_beat": "arq's health-check record, once per iteration",
    "Worker.handle_sig": "wrapped: the runtime hears of a hard shutdown first",
    "Worker.handle_sig_wait_for_completion": "wrapped: the runtime hears of a graceful shutdown first",
    "Worker.close": "wrapped: cancelled attempts must not fail arq's close",
    "Worker.main": "calls _poll_iteration in its loop",
    "Worker._wait_for_tasks_to_complete": "cancels what is left in self.tasks after the grace period",
    "RedisSettings.conn_timeout": "start-up connection timeout",
    "RedisSettings.conn_retries": "start-up connection attempts",
    "RedisSettings.conn_retry_delay": "pause between start-up connection attempts",
}


def redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for `url`: at start-up, 30 connection attempts a second apart, 2 s each."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    return settings


class FencedWorker(Worker):
    """An arq Worker whose loop iteration is `iterate()`; subclasses use only the methods defined here."""

    async def iterate(self) -> None:
        """One iteration of the worker's loop (arq calls it again at once when it returns)."""
        raise NotImplementedError

    def on_stop_requested(self, *, graceful: bool) -> None:
        """Called first thing on SIGTERM/SIGINT; `graceful`: running jobs get the grace period to finish."""

    @property
    def picking_allowed(self) -> bool:
        """False once a graceful shutdown began."""
        return bool(self.allow_pick_jobs)

    def running_jobs(self) -> int:
        return len(self.tasks)

    def job(self, jid: str) -> asyncio.Task[Any] | None:
        task: asyncio.Task[Any] | None = self.tasks.get(jid)
        return task

    def start_job(self, jid: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as job `jid`, where arq's shutdown waits for it and then cancels it."""
        task = asyncio.create_task(coro)
        self.tasks[jid] = task
        task.add_done_callback(partial(self._forget_job, jid))
        return task

    async def beat(self) -> None:
        await self.heart_beat()

    # --- arq's non-public surface, overridden ------------------------------------------------------------------

    async def _poll_iteration(self) -> None:
        await self.iterate()

    def handle_sig(self, signum: signal.Signals) -> None:
        self.on_stop_requested(graceful=False)
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        self.on_stop_requested(graceful=True)
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await super().close()

    def _forget_job(self, jid: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(jid) is task:
            del self.tasks[jid]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s crashed: %r", jid, task.exception())
