"""One exception family, free of HTTP: `api/errors.py` maps each class to its status, headers and body.

An error says what went wrong in the domain's terms: a message, and for invalid input the path of every field
that is wrong inside the operation's input (never where that input travelled in an HTTP request).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FieldPath = tuple[str | int, ...]


class TaskprocError(Exception):
    """Base class of every error taskproc raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class NotFoundError(TaskprocError):
    """The resource does not exist."""


class ConflictError(TaskprocError):
    """The resource is not in a state that allows this operation."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an operation's input.

    `field` is the path inside the input (`("payload", "b")`, `("tasks", 3, "type")`, `("cursor",)`), `type` a
    stable machine-readable code (`missing`, `unknown_task_type`, ...), `msg` a sentence for people.
    """

    field: FieldPath
    msg: str
    type: str


class InvalidInputError(TaskprocError):
    """The input is well-formed but not valid for this operation."""

    def __init__(
        self,
        problems: Iterable[Problem] = (),
        *,
        field: FieldPath | None = None,
        msg: str | None = None,
        type: str = "value_error",
    ) -> None:
        found = list(problems)
        if field is not None:
            found.append(Problem(field=field, msg=msg or "invalid value", type=type))
        if not found:
            raise ValueError("InvalidInputError needs at least one problem")
        self.problems: list[Problem] = found
        super().__init__("; ".join(f"{'.'.join(map(str, p.field)) or 'input'}: {p.msg}" for p in found[:3]))


class UnauthorizedError(TaskprocError):
    """A valid API key is required."""


class PayloadTooLargeError(TaskprocError):
    """The request body is larger than allowed."""


class UnsupportedMediaTypeError(TaskprocError):
    """The request body must be JSON."""


class UnavailableError(TaskprocError):
    """A backing service (Postgres or Redis) is unavailable; try again shortly."""
