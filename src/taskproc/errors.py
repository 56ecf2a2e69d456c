"""One exception family; `api/errors.py` maps each subclass to its HTTP status in one place."""

from __future__ import annotations

from typing import Any


class TaskprocError(Exception):
    """Base class of every error taskproc raises on purpose."""

    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, detail: Any = None) -> None:
        self.detail = detail if detail is not None else self.__class__.__doc__
        super().__init__(str(self.detail))


class NotFoundError(TaskprocError):
    """The resource does not exist."""

    status_code = 404


class ConflictError(TaskprocError):
    """The resource is not in a state that allows this operation."""

    status_code = 409


class InvalidInputError(TaskprocError):
    """The request is well-formed JSON but not valid for this operation."""

    status_code = 422


class UnauthorizedError(TaskprocError):
    """A valid API key is required."""

    status_code = 401
    headers = {"WWW-Authenticate": 'Bearer realm="taskproc"'}


class PayloadTooLargeError(TaskprocError):
    """The request body is larger than allowed."""

    status_code = 413


class UnsupportedMediaTypeError(TaskprocError):
    """The request body must be application/json."""

    status_code = 415


class UnavailableError(TaskprocError):
    """A backing service (Postgres or Redis) is unavailable; try again shortly."""

    status_code = 503
    headers = {"Retry-After": "2"}
