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
from taskproc.models import MAX_RESULT_TTL_S


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


MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    payload_model: type[BaseModel]
    handler: TaskHandler[Any]
    # The concurrency key of a task of this type, from its validated payload (a task's own concurrency_key wins),
    # and the limit each such key gets unless PUT /api/v1/limits/{key} set one.
    key: Callable[[Any], str] | None = None
    max_running_per_key: int | None = None
    rate: tuple[int, float] | None = None  # (count, per_s)
    result_ttl_s: float | None = None  # a task's results are dropped this long after it finished (its own wins)

    @property
    def has_key_limit(self) -> bool:
        return self.key is not None and (self.max_running_per_key is not None or self.rate is not None)

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
        self,
        name: str,
        *,
        payload: type[P],
        description: str | None = None,
        key: Callable[[P], str] | None = None,
        max_running_per_key: int | None = None,
        rate: tuple[int, float] | None = None,
        result_ttl_s: float | None = None,
    ) -> Callable[[TaskHandler[P]], TaskHandler[P]]:
        """Decorator: `@task_type("resize", payload=ResizeIn)` on `async def resize(payload, ctx)`.

        `key` derives each task's concurrency key from its validated payload (`key=lambda p: p.tenant`); with
        `max_running_per_key=N` and/or `rate=(count, per_s)` every such key gets that limit, enforced across all
        workers, unless PUT /api/v1/limits/{key} set another. `result_ttl_s`: its tasks' results are dropped this
        long after they finished, unless a task says otherwise.
        """
        if (max_running_per_key is not None or rate is not None) and key is None:
            raise ValueError(f"task type {name!r}: max_running_per_key= and rate= need key= to name the key")
        if max_running_per_key is not None and max_running_per_key < 1:
            raise ValueError(f"task type {name!r}: max_running_per_key must be at least 1")
        if rate is not None and (rate[0] < 1 or rate[1] <= 0):
            raise ValueError(f"task type {name!r}: rate is (count >= 1, per_s > 0)")
        if result_ttl_s is not None and not 0 < result_ttl_s <= MAX_RESULT_TTL_S:
            raise ValueError(f"task type {name!r}: result_ttl_s is > 0 and at most {MAX_RESULT_TTL_S:g} (a year)")

        def decorate(handler: TaskHandler[P]) -> TaskHandler[P]:
            if not inspect.iscoroutinefunction(handler):
                raise TypeError(f"task handler for {name!r} must be an async function")
            if name in self._types and self._types[name].handler is not handler:
                raise ValueError(f"task type {name!r} is already registered")
            doc = description or inspect.getdoc(handler) or ""
            self._types[name] = TaskType(
                name=name,
                description=doc.split("\n\n")[0].strip(),
                payload_model=payload,
                handler=handler,
                key=key,
                max_running_per_key=max_running_per_key,
                rate=None if rate is None else (int(rate[0]), float(rate[1])),
                result_ttl_s=None if result_ttl_s is None else float(result_ttl_s),
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

    def concurrency_key(self, name: str, payload: dict[str, Any], *, at: FieldPath = ()) -> str | None:
        """The key the type derives from a (validated) payload, if it declares one; InvalidInputError if the
        function fails or gives something that is not a key."""
        task_type = self._types.get(name)
        if task_type is None or task_type.key is None:
            return None
        try:
            value = task_type.key(task_type.payload_model.model_validate(payload))
        except Exception as exc:
            raise InvalidInputError(
                field=(*at, "payload"),
                msg=f"the type's key function failed: {type(exc).__name__}: {exc}",
                type="concurrency_key",
            ) from None
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_CHARS:
            raise InvalidInputError(
                field=(*at, "payload"),
                msg=f"the type's key function must return a string of 1 to {MAX_KEY_CHARS} characters, not {value!r}",
                type="concurrency_key",
            )
        return value


registry = TaskRegistry()
task_type = registry.register
