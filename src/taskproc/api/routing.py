"""The route class of every API route: its docstring documents it, and every call of it is counted.

A docstring's first line is the OpenAPI summary, the rest the description. Each call increments
`taskproc_api_operations_total{operation=<route name>, outcome=...}` once, whatever the route does: the outcome
comes from the status of its response, or of the answer `api/errors.py` gives to the exception it raised.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from taskproc import metrics
from taskproc.api.errors import outcome_of, status_of

# The outcome of a call that never finished: the request deadline struck, or the client went away.
ABANDONED = "abandoned"


class DocstringRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if endpoint.__doc__ and kwargs.get("summary") is None:
            first, _, rest = inspect.cleandoc(endpoint.__doc__).partition("\n")
            kwargs["summary"] = first.strip()
            if kwargs.get("description") is None:
                kwargs["description"] = rest.strip() or None
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        operation = self.name

        async def counted(request: Request) -> Response:
            outcome = "error"
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                outcome = ABANDONED
                raise
            except Exception as exc:
                outcome = outcome_of(status_of(exc))
                raise
            else:
                outcome = outcome_of(response.status_code)
                return response
            finally:
                metrics.API_OPERATIONS.labels(operation, outcome).inc()

        return counted
