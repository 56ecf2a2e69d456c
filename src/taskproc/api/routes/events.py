"""Server-Sent Events: GET /api/v1/events streams task state changes as they are recorded.

Every row appended to `task_event` becomes one SSE message whose `id:` is the row's bigint id, so a client that
reconnects with `Last-Event-ID` (or `?last_event_id=`) resumes exactly where it left off.

How it scales: one shared poller per API process (an asyncio task, started by the first subscriber, stopping by
itself a few seconds after the last one leaves) reads new rows with an indexed range query every 250 ms and fans
them out to per-connection buffers. Postgres sees one cheap query per process, whatever the number of clients,
and no trigger or NOTIFY slows down the writers. A client that does not keep up is disconnected (its buffer is
bounded) and catches up from the database when it reconnects.

Identity values are handed out before commit, so a row with a lower id may become visible after a higher one.
The poller remembers such holes for a few seconds and fetches them when they are filled; consumers that need
the task's latest state should use `task_status`, which is read when the event is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES

log = logging.getLogger("taskproc.api.events")

POLL_S = 0.25  # how often the shared poller looks for new rows
BATCH = 500  # rows per poll; a full batch is followed by another poll at once
REPLAY_MAX = 1000  # at most this many missed events are replayed on reconnect; beyond: `reset`
BUFFER_MAX = 2000  # per-connection backlog; a client this far behind is disconnected
HEARTBEAT_S = 15.0  # comment line on an idle stream, so proxies and clients know it is alive
RETRY_MS = 2000  # the `retry:` hint sent to EventSource clients
LINGER_S = 5.0  # the poller keeps going this long after the last subscriber left
GAP_TTL_S = 10.0  # how long a hole in the id sequence is waited for (a transaction still committing)
GAP_MAX = 5000  # holes remembered at most
STALE_S = 60.0  # a subscription whose stream has not looked for events this long is dropped


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


_COLUMNS = (
    "e.id, e.task_id, e.at, e.status, e.attempt, e.detail, t.type, t.priority, t.status AS task_status, "
    "t.attempts AS task_attempts"
)
_FROM = "FROM task_event e JOIN task t ON t.id = e.task_id"
_NEW_SQL = sa.text(f"SELECT {_COLUMNS} {_FROM} WHERE e.id > :pos ORDER BY e.id LIMIT :limit")
_NEW_AND_GAPS_SQL = sa.text(
    f"(SELECT {_COLUMNS} {_FROM} WHERE e.id > :pos ORDER BY e.id LIMIT :limit) "
    f"UNION ALL (SELECT {_COLUMNS} {_FROM} WHERE e.id = ANY(:gaps))"
)
_MAX_SQL = sa.text("SELECT coalesce(max(id), 0) FROM task_event")


@dataclass(frozen=True, slots=True)
class Event:
    """One task_event row, already rendered as an SSE message (rendered once, shared by every subscriber)."""

    id: int
    task_id: uuid.UUID
    frame: str


def render(row: Any) -> Event:
    m = row._mapping
    data = {
        "id": m["id"],
        "task_id": str(m["task_id"]),
        "type": m["type"],
        "priority": m["priority"],
        "status": m["status"],
        "attempt": m["attempt"],
        "at": _iso(m["at"]),
        "detail": m["detail"],
        "task_status": m["task_status"],
        "task_attempts": m["task_attempts"],
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return Event(id=m["id"], task_id=m["task_id"], frame=f"id: {m['id']}\nevent: task\ndata: {payload}\n\n")


def control(event: str, data: dict[str, Any], *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Subscription:
    """One connected client: a bounded backlog the poller fills and the stream drains."""

    task_id: uuid.UUID | None
    start: int
    backlog: deque[Event] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False
    active_at: float = field(default_factory=time.monotonic)

    def push(self, events: Sequence[Event]) -> bool:
        """Queue matching events; False when the client is too far behind and has been dropped."""
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), wait_s)
        self.wakeup.clear()
        self.active_at = time.monotonic()
        batch = list(self.backlog)
        self.backlog.clear()
        return batch


class EventHub:
    """The per-process poller and its subscribers."""

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.engine = engine
        self.sessions = sessions
        self.position = 0
        self.subscribers: set[Subscription] = set()
        self._gaps: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def subscribe(self, task_id: uuid.UUID | None) -> Subscription:
        async with self._lock:
            if not self.running:
                async with self.sessions() as session:
                    self.position = int((await session.execute(_MAX_SQL)).scalar_one())
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
        failures = 0
        try:
            while True:
                now = time.monotonic()
                for sub in [s for s in self.subscribers if s.dropped or now - s.active_at > STALE_S]:
                    self.subscribers.discard(sub)
                if self.subscribers:
                    idle_since = None
                else:
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= LINGER_S or server_stopping():
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
                    failures = 0
                except Exception as exc:  # the poller must outlive a database outage
                    failures += 1
                    log.warning("event poller: %s: %s", type(exc).__name__, str(exc)[:200])
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                        conn = None
                    await asyncio.sleep(min(5.0, 0.25 * 2**failures))
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
        params: dict[str, Any] = {"pos": self.position, "limit": BATCH}
        if self._gaps:
            params["gaps"] = list(self._gaps)
            rows = (await conn.execute(_NEW_AND_GAPS_SQL, params)).fetchall()
        else:
            rows = (await conn.execute(_NEW_SQL, params)).fetchall()
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
        if len(self._gaps) > GAP_MAX:
            for gid in sorted(self._gaps)[: len(self._gaps) - GAP_MAX]:
                del self._gaps[gid]
        if events:
            for sub in list(self.subscribers):
                if not sub.push(events):
                    self.subscribers.discard(sub)
                    log.info("event stream subscriber dropped: too far behind")
        return fetched


def get_hub(app: FastAPI) -> EventHub:
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is None:
        hub = EventHub(app.state.engine, app.state.sessions)
        app.state.event_hub = hub
    return hub


def server_stopping() -> bool:
    """True once uvicorn has been told to exit.

    uvicorn waits for open responses before it shuts down, and an event stream never ends by itself; streams
    end themselves when this turns true, so a rolling update isn't held up (clients reconnect elsewhere).
    uvicorn's signal handler is a bound method of its Server, which carries the `should_exit` flag.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is not None:
        await hub.close()


