"""Shapes shared by the routes' OpenAPI documentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: `detail` is a message, or a list of validation errors."""

    detail: str | list[dict[str, Any]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request."},
    401: {"model": ErrorResponse, "description": "API key missing or invalid (when keys are configured)."},
    404: {"model": ErrorResponse, "description": "No such task."},
    409: {"model": ErrorResponse, "description": "Not allowed in the task's current state."},
    413: {"model": ErrorResponse, "description": "Request body, or a task's payload, too large."},
    415: {"model": ErrorResponse, "description": "Request body is not JSON."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
    503: {"model": ErrorResponse, "description": "Postgres or Redis unavailable."},
}

# A submit's 503 may come from the request deadline after the insert committed: the outcome is unknown.
SUBMIT_503: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "Postgres or Redis unavailable, or too slow to answer within the request deadline. The "
        "task(s) may have been created before the deadline struck: submit again with the same idempotency key "
        "(`Idempotency-Key` header or `idempotency_key`), which returns the existing task instead of a second "
        "one. Without a key, a retry can create a duplicate.",
    }
}
