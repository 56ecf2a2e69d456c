"""Result TTLs, size limits and the quarantine flag, in the pieces that need no database: the decorator's bounds,
the result size check, how a task row is reported (a TTL that has passed hides its result at once), and the
settings' bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from taskproc.config import Settings
from taskproc.models import MAX_RESULT_TTL_S, TaskCreate, TaskStatus
from taskproc.services.tasks import to_public
from taskproc.store import TaskRow
from taskproc.tasks.registry import TaskContext, TaskRegistry
from taskproc.worker.runtime import _oversized

from rows import task_row


class In(BaseModel):
    x: int = 0


async def handler(payload: In, ctx: TaskContext) -> int:
    return payload.x


def test_the_decorator_takes_a_result_ttl_within_a_year() -> None:
    registry = TaskRegistry()
    registry.register("kept", payload=In)(handler)
    registry.register("short", payload=In, result_ttl_s=60)(handler)
    registry.register("year", payload=In, result_ttl_s=MAX_RESULT_TTL_S)(handler)
    assert [(t.name, t.result_ttl_s) for t in registry.all()] == [
        ("kept", None),
        ("short", 60.0),
        ("year", MAX_RESULT_TTL_S),
    ]
    for bad in (0, -1, MAX_RESULT_TTL_S + 1):
        with pytest.raises(ValueError, match="result_ttl_s"):
            registry.register(f"bad{bad}", payload=In, result_ttl_s=bad)


def test_a_submits_result_ttl_is_more_than_zero_and_at_most_a_year() -> None:
    assert TaskCreate(type="add", result_ttl_s=MAX_RESULT_TTL_S).result_ttl_s == MAX_RESULT_TTL_S
    assert TaskCreate(type="add").result_ttl_s is None
    for bad in (0, -1, MAX_RESULT_TTL_S + 1):
        with pytest.raises(ValidationError, match="result_ttl_s"):
            TaskCreate(type="add", result_ttl_s=bad)


def test_a_result_over_the_limit_is_named_with_both_sizes() -> None:
    assert _oversized("x" * 100, 100) is None
    assert _oversized("x" * 101, 100) == "result of 101 bytes exceeds TASKPROC_MAX_RESULT_BYTES=100"
    # Bytes, not characters: what Postgres stores.
    assert _oversized('"é"', 3) == "result of 4 bytes exceeds TASKPROC_MAX_RESULT_BYTES=3"


def _row(**fields: Any) -> TaskRow:
    return task_row(**fields)


def test_a_result_is_reported_expired_from_the_end_of_its_ttl_before_the_pass_drops_it() -> None:
    now = datetime.now(UTC)
    kept = to_public(_row())
    assert (kept.result, kept.result_expired, kept.result_expires_at) == ({"sum": 3}, False, None)
    fresh = to_public(_row(result_ttl_s=3600, finished_at=now))
    assert fresh.result == {"sum": 3} and not fresh.result_expired
    assert fresh.result_expires_at == now + timedelta(hours=1)
    passed = to_public(_row(result_ttl_s=1, finished_at=now - timedelta(seconds=2)))
    assert (passed.result, passed.result_expired) == (None, True), "hidden though still stored"
    dropped = to_public(_row(result=None, result_ttl_s=1, result_expired_at=now))
    assert (dropped.result, dropped.result_expired) == (None, True)
    waiting = to_public(_row(status=TaskStatus.pending, finished_at=None, result=None, result_ttl_s=1))
    assert (waiting.result_expires_at, waiting.result_expired) == (None, False)


def test_a_quarantined_row_is_reported_with_its_lost_attempts() -> None:
    task = to_public(
        _row(
            status=TaskStatus.failed,
            result=None,
            error="worker died during 3 attempts",
            lost_attempts=3,
            quarantined=True,
        )
    )
    assert (task.quarantined, task.lost_attempts, task.error) == (True, 3, "worker died during 3 attempts")
    dumped = task.model_dump(mode="json")
    assert dumped["quarantined"] is True and dumped["lost_attempts"] == 3


def test_the_limits_settings_and_their_bounds() -> None:
    s = Settings()
    assert (s.max_lost_attempts, s.max_payload_bytes, s.max_result_bytes) == (3, 262_144, 1_048_576)
    with pytest.raises(ValidationError):
        Settings(max_lost_attempts=0)
    with pytest.raises(ValidationError):
        Settings(max_payload_bytes=10)
