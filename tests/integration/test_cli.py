"""The client commands through the real `taskproc` entry point, against a running API and workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskproc.dev.embedded import free_port

from conftest import StackFactory
from support import TASKPROC, Stack, wait_for


def run(
    stack: Stack | None, *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_API_")}
    if stack is not None:
        full_env["TASKPROC_API_URL"] = stack.url
    full_env.update(env or {})
    return subprocess.run(
        [TASKPROC, *args], env=full_env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_json(stack: Stack, *args: str, **kwargs: Any) -> Any:
    result = run(stack, *args, "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_wait_completed_exits_0(stack: Stack) -> None:
    result = run(stack, "submit", "add", "--payload", '{"a": 2, "b": 40}', "--wait")
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout and '"sum": 42' in result.stdout

    task = run_json(stack, "submit", "add", "-p", '{"a": 1, "b": 2}', "--priority", "high", "--wait")
    assert task["status"] == "completed" and task["result"] == {"sum": 3} and task["priority"] == "high"


def test_submit_wait_failed_exits_1(stack: Stack) -> None:
    payload = '{"duration_ms": 0, "fail_rate": 1}'
    result = run(stack, "submit", "sleep", "-p", payload, "--max-retries", "1", "--wait", "--json")
    assert result.returncode == 1, result.stderr
    task = json.loads(result.stdout)
    assert task["status"] == "failed" and task["attempts"] == 2
    result = run(stack, "submit", "sleep", "-p", payload, "--max-retries", "0", "--wait")
    assert result.returncode == 1
    assert "failed" in result.stdout and "simulated failure" in result.stdout


def test_submit_wait_timeout_exits_5(stack: Stack) -> None:
    result = run(stack, "submit", "sleep", "-p", '{"duration_ms": 20000}', "--wait", "--wait-timeout", "1")
    assert result.returncode == 5, result.stderr
    assert "still" in result.stderr
    task_id = result.stderr.split("submitted sleep ", 1)[1].split()[0]
    assert run(stack, "cancel", task_id).returncode == 0


def test_submit_options_and_payload_sources(stack: Stack, tmp_path: Path) -> None:
    payload_file = tmp_path / "payload.json"
    payload_file.write_text('{"text": "to be or not to be"}')
    task = run_json(
        stack, "submit", "text_stats", "-p", f"@{payload_file}", "--max-retries", "2", "--timeout", "30",
        "--idempotency-key", f"cli-{uuid.uuid4()}",
    )  # fmt: skip
    assert task["payload"] == {"text": "to be or not to be"}
    assert task["max_retries"] == 2 and task["timeout_s"] == 30 and task["idempotency_key"].startswith("cli-")
    again = run_json(
        stack, "submit", "text_stats", "-p", f"@{payload_file}", "--idempotency-key", task["idempotency_key"]
    )
    assert again["id"] == task["id"], "same idempotency key, same task"

    from_stdin = run_json(stack, "submit", "add", "-p", "-", "--delay", "60", stdin='{"a": 5, "b": 6}')
    assert from_stdin["payload"] == {"a": 5, "b": 6} and from_stdin["status"] == "pending"
    assert run(stack, "cancel", from_stdin["id"]).returncode == 0

    human = run(stack, "submit", "add", "-p", '{"a": 1, "b": 1}')
    assert human.returncode == 0 and "submitted" in human.stdout


def test_get_shows_state_payload_result_and_timeline(stack: Stack) -> None:
    task = stack.submit("add", {"a": 3, "b": 4})
    stack.wait_status(task["id"], "completed")
    result = run(stack, "get", task["id"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (task["id"], "completed", '"a": 3', '"sum": 7', "events", "pending", "running", "accepted"):
        assert text in out, text
    data = run_json(stack, "get", task["id"])
    assert data["result"] == {"sum": 7} and "events" not in data
    data = run_json(stack, "get", task["id"], "--events")
    assert [e["status"] for e in data["events"]] == ["pending", "running", "completed"]


def test_list_filters_and_pages(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        ids = [stack.submit("add", priority="high")["id"] for _ in range(5)]
        ids += [stack.submit("sleep", {"duration_ms": 1})["id"] for _ in range(3)]
        page = run_json(stack, "list", "--limit", "3")
        assert [t["id"] for t in page["items"]] == ids[::-1][:3], "newest first"
        assert page["next_cursor"]
        page2 = run_json(stack, "list", "--limit", "3", "--cursor", page["next_cursor"])
        assert [t["id"] for t in page2["items"]] == ids[::-1][3:6]
        everything = run_json(stack, "list", "--limit", "2", "--all")
        assert [t["id"] for t in everything["items"]] == ids[::-1] and everything["next_cursor"] is None
        assert {t["id"] for t in run_json(stack, "list", "--type", "sleep")["items"]} == set(ids[5:])
        assert {t["id"] for t in run_json(stack, "list", "--priority", "high")["items"]} == set(ids[:5])
        run(stack, "cancel", ids[0])
        canceled = run_json(stack, "list", "--status", "canceled")["items"]
        assert [t["id"] for t in canceled] == [ids[0]]

        table = run(stack, "list", "--limit", "3")
        assert table.returncode == 0
        assert ids[-1] in table.stdout and "pending" in table.stdout
        assert "--cursor" in table.stderr, "a hint to the next page"
        assert run(stack, "list", "--status", "bogus").returncode == 2


def test_cancel_retry_and_delete(stack: Stack) -> None:
    task = stack.submit("sleep", {"duration_ms": 30000})
    stack.wait_status(task["id"], "running")
    result = run(stack, "cancel", task["id"])
    assert result.returncode == 0, result.stderr
    assert "cancel requested" in result.stdout
    stack.wait_status(task["id"], "canceled", timeout=10)

    retried = run_json(stack, "retry", task["id"])
    assert retried["status"] == "pending" and retried["attempts"] == 0
    stack.wait_status(task["id"], "running")
    assert run(stack, "cancel", task["id"]).returncode == 0
    stack.wait_status(task["id"], "canceled", timeout=10)

    conflict = run(stack, "cancel", task["id"])
    assert conflict.returncode == 3
    assert "409" in conflict.stderr and "already canceled" in conflict.stderr

    deleted = run(stack, "delete", task["id"])
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = run(stack, "get", task["id"])
    assert missing.returncode == 3 and "404" in missing.stderr


def test_stats(stack: Stack) -> None:
    data = run_json(stack, "stats")
    assert set(data) == {"tasks", "queue", "retried_total", "workers", "waiting_no_worker", "waiting_no_queue_worker"}
    assert data["workers"] == 2
    human = run(stack, "stats")
    assert human.returncode == 0
    assert "completed" in human.stdout and "workers 2" in human.stdout


def test_types(stack: Stack) -> None:
    names = [t["name"] for t in run_json(stack, "types")]
    assert {"add", "sleep", "sum_pairs", "text_stats"} <= set(names)
    human = run(stack, "types")
    assert "duration_ms" in human.stdout


def start_watch(stack: Stack, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_API_")}
    env["TASKPROC_API_URL"] = stack.url
    return subprocess.Popen(
        [TASKPROC, "watch", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_watch_json_streams_events_and_resumes(stack: Stack) -> None:
    since = stack.sql("SELECT coalesce(max(id), 0) FROM task_event")[0][0]
    proc = start_watch(stack, "--json", "--since", str(since))
    try:
        task = stack.submit("add", {"a": 1, "b": 1})
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"watch ended early: {proc.stderr.read() if proc.stderr else ''}"
            event = json.loads(line)
            lines.append(event)
            if event["task_id"] == task["id"] and event["status"] == "completed":
                break
        mine = [e for e in lines if e["task_id"] == task["id"]]
        assert [e["status"] for e in mine] == ["pending", "running", "completed"]
        assert all(e["id"] > since for e in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_watch_table(stack: Stack) -> None:
    task = stack.submit("add", {"a": 1, "b": 1})
    stack.wait_status(task["id"], "completed")
    proc = start_watch(stack, "--interval", "0.5", "--limit", "5")
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    # Piped, watch prints every refresh in full: read them as they come.
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()

    def refreshed_with_the_task() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        rows = [line for line in list(lines) if task["id"] in line]
        return any("completed" in row for row in rows)

    wait_for(refreshed_with_the_task, timeout=30, what="a refresh showing the completed task")
    # A second refresh, while the first one is on screen: not only the first frame is printed.
    frames = sum("newest 5 tasks" in line for line in list(lines))
    wait_for(lambda: sum("newest 5 tasks" in line for line in list(lines)) > frames, timeout=30, what="a refresh")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    reader.join(timeout=15)
    assert proc.returncode == 0, err
    out = "".join(lines)
    assert task["id"] in out and "completed" in out and "workers" in out and "newest 5 tasks" in out


def test_api_errors_are_clean(stack: Stack) -> None:
    invalid = run(stack, "submit", "add", "-p", '{"a": 1}')
    assert invalid.returncode == 3
    assert "422" in invalid.stderr and "payload.b: Field required" in invalid.stderr
    assert "Traceback" not in invalid.stderr

    unknown = run(stack, "submit", "nope")
    assert unknown.returncode == 3 and "unknown task type" in unknown.stderr

    bad_json = run(stack, "submit", "add", "-p", "{not json")
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    not_object = run(stack, "submit", "add", "-p", "[1, 2]")
    assert not_object.returncode == 2 and "JSON object" in not_object.stderr
    bad_id = run(stack, "get", "not-a-uuid")
    assert bad_id.returncode == 2 and "not a task id" in bad_id.stderr


def test_unreachable_api_exits_4() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("stats",), ("list",), ("submit", "add", "-p", "{}", "--wait"), ("get", str(uuid.uuid4()))):
        result = run(None, *args, "--api-url", url, timeout=30)
        assert result.returncode == 4, (args, result.stderr)
        assert "cannot reach the API" in result.stderr and "Traceback" not in result.stderr
    result = run(None, "stats", env={"TASKPROC_API_URL": url})
    assert result.returncode == 4 and url in result.stderr


def test_api_key_option_and_env(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0, env={"TASKPROC_API_KEYS": "cli-key"}) as stack:
        stack.start_worker()
        missing = run(stack, "stats")
        assert missing.returncode == 3
        assert "401" in missing.stderr and "TASKPROC_API_KEY" in missing.stderr
        wrong = run(stack, "stats", "--api-key", "wrong")
        assert wrong.returncode == 3 and "invalid API key" in wrong.stderr
        assert run(stack, "stats", "--api-key", "cli-key").returncode == 0
        env = {"TASKPROC_API_KEY": "cli-key"}
        wait_for(lambda: run_json(stack, "stats", env=env)["workers"] == 1, what="the worker")
        result = run(stack, "submit", "add", "-p", '{"a": 1, "b": 1}', "--wait", "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "completed"
        assert "cli-key" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["submit", "get", "list", "cancel", "retry", "delete", "stats", "types", "watch"])
def test_help(command: str) -> None:
    result = run(None, command, "--help")
    assert result.returncode == 0
    assert "--api-url" in result.stdout and "--json" in result.stdout


def test_queues_list_pause_resume_and_queue_options(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        submitted = run_json(stack, "submit", "add", "--payload", '{"a": 1, "b": 2}', "--queue", "cli-q")
        assert submitted["queue"] == "cli-q"
        stack.submit("add")
        assert [t["id"] for t in run_json(stack, "list", "--queue", "cli-q")["items"]] == [submitted["id"]]
        paused = run_json(stack, "queues", "pause", "cli-q")
        assert paused["paused"] is True and paused["name"] == "cli-q"
        listed = {q["name"]: q for q in run_json(stack, "queues")}
        assert listed["cli-q"]["paused"] is True and listed["cli-q"]["ready"] == 1
        assert listed["default"]["paused"] is False
        table = run(stack, "queues")
        assert table.returncode == 0 and "cli-q" in table.stdout and "paused" in table.stdout
        resumed = run(stack, "queues", "resume", "cli-q")
        assert resumed.returncode == 0 and "resumed cli-q" in resumed.stdout
        assert run_json(stack, "queues")[0]["paused"] is False
        bad = run(stack, "queues", "pause", "Bad Name")
        assert bad.returncode == 2 and "not a queue name" in bad.stderr and "Traceback" not in bad.stderr


def test_get_says_why_a_task_waits(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack:
        delayed = stack.submit("add", delay_s=600, queue="cli-wait")
        out = run(stack, "get", delayed["id"]).stdout
        assert "cli-wait" in out
        assert "delayed: waiting out its delay (until " in out and ", in 9 m " in out, out
        assert run_json(stack, "get", delayed["id"])["waiting"]["reason"] == "delayed"
        assert run(stack, "queues", "pause", "cli-wait").returncode == 0
        out = run(stack, "get", delayed["id"]).stdout
        assert "queue_paused: queue 'cli-wait' is paused" in out, out
        done = stack.submit("add")
        stack.wait_status(done["id"], "completed")
        assert "waiting" not in run(stack, "get", done["id"]).stdout
