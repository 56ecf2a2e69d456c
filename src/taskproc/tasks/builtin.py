"""The built-in task types."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taskproc.tasks import TaskContext, task_type

Number = Annotated[float | int, Field(allow_inf_nan=False)]


class TaskFailedError(Exception):
    """Raised by a handler to fail the attempt with a message."""


class SleepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration_ms: int = Field(ge=0, le=600_000, description="How long to sleep.")
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Chance that the attempt fails.")


@task_type("sleep", payload=SleepIn)
async def sleep(payload: SleepIn, ctx: TaskContext) -> dict[str, int]:
    """Simulated work: sleeps, then fails with probability `fail_rate`."""
    if payload.duration_ms:
        await asyncio.sleep(payload.duration_ms / 1000)
    if payload.fail_rate and random.random() < payload.fail_rate:
        raise TaskFailedError(f"simulated failure (fail_rate={payload.fail_rate})")
    return {"slept_ms": payload.duration_ms}


class AddIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Number
    b: Number


@task_type("add", payload=AddIn)
async def add(payload: AddIn, ctx: TaskContext) -> dict[str, float | int]:
    """Adds two numbers."""
    return {"sum": payload.a + payload.b}


class SumPairsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[tuple[Number, Number]] = Field(min_length=1, max_length=10_000)


@task_type("sum_pairs", payload=SumPairsIn)
async def sum_pairs(payload: SumPairsIn, ctx: TaskContext) -> dict[str, list[float | int]]:
    """Adds each pair of numbers."""
    return {"results": [a + b for a, b in payload.pairs]}


class TextStatsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1_000_000)


_WORD = re.compile(r"[\w']+")


@task_type("text_stats", payload=TextStatsIn)
async def text_stats(payload: TextStatsIn, ctx: TaskContext) -> dict[str, object]:
    """Counts characters, words and lines, and the ten most common words."""
    text = payload.text
    words = [w.lower() for w in _WORD.findall(text)]
    top = Counter(words).most_common(10)
    return {
        "characters": len(text),
        "words": len(words),
        "lines": len(text.splitlines()),
        "top_words": [[word, count] for word, count in top],
    }
