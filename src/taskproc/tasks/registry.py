"""The task-type registry: a decorator names a type, its payload model and its handler.

It knows no task type of its own: the built-in ones (taskproc.tasks.builtin) register themselves on import
like any user module named in TASKPROC_TASK_MODULES (see taskproc.tasks.load_task_modules)."""

from __future__ import annotations

import hashlib
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from taskproc.errors import FieldPath, InvalidInputError, Problem


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the attempt it is running."""

    task_id: uuid.UUID
    type: str
    attempt: int


P_contra = TypeVar("P_contra", bound=BaseModel, contravariant=True)
P = TypeVar("P", bound=BaseModel)


class TaskHandler(Protocol[P_contra]):
    """A handler: awaits its validated payload and returns a JSON-serialisable result."""

    def __call__(self, payload: P_contra, ctx: TaskContext, /) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    payload_model: type[BaseModel]
    handler: TaskHandler[Any]

    def payload_schema(self) -> dict[str, Any]:
        return self.payload_model.model_json_schema()

    def fingerprint(self) -> str:
        """A short digest of the payload schema: two workers serve the same version of a type if it is equal."""
        canonical = json.dumps(self.payload_schema(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class TaskRegistry:
    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(
        self, name: str, *, payload: type[P], description: str | None = None
    ) -> Callable[[TaskHandler[P]], TaskHandler[P]]:
        """Decorator: `@task_type("resize", payload=ResizeIn)` on `async def resize(payload, ctx)`."""

        def decorate(handler: TaskHandler[P]) -> TaskHandler[P]:
            if not inspect.iscoroutinefunction(handler):
                raise TypeError(f"task handler for {name!r} must be an async function")
            if name in self._types and self._types[name].handler is not handler:
                raise ValueError(f"task type {name!r} is already registered")
            doc = description or inspect.getdoc(handler) or ""
            self._types[name] = TaskType(
                name=name, description=doc.split("\n\n")[0].strip(), payload_model=payload, handler=handler
            )
            return handler

        return decorate

    def get(self, name: str) -> TaskType | None:
        return self._types.get(name)

    def all(self) -> list[TaskType]:
        return sorted(self._types.values(), key=lambda t: t.name)

    def advertisement(self) -> dict[str, str]:
        """What a worker tells the others it serves (its `worker.task_types`): type name -> schema fingerprint."""
        return {t.name: t.fingerprint() for t in self.all()}

    def validate_payload(self, name: str, payload: dict[str, Any], *, at: FieldPath = ()) -> dict[str, Any]:
        """The payload normalised by the type's model; InvalidInputError otherwise, its fields under `at` (the
        path of this task inside the operation's input)."""
        task_type = self._types.get(name)
        if task_type is None:
            known = ", ".join(sorted(self._types))
            raise InvalidInputError(
                field=(*at, "type"), msg=f"unknown task type {name!r}; known types: {known}", type="unknown_task_type"
            )
        try:
            model = task_type.payload_model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInputError(
                Problem(field=(*at, "payload", *err["loc"]), msg=err["msg"], type=err["type"])
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ) from None
        return model.model_dump(mode="json")


registry = TaskRegistry()
task_type = registry.register
