"""A populated dashboard, rendered in Chromium: the README's screenshot.

Always rendered (into the test's tmp dir) and checked; written to docs/dashboard.png only with
TASKPROC_UPDATE_SCREENSHOT=1, so ordinary runs leave the committed image alone:

    TASKPROC_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/browser/test_screenshot.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory
from support import ROOT, Stack

pytestmark = pytest.mark.browser

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness"


def _finished(stack: Stack) -> str:
    """Tasks that complete or fail at once; returns the id of the one the detail panel shows."""
    quick = [
        stack.submit("add", {"a": i, "b": i * 3}, priority=("high", "normal", "low")[i % 3])["id"] for i in range(9)
    ]
    quick += [stack.submit("sum_pairs", {"pairs": [[i, 1], [2, i], [3.5, 4]]})["id"] for i in range(4)]
    shown = stack.submit("text_stats", {"text": TEXT}, priority="high")["id"]
    quick.append(shown)
    quick += [stack.submit("sleep", {"duration_ms": 300 + 200 * i})["id"] for i in range(3)]
    quick += [stack.submit("sleep", {"duration_ms": 50, "fail_rate": 1}, max_retries=0)["id"] for _ in range(3)]
    for task_id in quick:
        stack.wait_status(task_id, {"completed", "failed"})
    return shown


def populate(stack: Stack) -> str:
    """A few dozen tasks in every state; returns the id of the task to show in the detail panel."""
    shown = _finished(stack)
    retrying = [stack.submit("sleep", {"duration_ms": 20, "fail_rate": 1}, max_retries=5)["id"] for _ in range(2)]
    for task_id in retrying:
        stack.wait_status(task_id, "retrying")
    for _ in range(3):
        task = stack.submit("add", {"a": 1, "b": 1}, delay_s=600)
        assert stack.client.post(f"/api/v1/tasks/{task['id']}/cancel").status_code == 200
    # Two workers with two slots each: four run (one tenant's, at its limit), the rest wait by priority.
    limit = {"max_running": 4, "rate": {"count": 100, "per_s": 60}}
    assert stack.client.put("/api/v1/limits/tenant-42", json=limit).status_code == 200
    running = [stack.submit("sleep", {"duration_ms": 120_000}, concurrency_key="tenant-42")["id"] for _ in range(4)]
    for task_id in running:
        stack.wait_status(task_id, "running")
    for priority, n in (("high", 2), ("normal", 3), ("low", 1)):
        for _ in range(n):
            stack.submit("sleep", {"duration_ms": 60_000}, priority=priority)
    return shown


def test_dashboard_screenshot(stack_factory: StackFactory, page: Page, tmp_path: Path) -> None:
    env = {"TASKPROC_WORKER_CONCURRENCY": "2", "TASKPROC_RETRY_BASE_S": "120", "TASKPROC_SHUTDOWN_GRACE_S": "1"}
    with stack_factory(workers=2, env=env) as stack:
        shown = populate(stack)
        page.set_viewport_size({"width": 1440, "height": 1200})
        page.goto(f"{stack.url}/#task={shown}")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator('.card[data-status="running"] .count')).to_have_text("4")
        expect(page.locator('.card[data-status="pending"] .count')).to_have_text("6")
        expect(page.locator('.card[data-status="retrying"] .count')).to_have_text("2")
        # Waiting at normal priority: 3 queued behind the running ones and the 2 retrying in their backoff.
        expect(page.locator('#queue-bars .bar[data-priority="normal"] .count')).to_have_text("5")
        expect(page.locator("#workers-count")).to_have_text("2")
        expect(page.locator("#detail-result")).to_contain_text("top_words")
        expect(page.locator("#task-rows tr")).to_have_count(20)
        expect(page.locator('#limit-rows tr[data-key="tenant-42"] [data-field="running"]')).to_have_text("4 of 4")
        page.mouse.move(0, 0)
        # The row flashes and bar transitions settle: no finite CSS animation or transition still running (the
        # live dot and the running rows pulse for ever).
        page.wait_for_function(
            "() => document.getAnimations().every((a) => a.playState !== 'running'"
            " || a.effect.getTiming().iterations === Infinity)",
            timeout=15_000,
        )
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 50_000
        if os.environ.get("TASKPROC_UPDATE_SCREENSHOT") == "1":
            target = ROOT / "docs" / "dashboard.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, target)
