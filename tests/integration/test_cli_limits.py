"""`taskproc limits` and `submit --concurrency-key` through the real entry point, against a running API and
workers."""

from __future__ import annotations

import uuid

import pytest
import typer
from test_cli import run, run_json

from taskproc.client_cli import parse_rate

from support import Stack, wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10/1", (10, 1.0)), ("100/60", (100, 60.0)), ("100/1m", (100, 60.0)), ("5/h", (5, 3600.0)), ("3/0.5", (3, 0.5))],
)
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["10", "10/", "/1", "x/1", "10/x", "0/1", "10/0", "-1/1", "1.5/1"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_rate(text)


def test_limits_set_get_list_and_delete(stack: Stack) -> None:
    key = unique("tenant/cli")
    limit = run_json(stack, "limits", "set", key, "--max-running", "2", "--rate", "10/1m")
    assert limit["key"] == key and limit["max_running"] == 2 and limit["rate"] == {"count": 10, "per_s": 60.0}
    assert limit["origin"] == "api" and limit["running"] == 0
    human = run(stack, "limits", "set", key, "--max-running", "3")
    assert human.returncode == 0 and f"limit of {key}: max running 3" in human.stdout, human.stdout
    got = run_json(stack, "limits", "get", key)
    assert got["max_running"] == 3 and got["rate"] is None, "set replaces the whole limit"
    assert key in {item["key"] for item in run_json(stack, "limits", "list")}
    assert key in {item["key"] for item in run_json(stack, "limits")}, "no subcommand lists too"
    table = run(stack, "limits")
    assert table.returncode == 0 and key in table.stdout and "max running" in table.stdout

    deleted = run(stack, "limits", "delete", key)
    assert deleted.returncode == 0 and f"deleted the limit of {key}" in deleted.stdout
    missing = run(stack, "limits", "get", key)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert run(stack, "limits", "delete", key).returncode == 3


def test_limits_usage_errors(stack: Stack) -> None:
    neither = run(stack, "limits", "set", unique("k"))
    assert neither.returncode == 2 and "--max-running, --rate or both" in neither.stderr
    bad_rate = run(stack, "limits", "set", unique("k"), "--rate", "ten a second")
    assert bad_rate.returncode == 2 and "COUNT/PER_S" in bad_rate.stderr
    zero = run(stack, "limits", "set", unique("k"), "--max-running", "0")
    assert zero.returncode == 2
    long_key = run(stack, "limits", "get", "k" * 201)
    assert long_key.returncode == 2 and "1 to 200 characters" in long_key.stderr
    for result in (neither, bad_rate, zero, long_key):
        assert "Traceback" not in result.stderr


def test_submit_with_a_concurrency_key_and_get_says_it_is_limited(stack: Stack) -> None:
    key = unique("cli-key")
    assert run(stack, "limits", "set", key, "--max-running", "1").returncode == 0
    busy = run_json(stack, "submit", "sleep", "-p", '{"duration_ms": 60000}', "--concurrency-key", key)
    assert busy["concurrency_key"] == key
    stack.wait_status(busy["id"], "running")
    held = run_json(stack, "submit", "add", "-p", '{"a": 1, "b": 2}', "--concurrency-key", key)
    waiting = wait_for(
        lambda: (w := stack.get(held["id"])["waiting"]) is not None and w["reason"] == "concurrency_limited" and w,
        what="the second task to be held back by its key",
    )
    assert waiting["key"] == key
    out = run(stack, "get", held["id"]).stdout
    assert key in out and "concurrency_limited" in out and "(1 running of limit 1)" in out, out
    assert run_json(stack, "limits", "get", key)["running"] == 1
    assert run(stack, "cancel", busy["id"]).returncode == 0
    stack.wait_status(held["id"], "completed")
