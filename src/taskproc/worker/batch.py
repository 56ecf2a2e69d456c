"""The worker's hot path in Postgres: claims and completions written for a whole batch in one statement.

A no-op task costs a worker two writes, its claim and its outcome. Issued one by one through the ORM they cost
several round trips and about a millisecond of CPU each; here every claim a loop iteration takes is one
statement, and every outcome that arrives while the previous write is in flight is written by the next one.
Both are single compare-and-set statements in autocommit on a dedicated psycopg connection, prepared once
(`store.claim_batch`, `store.complete_batch`); this module batches the outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from taskproc import retry, store
from taskproc.db import PgWriter
from taskproc.models import TaskStatus

log = logging.getLogger("taskproc.worker")


@dataclass
class Outcome:
    """A successful attempt waiting to be written."""

    id: uuid.UUID
    generation: int
    attempt: int
    result: str
    detail: str
    done: asyncio.Future[TaskStatus | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Completer:
    """Writes successful outcomes in batches: whatever arrived while the previous write was in flight.

    An outcome exists only in this process, so a batch is retried until Postgres takes it (each row is a
    compare-and-set: rewriting one that did commit changes nothing, and a late write after the lease was lost
    is ignored). Callers wait on their outcome's future; the writer keeps going if they are cancelled, so an
    outcome handed over is written even while the worker shuts down (see drain()).
    """

    def __init__(self, writer: PgWriter, *, max_batch: int = 500) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self._pending: list[Outcome] = []
        # After a batch Postgres refused as a whole, this many outcomes are written one per statement.
        self._isolate = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def complete(self, outcome: Outcome) -> TaskStatus | None:
        """Hand over an outcome and wait until it is written; the status it gave the row (`completed`, or
        `canceled` if a cancel was requested meanwhile), None if the row had moved on (a stale attempt).

        Raises what Postgres raised if it refuses this outcome itself (not for an outage: that is retried).
        """
        self._pending.append(outcome)
        self._idle.clear()
        self._ready.set()
        return await asyncio.shield(outcome.done)

    async def run(self, *, transient: tuple[type[BaseException], ...]) -> None:
        delays = retry.Delays(max_s=2.0)
        while True:
            if not self._pending:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            batch = self._pending[: 1 if self._isolate else self._max_batch]
            try:
                written = await self._write(batch)
            except transient as exc:
                delay = delays.next()
                log.warning(
                    "postgres unavailable (%s); %d outcomes kept, retrying in %.1fs",
                    type(exc).__name__,
                    len(batch),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                # Not the connection: Postgres refuses a value (a result jsonb cannot hold, such as \u0000).
                # Write the batch again one outcome at a time, so only the refused one fails.
                if len(batch) > 1:
                    self._isolate = len(batch)
                    continue
                del self._pending[:1]
                self._isolate = max(0, self._isolate - 1)
                if not batch[0].done.done():
                    batch[0].done.set_exception(exc)
                continue
            delays.reset()
            self._isolate = max(0, self._isolate - len(batch))
            del self._pending[: len(batch)]
            for outcome in batch:
                if not outcome.done.done():
                    outcome.done.set_result(written.get(outcome.id))

    async def _write(self, batch: list[Outcome]) -> dict[uuid.UUID, TaskStatus]:
        return await store.complete_batch(self._writer, batch)

    async def close(self) -> None:
        await self._writer.close()

    async def drain(self, within_s: float) -> bool:
        """Wait until every outcome handed over is written (on shutdown); False if that takes over `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
