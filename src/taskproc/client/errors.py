"""The SDK's errors: one family under `TaskprocClientError`, itself a `taskproc.errors.TaskprocError`.

An answer with an error status becomes an `APIStatusError` subclass chosen by the status here, on the client
side: the server's exception classes say nothing about HTTP. `detail` is the server's `detail`, as sent (a
message, or a list of validation errors with `loc`, `msg` and `type`).
"""

from __future__ import annotations

from typing import Any

import httpx

from taskproc.errors import TaskprocError


class TaskprocClientError(TaskprocError):
    """Base class of every error the client raises."""


class APIConnectionError(TaskprocClientError):
    """The API could not be reached, or the connection broke before an answer arrived."""


class APITimeoutError(APIConnectionError):
    """The API did not answer within the client's timeout."""


class InvalidResponseError(TaskprocClientError):
    """The server answered with something that is not what the taskproc API sends (is the base URL right?)."""


class WaitTimeoutError(TaskprocClientError, TimeoutError):
    """`wait()` gave up: the task had not ended within the timeout. `task` is its last known state."""

    def __init__(self, task: Any, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.status} after {timeout:g} s")
        self.task = task
        self.timeout = timeout


class APIStatusError(TaskprocClientError):
    """The API answered with an error status; `status_code`, the server's `detail`, and the `response`."""

    detail: Any  # a message (str), or a list of validation errors (dicts with loc, msg, type)

    def __init__(self, response: httpx.Response, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = response.status_code
        self.reason = response.reason_phrase
        self.response = response

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}: {describe_detail(self.detail) or self.reason}"


class BadRequestError(APIStatusError):
    """400, 413 or 415: the request itself was malformed (not JSON, too large)."""


class UnauthorizedError(APIStatusError):
    """401 or 403: an API key is required, or the one sent is not valid."""


class NotFoundError(APIStatusError):
    """404: no such task."""


class ConflictError(APIStatusError):
    """409: not allowed in the task's current state (say, canceling a finished task)."""


class InvalidInputError(APIStatusError):
    """422: invalid input; `detail` lists the errors, each with `loc`, `msg` and `type`."""


class UnavailableError(APIStatusError):
    """503: Postgres or Redis is unavailable, or the request ran out of time; try again shortly."""


class ServerError(APIStatusError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    415: BadRequestError,
    422: InvalidInputError,
    503: UnavailableError,
}


def describe_detail(detail: Any) -> str:
    """The server's `detail` as text: validation errors one per line, as `field.path: message`."""
    if isinstance(detail, list):
        lines = []
        for item in detail:
            item = item if isinstance(item, dict) else {"msg": str(item)}
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
            lines.append(f"  {'.'.join(loc)}: {item.get('msg', '')}" if loc else f"  {item.get('msg', '')}")
        return "invalid input:\n" + "\n".join(lines)
    return str(detail) if detail else ""


def status_error(response: httpx.Response) -> APIStatusError:
    """The error for an answer with status >= 400 (its body must have been read)."""
    try:
        body = response.json()
        detail: Any = body.get("detail") if isinstance(body, dict) else body
    except ValueError:
        detail = response.text[:300] or None
    code = response.status_code
    cls = _BY_STATUS.get(code) or (ServerError if code >= 500 else APIStatusError)
    return cls(response, detail)


def transport_error(exc: httpx.HTTPError, base_url: str) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"the API at {base_url} did not answer in time")
    return APIConnectionError(f"cannot reach the API at {base_url}: {str(exc) or type(exc).__name__}")
