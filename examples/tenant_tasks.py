"""An example of a task type that limits each tenant, loaded with TASKPROC_TASK_MODULES=tenant_tasks.

Every `tenant_report` task counts against the key `tenant:<tenant>`: at most two of one tenant run at once and at
most ten of one tenant start per minute, across every worker, with no API call (PUT /api/v1/limits/{key} can
still give one tenant a different limit).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from taskproc.tasks import TaskContext, task_type


class TenantReportIn(BaseModel):
    tenant: str = Field(min_length=1, max_length=100, description="Whose report.")
    duration_ms: int = Field(default=0, ge=0, le=60_000, description="How long building it takes.")


@task_type(
    "tenant_report",
    payload=TenantReportIn,
    key=lambda p: f"tenant:{p.tenant}",
    max_running_per_key=2,
    rate=(10, 60.0),
)
async def tenant_report(payload: TenantReportIn, ctx: TaskContext) -> dict[str, str]:
    """Builds a tenant's report (an example of a per-tenant limit declared by the task type)."""
    await asyncio.sleep(payload.duration_ms / 1000)
    return {"tenant": payload.tenant, "task": str(ctx.task_id)}
