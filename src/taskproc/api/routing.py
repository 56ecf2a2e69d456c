"""Route class: a docstring's first line is the OpenAPI summary, the rest the description."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute


class DocstringRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if endpoint.__doc__ and kwargs.get("summary") is None:
            first, _, rest = inspect.cleandoc(endpoint.__doc__).partition("\n")
            kwargs["summary"] = first.strip()
            if kwargs.get("description") is None:
                kwargs["description"] = rest.strip() or None
        super().__init__(path, endpoint, **kwargs)
