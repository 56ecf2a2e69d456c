"""An example of a user-defined task type, loaded with TASKPROC_TASK_MODULES=my_tasks."""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskproc.tasks import TaskContext, task_type


class ReverseIn(BaseModel):
    text: str = Field(max_length=10_000, description="Text to reverse.")
    upper: bool = Field(default=False, description="Also upper-case it.")


@task_type("reverse", payload=ReverseIn)
async def reverse(payload: ReverseIn, ctx: TaskContext) -> dict[str, str]:
    """Reverses a string (an example of a user-defined task type)."""
    out = payload.text[::-1]
    return {"text": out.upper() if payload.upper else out}