router = APIRouter(tags=["events"], lifespan=lifespan, route_class=DocstringRoute)

_STATUS = {"type": "string", "enum": ["pending", "running", "retrying", "completed", "failed", "canceled"]}
_TASK_DATA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "task_id",
        "type",
        "priority",
        "status",
        "attempt",
        "at",
        "detail",
        "task_status",
        "task_attempts",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "The event's id, as in the message's `id:`."},
        "task_id": {"type": "string", "format": "uuid"},
        "type": {"type": "string"},
        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
        "status": {**_STATUS, "description": "The state the task entered."},
        "attempt": {"type": "integer", "minimum": 0},
        "at": {"type": "string", "format": "date-time"},
        "detail": {"type": ["string", "null"]},
        "task_status": {**_STATUS, "description": "The task's state when the event was delivered."},
        "task_attempts": {"type": "integer", "minimum": 0},
    },
}
_EVENT_ID_SCHEMA = {"type": "string", "pattern": "^[0-9]+$"}


def _message(event: str, data: dict[str, Any], *, with_id: bool, description: str) -> dict[str, Any]:
    """One kind of message: its `event:` name, `id:` if it has one, and `data:` as a JSON text of `data`."""
    return {
        "type": "object",
        "description": description,
        "required": ["event", "data", *(["id"] if with_id else [])],
        "properties": {
            "event": {"const": event},
            "id": _EVENT_ID_SCHEMA,
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


# One server-sent event, as OpenAPI 3.2 describes a `text/event-stream` item (`itemSchema`): the fields of the
# message (`data` is a JSON text; its shape is `contentSchema`). Schemathesis checks each event against it.
EVENT_ITEM_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _message("task", _TASK_DATA, with_id=True, description="A task state change."),
        _message(
            "ready",
            {
                "type": "object",
                "required": ["last_event_id"],
                "properties": {"last_event_id": {"type": "integer", "minimum": 0}},
            },
            with_id=True,
            description="Sent once, after the replay: the position reached.",
        ),
        _message(
            "reset",
            {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
            with_id=False,
            description="Too many events were missed, or Last-Event-ID is ahead: reload the state.",
        ),
    ]
}


# Event ids are bigint identities. ASCII digits only: str.isdigit() also accepts "²", which int() refuses; 18
# digits stay within bigint, which no sequence of events will reach. The header's pattern says the same.
BIGINT_MAX = 2**63 - 1
_EVENT_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


def _parse_last_event_id(header: str, query: int | None) -> int | None:
    # The header wins: EventSource sends it on reconnect while the URL keeps its first query string.
    if not header.strip():
        return query  # an empty header is no id yet
    value = header.strip()
    if not _EVENT_ID.fullmatch(value):
        raise RequestValidationError(
            [
                {
                    "loc": ("header", "Last-Event-ID"),
                    "msg": "must be an event id: at most 18 ASCII digits",
                    "type": "invalid_last_event_id",
                }
            ]
        )
    return int(value)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`; see the endpoint description for the message format.",
            "content": {"text/event-stream": {"itemSchema": EVENT_ITEM_SCHEMA}},
        },
        **{code: ERROR_RESPONSES[code] for code in (401, 422, 503)},
    },
)
async def stream_events(
    request: Request,
    task_id: Annotated[uuid.UUID | None, Query(description="Only this task's events.")] = None,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, le=BIGINT_MAX, description="Resume after this event id (the `Last-Event-ID` header wins)."),
    ] = None,
    # `str` with "" for absent, not `str | None`: a nullable header would be documented as one that may be "null".
    last_event_id_header: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=r"^\s*[0-9]{0,18}\s*$",
            description="Resume after this event id (as EventSource sends it on reconnect): ASCII digits, at "
            "most 18 (event ids are bigints); anything else is 422, an empty value counts as absent.",
        ),
    ] = "",
) -> StreamingResponse:
    """Task state changes as Server-Sent Events.

    Every state change is one message, `event: task`, `id:` = the event's id (increasing), `data:` a JSON
    object: `id`, `task_id`, `type`, `priority`, `status` (the state entered), `attempt`, `at`, `detail`, and
    the task's current `task_status` and `task_attempts`.

    Without `Last-Event-ID` the stream starts with new events only. With it (header, or `last_event_id`
    query parameter) the events after that id are replayed first, at most 1000; if more were missed, an
    `event: reset` message says to reload the state instead, and the stream goes on with new events.
    An id that is not one (anything but at most 18 ASCII digits) is 422; an empty header is none.
    After the replay an `event: ready` message carries the position reached as its `id`. Idle streams get a
    comment line every 15 seconds. `retry:` suggests a reconnect delay; EventSource clients and
    `curl -N -H 'Authorization: Bearer KEY' .../api/v1/events` both work.
    """
    hub = get_hub(request.app)
    resume = _parse_last_event_id(last_event_id_header, last_event_id)
    sub = await hub.subscribe(task_id)
    prologue: list[str] = [f"retry: {RETRY_MS}\n\n"]
    replayed: set[int] = set()
    try:
        async with hub.sessions() as session:
            newest = int((await session.execute(_MAX_SQL)).scalar_one())
            rows: list[Any] = []
            if resume is not None and resume < newest:
                where = "e.id > :after AND e.id <= :upto" + (" AND e.task_id = :task_id" if task_id else "")
                sql = sa.text(f"SELECT {_COLUMNS} {_FROM} WHERE {where} ORDER BY e.id LIMIT :limit")
                params: dict[str, Any] = {"after": resume, "upto": newest, "limit": REPLAY_MAX + 1}
                if task_id:
                    params["task_id"] = task_id
                rows = list((await session.execute(sql, params)).fetchall())
    except BaseException:
        hub.unsubscribe(sub)
        raise
    # `floor`: live events up to it are not sent (the client has them, or asked only for new ones).
    floor = newest
    if resume is not None and resume > newest:
        prologue.append(control("reset", {"reason": "Last-Event-ID is ahead of the newest event"}))
    elif len(rows) > REPLAY_MAX:
        prologue.append(control("reset", {"reason": f"more than {REPLAY_MAX} events missed"}))
    elif resume is not None:
        floor = resume
        for row in rows:
            ev = render(row)
            replayed.add(ev.id)
            prologue.append(ev.frame)
    # Up to `newest`, everything was replayed (or skipped on purpose). The poller brings the rest, and also
    # rows at or below `newest` that were not visible yet (still committing); those already replayed are dropped.
    prologue.append(control("ready", {"last_event_id": newest}, event_id=newest))

    async def body() -> AsyncIterator[str]:
        try:
            yield "".join(prologue)
            last_write = time.monotonic()
            while not sub.dropped and not server_stopping():
                batch = await sub.next_batch(wait_s=1.0)
                # Skip what the client already has (or did not ask for): replayed rows, anything up to `floor`.
                frames = [ev.frame for ev in batch if ev.id > floor and ev.id not in replayed]
                if frames:
                    yield "".join(frames)
                    last_write = time.monotonic()
                elif time.monotonic() - last_write >= HEARTBEAT_S:
                    yield ": keep-alive\n\n"
                    last_write = time.monotonic()
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"},
    )
