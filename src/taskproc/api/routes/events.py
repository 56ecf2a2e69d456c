"""Server-Sent Events: GET /api/v1/events streams task state changes as they are recorded.

Every row appended to `task_event` becomes one SSE message whose `id:` is the row's bigint id, so a client that
reconnects with `Last-Event-ID` (or `?last_event_id=`) resumes exactly where it left off.

How it scales: every stream of an API process is a subscription of the process's one event hub
(taskproc.events: one shared poller of task_event, bounded per-subscriber buffers). A client that does not keep
up is disconnected and catches up from the database when it reconnects. This module is the HTTP side only: the
replay on reconnect, the SSE framing, heartbeats and the end of streams when the server stops.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from taskproc import store
from taskproc.api.routing import DocstringRoute
from taskproc.api.schemas import ERROR_RESPONSES
from taskproc.events import EventHub, Subscription, render
from taskproc.store import StreamEvent

REPLAY_MAX = 1000  # at most this many missed events are replayed on reconnect; beyond: `reset`
HEARTBEAT_S = 15.0  # comment line on an idle stream, so proxies and clients know it is alive
RETRY_MS = 2000  # the `retry:` hint sent to EventSource clients


def control(event: str, data: dict[str, Any], *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def get_hub(app: FastAPI) -> EventHub:
    hub: EventHub | None = getattr(app.state, "event_hub", None)
    if hub is None:
        hub = EventHub(app.state.engine, app.state.sessions, stopping=server_stopping)
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


async def _body(
    hub: EventHub, sub: Subscription, prologue: list[str], floor: int, replayed: set[int]
) -> AsyncIterator[str]:
    """The stream's text: the prologue, then live events after `floor` not replayed, or a heartbeat when idle."""
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
            newest = await store.max_event_id(session)
            rows: list[StreamEvent] = []
            if resume is not None and resume < newest:
                rows = await store.events_between(
                    session, after=resume, upto=newest, limit=REPLAY_MAX + 1, task_id=task_id
                )
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

    return StreamingResponse(
        _body(hub, sub, prologue, floor, replayed),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"},
    )
