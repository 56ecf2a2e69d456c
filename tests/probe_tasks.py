"""A task type for tests that measure what ran when: `probe` logs its start and end to a Redis list.

Loaded in process by importing this module, in worker processes with TASKPROC_TASK_MODULES=probe_tasks and
this directory on PYTHONPATH. Each entry is "task id|attempt|start|end" with wall-clock times (time.time(), the
host's clock, which Postgres on the same host shares); a killed worker's attempt logs its start only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from taskproc.tasks import TaskContext, task_type


class ProbeIn(BaseModel):
    redis_url: str
    log: str = Field(description="The Redis list the attempt's start and end are appended to.")
    duration_ms: int = Field(default=100, ge=0, le=60_000)
    fail: bool = False


@task_type("probe", payload=ProbeIn)
async def probe(payload: ProbeIn, ctx: TaskContext) -> dict[str, int]:
    """Logs when it started and ended (tests only)."""
    redis = Redis.from_url(payload.redis_url)
    try:
        start = time.time()
        await redis.rpush(payload.log, f"{ctx.task_id}|{ctx.attempt}|start|{start}")
        await asyncio.sleep(payload.duration_ms / 1000)
        if payload.fail:
            raise RuntimeError("probe asked to fail")
        await redis.rpush(payload.log, f"{ctx.task_id}|{ctx.attempt}|end|{time.time()}")
    finally:
        await redis.aclose()
    return {"attempt": ctx.attempt}


@dataclass(frozen=True)
class Attempt:
    task_id: str
    attempt: int
    start: float
    end: float | None  # None: it never logged its end (its worker died, or it failed or was canceled)


def attempts(entries: list[bytes]) -> list[Attempt]:
    """The attempts a probe log describes."""
    starts: dict[tuple[str, int], float] = {}
    ends: dict[tuple[str, int], float] = {}
    for raw in entries:
        task_id, attempt, what, at = raw.decode().split("|")
        (starts if what == "start" else ends)[(task_id, int(attempt))] = float(at)
    return [Attempt(t, a, s, ends.get((t, a))) for (t, a), s in sorted(starts.items(), key=lambda kv: kv[1])]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an interval that ends exactly when another starts does not overlap)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    open_, most = 0, 0
    for _, step in edges:
        open_ += step
        most = max(most, open_)
    return most
