"""The dashboard shows a quarantined task (a poison task that killed its workers) unlike an ordinary failure, in
the list and the detail, and a result that expired after its TTL as such (issue 15); real API, worker processes
and Chromium."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory
from support import ROOT, SupervisedWorkers, wait_for

pytestmark = pytest.mark.browser

ENV = {
    "TASKPROC_TASK_MODULES": "poison_tasks",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
}


def test_a_quarantined_task_and_an_expired_result_are_shown_as_such(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=0, env=ENV) as stack:
        pool = SupervisedWorkers(stack)
        pool.start()
        pool.start()
        stack.wait_ready(2)
        failed = stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0)
        expired = stack.submit("short_lived_echo", {"value": "secret"})
        poison = stack.submit("poison", {}, max_retries=10)
        assert pool.until_ended(poison["id"])["quarantined"] is True
        stack.wait_status(failed["id"], "failed")
        wait_for(lambda: stack.get(expired["id"])["result_expired"], timeout=30, what="the result's TTL to pass")

        page.goto(f"{stack.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        row = page.locator(f'#task-rows tr[data-task-id="{poison["id"]}"]')
        expect(row.locator(".badge[data-status]")).to_have_attribute("data-status", "failed")
        expect(row.locator(".badge.quarantined")).to_have_text("quarantined")
        expect(row.locator(".badge.quarantined")).to_have_attribute("title", "worker died during 3 attempts")
        ordinary = page.locator(f'#task-rows tr[data-task-id="{failed["id"]}"]')
        expect(ordinary.locator(".badge[data-status]")).to_have_attribute("data-status", "failed")
        expect(ordinary.locator(".badge.quarantined")).to_have_count(0)

        row.click()
        detail = page.locator("#detail")
        expect(detail.locator("h2 .badge.quarantined")).to_be_visible()
        expect(page.locator("#detail-quarantine")).to_contain_text("worker died during 3 attempts")
        expect(page.locator("#detail-error")).to_have_count(0)
        expect(detail.locator(".facts")).to_contain_text("3 of 11 (3 lost to a dying worker)")

        page.locator(f'#task-rows tr[data-task-id="{expired["id"]}"]').click()
        expect(page.locator("#detail-result-expired")).to_contain_text("Result expired")
        expect(page.locator("#detail-result-expired")).to_contain_text("kept 1 s after the task finished")
        expect(page.locator("#detail-result")).to_have_count(0)
