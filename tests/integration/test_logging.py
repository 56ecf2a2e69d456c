"""Structured logs from real processes: JSON lines with the task fields, request ids in and out, a log file."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import StackFactory
from support import wait_for


def _json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_json_logs_request_ids_and_log_file(stack_factory: StackFactory, tmp_path: Path) -> None:
    log_file = tmp_path / "task_processing.log"
    env = {"TASKPROC_LOG_FORMAT": "json", "TASKPROC_LOG_FILE": str(log_file)}
    with stack_factory(workers=1, env=env) as stack:
        r = stack.client.post(
            "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}}, headers={"X-Request-ID": "req-abc-123"}
        )
        assert r.headers["x-request-id"] == "req-abc-123"
        assert len(stack.client.get("/healthz").headers["x-request-id"]) == 32, "one is made when none is sent"
        task_id = r.json()["id"]
        stack.wait_status(task_id, "completed")

        def task_lines() -> list[dict[str, object]]:
            return [e for e in _json_lines(log_file) if e.get("task_id") == task_id]

        lines = wait_for(lambda: len(task_lines()) >= 2 and task_lines(), what="task log lines in the file")
        completed = next(e for e in lines if e["event"] == "task completed")
        for key in ("time", "level", "event", "task_id", "type", "attempt", "status", "duration_ms", "worker"):
            assert key in completed, key
        assert completed["status"] == "completed" and completed["type"] == "add" and completed["attempt"] == 1
        request = next(
            e for e in _json_lines(log_file) if e["event"] == "request" and e.get("request_id") == "req-abc-123"
        )
        assert request["method"] == "POST" and request["status_code"] == 201
        # stdout carries the same JSON lines
        assert any('"task completed"' in line for line in stack.workers[0].log_path.read_text().splitlines())
