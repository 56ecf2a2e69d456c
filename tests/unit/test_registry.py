"""The task-type registry and the built-in handlers, called directly."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import BaseModel

from taskproc.api.errors import problem_items
from taskproc.errors import InvalidInputError
from taskproc.tasks import builtin
from taskproc.tasks.registry import TaskContext, TaskRegistry, registry

CTX = TaskContext(task_id=uuid.uuid4(), type="t", attempt=1)


class EchoIn(BaseModel):
    word: str


def test_register_and_describe() -> None:
    reg = TaskRegistry()

    @reg.register("echo", payload=EchoIn)
    async def echo(payload: EchoIn, ctx: TaskContext) -> dict[str, str]:
        """Echoes a word.

        Longer text that is not part of the description."""
        return {"word": payload.word}

    t = reg.get("echo")
    assert t is not None
    assert t.description == "Echoes a word."
    assert t.payload_schema()["required"] == ["word"]
    assert asyncio.run(t.handler(EchoIn(word="hi"), CTX)) == {"word": "hi"}


def test_sync_handlers_and_duplicates_are_refused() -> None:
    reg = TaskRegistry()
    with pytest.raises(TypeError):
        reg.register("bad", payload=EchoIn)(lambda p, c: None)  # type: ignore[arg-type,return-value]

    async def one(payload: EchoIn, ctx: TaskContext) -> None:
        return None

    async def two(payload: EchoIn, ctx: TaskContext) -> None:
        return None

    reg.register("x", payload=EchoIn)(one)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", payload=EchoIn)(two)


def test_validate_payload_errors_have_locations() -> None:
    with pytest.raises(InvalidInputError) as exc:
        registry.validate_payload("add", {"a": 1}, at=("tasks", 3))
    assert exc.value.problems[0].field == ("tasks", 3, "payload", "b")
    # The API answers it in FastAPI's shape, under the body.
    assert problem_items(exc.value.problems)[0]["loc"] == ["body", "tasks", 3, "payload", "b"]
    with pytest.raises(InvalidInputError) as exc:
        registry.validate_payload("nope", {})
    assert exc.value.problems[0].field == ("type",)
    assert problem_items(exc.value.problems)[0]["loc"] == ["body", "type"]
    assert "add" in exc.value.problems[0].msg


def test_validate_rejects_non_finite_numbers() -> None:
    with pytest.raises(InvalidInputError):
        registry.validate_payload("add", {"a": float("nan"), "b": 1})


def test_builtins() -> None:
    assert asyncio.run(builtin.add(builtin.AddIn(a=2, b=3), CTX)) == {"sum": 5}
    assert asyncio.run(builtin.sum_pairs(builtin.SumPairsIn(pairs=[(1, 2), (3.5, 0.5)]), CTX)) == {"results": [3, 4.0]}
    stats = asyncio.run(builtin.text_stats(builtin.TextStatsIn(text="A b a\nc"), CTX))
    assert stats == {"characters": 7, "words": 4, "lines": 2, "top_words": [["a", 2], ["b", 1], ["c", 1]]}
    assert asyncio.run(builtin.sleep(builtin.SleepIn(duration_ms=0), CTX)) == {"slept_ms": 0}
    with pytest.raises(builtin.TaskFailedError):
        asyncio.run(builtin.sleep(builtin.SleepIn(duration_ms=0, fail_rate=1.0), CTX))


def test_top_words_capped_at_ten() -> None:
    text = " ".join(f"w{i}" for i in range(50))
    stats = asyncio.run(builtin.text_stats(builtin.TextStatsIn(text=text), CTX))
    assert len(stats["top_words"]) == 10  # type: ignore[arg-type]


class EchoV2In(BaseModel):
    word: str
    loud: bool = False


def test_advertisement_names_each_type_with_a_fingerprint_of_its_schema() -> None:
    old, new, same = TaskRegistry(), TaskRegistry(), TaskRegistry()

    async def echo(payload: BaseModel, ctx: TaskContext) -> None:
        return None

    old.register("echo", payload=EchoIn)(echo)
    same.register("echo", payload=EchoIn)(echo)
    new.register("echo", payload=EchoV2In)(echo)
    new.register("other", payload=EchoIn)(echo)
    assert set(new.advertisement()) == {"echo", "other"}
    # Same schema, same fingerprint (workers of one version agree); a changed schema is another version.
    assert old.advertisement() == same.advertisement()
    assert old.advertisement()["echo"] != new.advertisement()["echo"]
