"""A user's module named in TASKPROC_TASK_MODULES adds a task type to both API and workers."""

from __future__ import annotations

import os

from conftest import StackFactory
from support import ROOT


def test_custom_type_from_task_modules(stack_factory: StackFactory) -> None:
    env = {
        "TASKPROC_TASK_MODULES": "my_tasks",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]),
    }
    with stack_factory(workers=1, env=env) as stack:
        types = {t["name"]: t for t in stack.client.get("/api/v1/task-types").json()}
        assert "reverse" in types
        assert types["reverse"]["payload_schema"]["required"] == ["text"]
        bad = stack.client.post("/api/v1/tasks", json={"type": "reverse", "payload": {"txt": "x"}})
        assert bad.status_code == 422
        task = stack.submit("reverse", {"text": "abc", "upper": True})
        assert stack.wait_status(task["id"], "completed")["result"] == {"text": "CBA"}
