"""Exceptions to JSON error responses, in one place. Client input never produces a 500.

`ERRORS` is the one table from the domain's error classes (`taskproc.errors`, which know nothing of HTTP) to
a status, headers and a body; the exception handlers, the ASGI middleware (which answers before FastAPI runs)
and the per-route operation counter all read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskproc.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    Problem,
    TaskprocError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("taskproc.api")

MAX_REPORTED_ERRORS = 100

# Where a domain input travels in a request, by the first element of a Problem's field path; anything not named
# here is (part of) the JSON body.
INPUT_LOCATION: dict[str | int, str] = {"cursor": "query"}


def _message(exc: TaskprocError) -> Any:
    return exc.message


def _problems(exc: TaskprocError) -> Any:
    assert isinstance(exc, InvalidInputError)
    return problem_items(exc.problems)


@dataclass(frozen=True)
class HttpError:
    """How one error class is answered: `{"detail": detail(exc)}` with this status and these headers."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    detail: Callable[[TaskprocError], Any] = _message


ERRORS: dict[type[TaskprocError], HttpError] = {
    NotFoundError: HttpError(404),
    ConflictError: HttpError(409),
    InvalidInputError: HttpError(422, detail=_problems),
    UnauthorizedError: HttpError(401, {"WWW-Authenticate": 'Bearer realm="taskproc"'}),
    PayloadTooLargeError: HttpError(413),
    UnsupportedMediaTypeError: HttpError(415),
    UnavailableError: HttpError(503, {"Retry-After": "2"}),
    TaskprocError: HttpError(500),
}

# Exceptions that mean Postgres or Redis is unreachable or too slow: answered as UnavailableError.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    TimeoutError,
    ConnectionError,
    RedisError,
)

# The outcome label of taskproc_api_operations_total for a response status; any other 2xx/3xx is "ok", any
# other status "error". metrics.API_OPERATIONS' help text lists these.
OUTCOMES: dict[int, str] = {
    401: "unauthorized",
    404: "not_found",
    409: "conflict",
    413: "invalid",
    415: "invalid",
    422: "invalid",
    503: "unavailable",
}


def http_error(exc: TaskprocError) -> tuple[int, dict[str, str], Any]:
    """(status, headers, detail) of a domain error, from the nearest class in `ERRORS`."""
    for cls in type(exc).__mro__:
        spec = ERRORS.get(cls)
        if spec is not None:
            return spec.status, dict(spec.headers), spec.detail(exc)
    raise AssertionError("TaskprocError is in ERRORS")  # pragma: no cover


def cap_errors(errors: list[dict[str, Any]], limit: int = MAX_REPORTED_ERRORS) -> list[dict[str, Any]]:
    """At most `limit` validation errors, so a 1 MiB body with 60 000 bad keys can't make a 6 MB answer."""
    if len(errors) <= limit:
        return errors
    more = {"loc": ["body"], "msg": f"{len(errors) - limit} more errors not shown", "type": "too_many_errors"}
    return [*errors[:limit], more]


def problem_items(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """Problems in FastAPI's validation error shape (`loc` = where in the request, then the field path)."""
    items = [
        {
            "loc": [INPUT_LOCATION.get(p.field[0], "body") if p.field else "body", *p.field],
            "msg": p.msg,
            "type": p.type,
        }
        for p in problems
    ]
    return cap_errors(items)


def status_of(exc: BaseException) -> int:
    """The status the handlers below answer `exc` with (500 for what they do not know)."""
    if isinstance(exc, TaskprocError):
        return http_error(exc)[0]
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return (
            422
            if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError | ValueError)
            else exc.status_code
        )
    if isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)
    ):
        return 503
    if isinstance(exc, UNAVAILABLE):
        return 503
    if isinstance(exc, sa_exc.DataError | psycopg.DataError):
        return 422
    return 500


def outcome_of(status: int) -> str:
    if status in OUTCOMES:
        return OUTCOMES[status]
    return "ok" if status < 400 else "error"


def error_response(exc: TaskprocError) -> JSONResponse:
    status, headers, detail = http_error(exc)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _unavailable(what: str) -> JSONResponse:
    return error_response(UnavailableError(f"{what} unavailable; try again shortly"))


def install_error_handlers(app: FastAPI) -> None:
    """Answer the domain's errors from `ERRORS`, bad requests with 422, and a backing service's outage with 503."""
    _install_domain_handlers(app)
    _install_request_handlers(app)
    _install_backing_service_handlers(app)


def _install_domain_handlers(app: FastAPI) -> None:
    @app.exception_handler(TaskprocError)
    async def _taskproc_error(request: Request, exc: TaskprocError) -> JSONResponse:
        return error_response(exc)


def _install_request_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The input is left out on purpose: it may be large, and it may hold a secret.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": cap_errors(detail)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, RecursionError | ValueError):
            # FastAPI's "error parsing the body": JSON nested deeper than the parser's recursion limit, or an
            # integer literal with thousands of digits. Both are invalid input, answered like malformed JSON.
            msg = "JSON nested too deeply" if isinstance(cause, RecursionError) else "JSON number out of range"
            return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]}, status_code=422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def _data_error(request: Request, exc: Exception) -> JSONResponse:
        # E.g. a NUL character in a string, which Postgres text cannot hold. Same shape as other 422s.
        detail = [{"loc": ["request"], "msg": "a value is not acceptable to the database", "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    # SQLAlchemy's wrapper, and psycopg's own from the statements run on the driver's connection
    # (store._driver_connection).
    app.add_exception_handler(sa_exc.DataError, _data_error)
    app.add_exception_handler(psycopg.DataError, _data_error)


def _install_backing_service_handlers(app: FastAPI) -> None:
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return _unavailable("database")

    for cls in UNAVAILABLE:
        if cls is not RedisError:
            app.add_exception_handler(cls, _db_down)

    @app.exception_handler(sa_exc.DBAPIError)
    async def _dbapi_error(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError):
            log.warning("database unavailable: %s", type(exc.orig).__name__)
            return _unavailable("database")
        log.error("database error: %s", type(exc.orig).__name__)
        return JSONResponse({"detail": "internal database error"}, status_code=500)

    @app.exception_handler(psycopg.Error)
    async def _psycopg_error(request: Request, exc: psycopg.Error) -> JSONResponse:
        # The driver's own errors (store._driver_connection), answered as their SQLAlchemy wrappers are above.
        log.error("database error: %s", type(exc).__name__)
        return JSONResponse({"detail": "internal database error"}, status_code=500)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return _unavailable("redis")
