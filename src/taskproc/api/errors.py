"""Maps exceptions to JSON error responses, in one place. Client input never produces a 500."""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskproc.errors import TaskprocError, UnavailableError
from taskproc.services.tasks import cap_errors

log = logging.getLogger("taskproc.api")


def _unavailable(what: str) -> JSONResponse:
    err = UnavailableError(f"{what} unavailable; try again shortly")
    return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TaskprocError)
    async def _taskproc_error(request: Request, exc: TaskprocError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

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

    @app.exception_handler(sa_exc.DataError)
    async def _data_error(request: Request, exc: sa_exc.DataError) -> JSONResponse:
        # E.g. a NUL character in a string, which Postgres text cannot hold. Same shape as other 422s.
        detail = [{"loc": ["request"], "msg": "a value is not acceptable to the database", "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.InterfaceError)
    @app.exception_handler(sa_exc.TimeoutError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(ConnectionError)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return _unavailable("database")

    @app.exception_handler(sa_exc.DBAPIError)
    async def _dbapi_error(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError):
            log.warning("database unavailable: %s", type(exc.orig).__name__)
            return _unavailable("database")
        log.error("database error: %s", type(exc.orig).__name__)
        return JSONResponse({"detail": "internal database error"}, status_code=500)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return _unavailable("redis")
