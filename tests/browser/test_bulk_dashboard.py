"""Bulk actions from the dashboard's task list, in headless Chromium against a real API and worker: "retry all
failed of this type" from the current filters shows the dry run's count, asks to confirm, then follows the
operation to its end."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory
from support import wait_for

pytestmark = pytest.mark.browser


def test_retry_all_failed_of_a_type_with_the_count_first(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=1) as stack:
        failing = [stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0) for _ in range(3)]
        other = stack.submit("add", {"a": 1, "b": 1})
        for t in failing:
            stack.wait_status(t["id"], "failed")
        stack.wait_status(other["id"], "completed")

        page.goto(f"{stack.url}/#status=failed&type=sleep")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#task-rows tr")).to_have_count(3)
        page.click("#bulk-open")
        expect(page.locator("#bulk-dialog")).to_be_visible()
        expect(page.locator("#bulk-filter")).to_have_text("status = failed, type = sleep")
        expect(page.locator("#bulk-action")).to_have_value("retry")
        expect(page.locator("#bulk-count")).to_have_attribute("data-total", "3")
        confirm = page.locator("#bulk-confirm")
        expect(confirm).to_have_text("Retry 3 tasks")
        assert all(stack.get(t["id"])["attempts"] == 1 for t in failing), "nothing changed before the confirmation"

        page.select_option("#bulk-action", "set_priority")
        expect(page.locator("#bulk-priority-field")).to_be_visible()
        expect(confirm).to_have_text("Set priority of 3 tasks")
        page.select_option("#bulk-action", "retry")
        expect(confirm).to_have_text("Retry 3 tasks")
        confirm.click()

        progress = page.locator("#bulk-progress")
        expect(progress).to_have_attribute("data-status", "completed", timeout=20_000)
        expect(progress).to_have_attribute("data-done", "3")
        expect(progress).to_contain_text("3 done, 0 skipped of 3")
        for t in failing:  # each ran again (and failed again): a second attempt in its history
            wait_for(lambda t=t: len(stack.client.get(f"/api/v1/tasks/{t['id']}/events").json()) > 3)
        assert stack.get(other["id"])["status"] == "completed"
        [op] = stack.client.get("/api/v1/bulk").json()
        assert op["action"] == "retry" and op["filter"] == {"status": "failed", "type": "sleep"} | {
            k: None for k in ("priority", "queue", "schedule", "created_before", "created_after")
        }
