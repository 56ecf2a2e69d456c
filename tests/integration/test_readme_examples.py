"""The documentation's examples, run as printed (with the port of a test stack): the README's first task (curl
and the Python SDK) and the API page's examples (docs/api.md, "By example")."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from support import ROOT, Stack


def _first_block(page: str, heading: str, lang: str = "bash") -> str:
    text = (ROOT / page).read_text()
    section = text.split(heading, 1)[1]
    block = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert block is not None, f"{page} has no {lang} block under {heading!r}"
    return block.group(1)


def _run(script: str, stack: Stack) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", stack.url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_readme_first_task_works_as_printed(stack: Stack) -> None:
    out = _run(_first_block("README.md", "## A first task"), stack)
    *_, task_line, events_line = out.strip().splitlines()
    task = json.loads(task_line)
    assert task["status"] == "completed" and task["result"] == {"sum": 5}, task
    assert [e["status"] for e in json.loads(events_line)] == ["pending", "running", "completed"], events_line


def test_readme_python_example_works_as_printed(stack: Stack) -> None:
    code = _first_block("README.md", "## A first task", "python").replace("http://127.0.0.1:8000", stack.url)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "completed {'sum': 5}"


def test_api_page_curl_examples_work_as_printed(stack: Stack) -> None:
    out = _run(_first_block("docs/api.md", "## By example"), stack)
    assert "HTTP/1.1 201 Created" in out and "location: /api/v1/tasks/" in out.lower()
    # curl -w prints the code right after the previous command's body, which has no trailing newline.
    assert re.search(r"(^|[}\]])200$", out, re.M), "a repeated idempotency key answers 200"
    assert re.search(r"(^|[}\]])204$", out, re.M), "delete answers 204"
    assert '"status":"canceled"' in out
    assert '"result":{"sum":3}' in out, "the retried task completed"
    assert "taskproc_tasks_submitted_total" in out
    assert '"checks":{"postgres":"ok","redis":"ok"}' in out
