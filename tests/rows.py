"""A complete store.TaskRow for unit tests, every column set to a plausible finished task (override any)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from taskproc.models import Priority, TaskStatus
from taskproc.store import TaskRow


def task_row(**fields: Any) -> TaskRow:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": "add",
        "priority": Priority.normal,
        "payload": {},
        "status": TaskStatus.completed,
        "attempts": 1,
        "max_retries": 3,
        "timeout_s": 30.0,
        "result": {"sum": 3},
        "error": None,
        "idempotency_key": None,
        "generation": 1,
        "run_at": now,
        "worker_id": None,
        "cancel_requested": False,
        "created_at": now,
        "started_at": now,
        "finished_at": now,
        "updated_at": now,
        "schedule": None,
        "queue": "default",
        "concurrency_key": None,
        "callback_url": None,
        "traceparent": None,
        "result_ttl_s": None,
        "result_expired_at": None,
        "lost_attempts": 0,
        "quarantined": False,
        **fields,
    }
    return TaskRow(**values)
