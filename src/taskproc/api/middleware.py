"""ASGI middleware that runs before any parsing: body size and media type limits, request ids, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskproc.api.deps import check_bearer
from taskproc.api.errors import http_error
from taskproc.errors import (
    PayloadTooLargeError,
    TaskprocError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

DEFAULT_DEADLINE_S = 4.5

_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;.*)?$", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")


async def _reply(send: Send, status: int, detail: Any, extra_headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _reply_error(send: Send, exc: TaskprocError) -> None:
    """The error's answer from api/errors.py's table, sent before FastAPI (and its exception handlers) runs."""
    status, headers, detail = http_error(exc)
    await _reply(send, status, detail, [(k.lower().encode(), v.encode()) for k, v in headers.items()])


class BodyLimitMiddleware:
    """413 for bodies over the limit (from Content-Length, or while streaming), 415 for non-JSON bodies.

    The whole body is read here, at most `max_body_bytes` of it, before the app parses anything, so an
    oversized or endless body costs at most that much memory.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not await self._length_acceptable(headers.get(b"content-length"), send):
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        if body.strip() and not _JSON_TYPE.match(headers.get(b"content-type", b"").decode("latin-1")):
            await _reply_error(
                send, UnsupportedMediaTypeError("request body must be JSON (Content-Type: application/json)")
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _length_acceptable(self, length_header: bytes | None, send: Send) -> bool:
        """Whether the declared Content-Length (if any) lets the body be read; if not, the answer is sent."""
        if length_header is None:
            return True
        try:
            declared = int(length_header)
        except ValueError:
            await _reply(send, 400, "invalid Content-Length", [])
            return False
        if declared > self.max_body_bytes:
            await _reply_error(send, PayloadTooLargeError(f"request body over the {self.max_body_bytes} byte limit"))
            return False
        return True

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body; None if the client left, or if it outgrew the limit (then the 413 is sent)."""
        # A chunked upload declares no Content-Length, so the limit is also kept while reading.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply_error(
                    send, PayloadTooLargeError(f"request body over the {self.max_body_bytes} byte limit")
                )
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


class DeadlineMiddleware:
    """503 for a request whose response has not started within the deadline, instead of a hang.

    Connect, pool and statement timeouts bound most waits on Postgres, but not all: on a server that is frozen,
    or unreachable behind a network that drops packets, an already open connection waits for TCP to give up
    (many minutes). Here the client gets 503 JSON `request_timeout_s` (from the app's settings) after its
    request (and its body, read by BodyLimitMiddleware first) arrived, whatever the route, and the request is
    cancelled; the answer does not wait for the cancellation to finish (cancelling a query on a server that
    does not answer takes a while). A write may have committed before the deadline struck, so the 503 says the
    outcome is unknown; a submit retried with the same Idempotency-Key is safe. Once the response has started (e.g.
    an event stream) no limit applies. The common path costs one timer, no extra task.
    """

    def __init__(self, app: ASGIApp, *, deadline_s: float | None = None) -> None:
        self.app = app
        self.deadline_s = deadline_s
        self._replies: set[asyncio.Task[None]] = set()

    def _seconds(self, scope: Scope) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        return float(getattr(settings, "request_timeout_s", DEFAULT_DEADLINE_S))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = asyncio.current_task()
        if scope["type"] != "http" or current is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        seconds = self._seconds(scope)
        started = timed_out = False
        reply: asyncio.Task[None] | None = None

        def expire() -> None:
            nonlocal timed_out, reply
            if started:
                return
            timed_out = True
            reply = loop.create_task(
                _reply_error(
                    send,
                    UnavailableError(
                        "timed out: a backing service (Postgres or Redis) is slow or unreachable; the request may "
                        "have taken effect: retry shortly (a submit with the same Idempotency-Key is safe to retry)"
                    ),
                )
            )
            self._replies.add(reply)
            reply.add_done_callback(self._replies.discard)
            current.cancel()

        # The clock starts now, for every method: BodyLimitMiddleware (outside this one) has already read the whole
        # body, so a client slow to upload is not counted, and routes that read no body (cancel, retry) are
        # limited too. Arming on the first body read left those without any limit.
        timer = loop.call_later(seconds, expire)

        async def send_unless_timed_out(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                started = True
                timer.cancel()
            await send(message)

        try:
            await self.app(scope, receive, send_unless_timed_out)
        except asyncio.CancelledError:
            if not timed_out:
                raise
        finally:
            timer.cancel()
        if timed_out:
            await _after_timeout(current, scope, reply)


async def _after_timeout(current: asyncio.Task[Any], scope: Scope, reply: asyncio.Task[None] | None) -> None:
    """Once a request timed out and its cancellation went through: log it, and let the 503 finish sending."""
    # Our own cancellation, now handled: clear it so the server does not see this task as cancelled.
    if current.cancelling():
        current.uncancel()
    logging.getLogger("taskproc.api").warning(
        "request timed out before its answer started: %s %s", scope["method"], scope["path"]
    )
    if reply is not None:
        with contextlib.suppress(Exception):
            await reply


class RequestIdMiddleware:
    """Takes X-Request-ID from the client (if sane) or makes one, returns it on the response, and logs one line
    per API request (probes and scrapes excluded) with the request id, status and duration.

    One layer for both, plain ASGI (not Starlette's BaseHTTPMiddleware, which costs a task and a stream per
    request): every layer that wraps `send` is a call per message of every response.
    """

    QUIET = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("taskproc.api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = b""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming = value
                break
        text = incoming.decode("latin-1")
        request_id = text if _REQUEST_ID.match(text) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        t0 = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] not in self.QUIET and self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status_code": status,
                        "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
                        "request_id": request_id,
                    },
                )


class ApiKeyMiddleware:
    """401 for /api/v1 calls without a valid bearer key, before the body is read or parsed.

    So a stranger learns nothing from validation errors and cannot make the API read a large body.
    """

    def __init__(self, app: ASGIApp, *, keys: list[bytes], prefix: str = "/api/v1") -> None:
        self.app = app
        self.keys = keys
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith(self.prefix):
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            try:
                check_bearer(header, self.keys)
            except UnauthorizedError as exc:
                await _reply_error(send, exc)
                return
        await self.app(scope, receive, send)
