"""Task types for the tests of crash quarantine and result TTLs, loaded like probe_tasks (TASKPROC_TASK_MODULES=
poison_tasks with this directory on PYTHONPATH, in the API too, which validates their payloads).

`poison` kills the worker process that runs it, as a segfaulting native library or an out-of-memory kill would:
nothing of the attempt is recorded, the reaper finds it when the worker's lease expires.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from pydantic import BaseModel

from taskproc.tasks import TaskContext, task_type


class PoisonIn(BaseModel):
    note: str = ""


@task_type("poison", payload=PoisonIn)
async def poison(payload: PoisonIn, ctx: TaskContext) -> None:
    """Kills its own worker process with SIGKILL (tests only)."""
    os.kill(os.getpid(), signal.SIGKILL)


class EchoIn(BaseModel):
    value: Any = None


@task_type("short_lived_echo", payload=EchoIn, result_ttl_s=1.0)
async def short_lived_echo(payload: EchoIn, ctx: TaskContext) -> Any:
    """Returns its payload's value; the type drops results a second after the task finished (tests only)."""
    return payload.value
