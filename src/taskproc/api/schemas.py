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
    413: {"model": ErrorResponse, "description": "Request body too large."},
    415: {"model": ErrorResponse, "description": "Request body is not JSON."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
    503: {"model": ErrorResponse, "description": "Postgres or Redis unavailable."},
}
