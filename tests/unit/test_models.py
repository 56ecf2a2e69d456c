"""Validation rules of the request models, without I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taskproc.models import TERMINAL, WAITING, Priority, TaskBatchCreate, TaskCreate, TaskStatus, TaskUpdate


def test_defaults() -> None:
    t = TaskCreate(type="add")
    assert t.priority is Priority.normal
    assert t.payload == {}
    assert t.max_retries is None and t.timeout_s is None and t.delay_s is None and t.idempotency_key is None
    assert t.queue == "default"


@pytest.mark.parametrize(
    "fields",
    [
        {"type": ""},
        {"type": "x" * 101},
        {"type": "add", "priority": "urgent"},
        {"type": "add", "max_retries": 21},
        {"type": "add", "max_retries": -1},
        {"type": "add", "timeout_s": 0},
        {"type": "add", "timeout_s": 86_401},
        {"type": "add", "delay_s": -0.1},
        {"type": "add", "idempotency_key": ""},
        {"type": "add", "idempotency_key": "k" * 201},
        {"type": "add", "unknown": 1},
        {"type": "add", "payload": [1, 2]},
        {"type": "add", "queue": ""},
        {"type": "add", "queue": "q" * 65},
        {"type": "add", "queue": "Upper"},
        {"type": "add", "queue": "a.b"},
    ],
)
def test_rejects(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TaskCreate.model_validate(fields)


def test_bounds_accepted() -> None:
    t = TaskCreate.model_validate(
        {"type": "add", "max_retries": 20, "timeout_s": 0.001, "delay_s": 0, "idempotency_key": "k" * 200}
    )
    assert t.max_retries == 20


def test_batch_size_bounds() -> None:
    with pytest.raises(ValidationError):
        TaskBatchCreate.model_validate({"tasks": []})
    with pytest.raises(ValidationError):
        TaskBatchCreate.model_validate({"tasks": [{"type": "add"}] * 1001})
    assert len(TaskBatchCreate.model_validate({"tasks": [{"type": "add"}] * 1000}).tasks) == 1000


def test_update_requires_a_valid_priority() -> None:
    assert TaskUpdate.model_validate({"priority": "low"}).priority is Priority.low
    with pytest.raises(ValidationError):
        TaskUpdate.model_validate({})
    with pytest.raises(ValidationError):
        TaskUpdate.model_validate({"priority": "low", "status": "done"})


def test_status_sets_partition_the_states() -> None:
    assert TERMINAL | WAITING | {TaskStatus.running} == set(TaskStatus)
    assert not TERMINAL & WAITING


def test_queue_names_accepted_and_carried_by_a_schedules_task() -> None:
    from taskproc.models import ScheduleTask
    from taskproc.services.schedules import task_create

    for name in ("a", "q" * 64, "video_hd-2"):
        assert TaskCreate(type="add", queue=name).queue == name
    body = ScheduleTask(type="add", queue="nightly").model_dump(mode="json", exclude_none=True)
    assert task_create(body).queue == "nightly"
