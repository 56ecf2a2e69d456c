"""ASGI middleware that runs before any parsing: body size and media type limits, and request ids."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;.*)?$", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")


async def _reply(send: Send, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]]) -> None:
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
        length_header = headers.get(b"content-length")
        if length_header is not None:
            try:
                declared = int(length_header)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length", [])
                return
            if declared > self.max_body_bytes:
                await _reply(send, 413, f"request body over the {self.max_body_bytes} byte limit", [])
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply(send, 413, f"request body over the {self.max_body_bytes} byte limit", [])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body.strip():
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if not _JSON_TYPE.match(ctype):
                await _reply(send, 415, "request body must be JSON (Content-Type: application/json)", [])
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestIdMiddleware:
    """Takes X-Request-ID from the client (if sane) or makes one, and returns it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class AccessLogMiddleware:
    """One log line per API request (probes and scrapes excluded), with the request id, status and duration.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a task and a stream per request.
    """

    QUIET = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("taskproc.api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.QUIET:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status_code": status,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
                    "request_id": scope.get("state", {}).get("request_id"),
                },
            )
