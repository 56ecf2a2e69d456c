"""The event hub: one shared poller of `task_event` per process, fanning new rows out to its subscribers.

The poller (an asyncio task, started by the first subscriber, stopping by itself a few seconds after the last
one leaves) reads new rows with an indexed range query (`store.events_after`) every 250 ms and fans them out to
per-subscriber buffers. Postgres sees one cheap query per process, whatever the number of subscribers, and no
trigger or NOTIFY slows down the writers. A subscriber that does not keep up is dropped (its buffer is bounded)
and catches up from the database when it comes back.

Identity values are handed out before commit, so a row with a lower id may become visible after a higher one.
The poller remembers such holes for a few seconds and fetches them when they are filled; consumers that need
the task's latest state should use `task_status`, which is read when the event is fetched.

Each event is rendered once, as the Server-Sent Events message the API streams (api/routes/events.py), and that
text is shared by every subscriber. This module knows no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from taskproc import retry, store
from taskproc.store import StreamEvent

log = logging.getLogger("taskproc.api.events")

POLL_S = 0.25  # how often the shared poller looks for new rows
BATCH = 500  # rows per poll; a full batch is followed by another poll at once
BUFFER_MAX = 2000  # per-subscriber backlog; a subscriber this far behind is dropped
LINGER_S = 5.0  # the poller keeps going this long after the last subscriber left
GAP_TTL_S = 10.0  # how long a hole in the id sequence is waited for (a transaction still committing)
GAP_MAX = 5000  # holes remembered at most
STALE_S = 60.0  # a subscription whose stream has not looked for events this long is dropped


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    """One task_event row, already rendered as an SSE message (rendered once, shared by every subscriber)."""

    id: int
    task_id: uuid.UUID
    frame: str


def render(row: StreamEvent) -> Event:
    data = {
        "id": row.id,
        "task_id": str(row.task_id),
        "type": row.type,
        "priority": row.priority.value,
        "status": row.status.value,
        "attempt": row.attempt,
        "at": _iso(row.at),
        "detail": row.detail,
        "task_status": row.task_status.value,
        "task_attempts": row.task_attempts,
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Event(id=row.id, task_id=row.task_id, frame=f"id: {row.id}\nevent: task\ndata: {payload}\n\n")


# Bulk operations' progress rides on the same stream, as `event: bulk` messages without an id (a reconnect's
# Last-Event-ID stays the last task event's); this id only makes them pass the stream's replay filter.
BULK_EVENT_ID = 2**62


def render_bulk(row: store.BulkRow) -> Event:
    data = {
        "id": str(row.id),
        "action": row.action,
        "status": row.status,
        "total": row.total,
        "done": row.done,
        "failed": row.failed,
        "updated_at": _iso(row.updated_at),
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Event(id=BULK_EVENT_ID, task_id=row.id, frame=f"event: bulk\ndata: {payload}\n\n")


@dataclass(eq=False)
class Subscription:
    """One subscriber: a bounded backlog the poller fills and the consumer drains."""

    task_id: uuid.UUID | None
    start: int
    backlog: deque[Event] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False
    active_at: float = field(default_factory=time.monotonic)

    def push(self, events: Sequence[Event]) -> bool:
        """Queue matching events; False when the subscriber is too far behind and has been dropped."""
        if self.dropped:
            return False
        wanted = events if self.task_id is None else [e for e in events if e.task_id == self.task_id]
        if not wanted:
            return True
        if len(self.backlog) + len(wanted) > BUFFER_MAX:
            self.dropped = True
            self.backlog.clear()
            self.wakeup.set()
            return False
        self.backlog.extend(wanted)
        self.wakeup.set()
        return True

    async def next_batch(self, wait_s: float) -> list[Event]:
        self.active_at = time.monotonic()
        if not self.backlog and not self.dropped:
            # asyncio.timeout, not wait_for, which on Python 3.11 can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.wakeup.wait()
        self.wakeup.clear()
        self.active_at = time.monotonic()
        batch = list(self.backlog)
        self.backlog.clear()
        return batch


def _never() -> bool:
    return False


class EventHub:
    """The per-process poller and its subscribers.

    `stopping` says when the process is shutting down: the poller then stops as soon as nobody listens instead
    of lingering (the API passes a check of its server's exit flag).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        stopping: Callable[[], bool] = _never,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.stopping = stopping
        self.position = 0
        self.subscribers: set[Subscription] = set()
        self._gaps: dict[int, float] = {}
        self._bulk_since: datetime | None = None  # Postgres's clock: bulk progress after it is still to send
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def subscribe(self, task_id: uuid.UUID | None) -> Subscription:
        async with self._lock:
            if not self.running:
                async with self.sessions() as session:
                    self.position = await store.max_event_id(session)
                self._gaps.clear()
                self._task = asyncio.create_task(self._run(), name="taskproc-events-poller")
            # No await between the check above and this line: the poller can't stop in between.
            sub = Subscription(task_id=task_id, start=self.position)
            self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    async def close(self) -> None:
        task, self._task = self._task, None
        self.subscribers.clear()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        conn: AsyncConnection | None = None
        idle_since: float | None = None
        delays = retry.Delays(initial_s=0.5, max_s=5.0)
        try:
            while True:
                now = time.monotonic()
                self._prune(now)
                if self.subscribers:
                    idle_since = None
                else:
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= LINGER_S or self.stopping():
                        # Forget this task now, before the awaits in `finally`: a subscriber arriving
                        # meanwhile must start a new poller rather than join one that is leaving.
                        if self._task is asyncio.current_task():
                            self._task = None
                        return
                try:
                    if conn is None:
                        conn = await self.engine.connect()
                        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    fetched = await self._poll(conn)
                    delays.reset()
                except Exception as exc:  # the poller must outlive a database outage
                    log.warning("event poller: %s: %s", type(exc).__name__, str(exc)[:200])
                    await _discard(conn)
                    conn = None
                    await asyncio.sleep(delays.next())
                    continue
                if fetched < BATCH:
                    await asyncio.sleep(POLL_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close())

    async def _poll(self, conn: AsyncConnection) -> int:
        """Fetch new rows (and any filled holes), fan them out; the number of new rows fetched."""
        now = time.monotonic()
        self._gaps = {gid: until for gid, until in self._gaps.items() if until > now}
        rows = await store.events_after(conn, self.position, limit=BATCH, gaps=list(self._gaps))
        events = sorted((render(r) for r in rows), key=lambda e: e.id)
        fetched = 0
        expected = self.position + 1
        for ev in events:
            if ev.id <= self.position:
                self._gaps.pop(ev.id, None)  # a hole was filled
                continue
            fetched += 1
            if ev.id > expected and ev.id - expected <= GAP_MAX:
                for missing in range(expected, ev.id):
                    self._gaps[missing] = now + GAP_TTL_S
            expected = ev.id + 1
        if fetched:
            self.position = expected - 1
        self._trim_gaps()
        if events:
            self._fan_out(events)
        await self._poll_bulk(conn)
        return fetched

    async def _poll_bulk(self, conn: AsyncConnection) -> None:
        """Send the progress of bulk operations that moved since the last poll (to the stream of all events)."""
        if self._bulk_since is None:
            self._bulk_since = await store.db_now(conn)
            return
        rows = await store.bulk_changed_since(conn, self._bulk_since)
        if rows:
            self._bulk_since = rows[-1].updated_at
            events = [render_bulk(r) for r in rows]
            for sub in list(self.subscribers):
                if sub.task_id is None and not sub.push(events):
                    self.subscribers.discard(sub)

    def _prune(self, now: float) -> None:
        """Forget subscribers that were dropped, or whose stream stopped asking for events (a dead client)."""
        for sub in [s for s in self.subscribers if s.dropped or now - s.active_at > STALE_S]:
            self.subscribers.discard(sub)

    def _trim_gaps(self) -> None:
        # Past the cap the lowest ids (the oldest holes) are given up first, so memory stays bounded.
        if len(self._gaps) > GAP_MAX:
            for gid in sorted(self._gaps)[: len(self._gaps) - GAP_MAX]:
                del self._gaps[gid]

    def _fan_out(self, events: list[Event]) -> None:
        for sub in list(self.subscribers):
            if not sub.push(events):
                self.subscribers.discard(sub)
                log.info("event stream subscriber dropped: too far behind")


async def _discard(conn: AsyncConnection | None) -> None:
    """Close a connection that failed; it is likely broken already, so closing it may fail too."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
