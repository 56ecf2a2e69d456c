"""The messages of GET /api/v1/events, as typed models (the server renders them by hand, so they live here)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Literal

from httpx_sse import ServerSentEvent
from pydantic import BaseModel, ConfigDict, field_serializer

from taskproc.models import Priority, TaskStatus


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskChange(_Message):
    """`event: task`: a task entered `status`. `task_status`/`task_attempts` are its state when delivered."""

    kind: Literal["task"] = "task"
    id: int
    task_id: uuid.UUID
    type: str
    priority: Priority
    status: TaskStatus
    attempt: int
    at: datetime
    detail: str | None
    task_status: TaskStatus
    task_attempts: int

    @field_serializer("at")
    def _utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Ready(_Message):
    """`event: ready`: the replay (if any) is over; `id` is the position reached, the newest event then."""

    kind: Literal["ready"] = "ready"
    id: int


class Reset(_Message):
    """`event: reset`: events were missed (too many, or the id was ahead); reload the state you keep."""

    kind: Literal["reset"] = "reset"
    reason: str


StreamEvent = TaskChange | Ready | Reset


def parse(sse: ServerSentEvent) -> StreamEvent | None:
    """The model for one message; None for kinds this client does not know (a newer server may add some)."""
    if sse.event not in ("task", "ready", "reset"):
        return None
    data = json.loads(sse.data)
    if sse.event == "task":
        return TaskChange.model_validate(data)
    if sse.event == "ready":
        return Ready(id=int(data["last_event_id"]))
    return Reset(reason=str(data.get("reason", "events were missed")))
