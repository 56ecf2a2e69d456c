"""The schedules panel of the dashboard in headless Chromium, against a real API: next and last run, pause and
resume, run now."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory

pytestmark = pytest.mark.browser


def test_the_schedules_panel_pauses_resumes_and_triggers(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=0) as stack:
        page.goto(f"{stack.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#schedules")).to_be_hidden()  # no schedule yet

        body = {
            "name": "nightly",
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "task": {"type": "add", "payload": {"a": 1, "b": 2}},
        }
        assert stack.client.post("/api/v1/schedules", json=body).status_code == 201
        page.reload()
        row = page.locator('#schedule-rows tr[data-schedule="nightly"]')
        expect(row).to_contain_text("30 2 * * *")
        expect(row).to_contain_text("Europe/Berlin")
        expect(row).to_have_attribute("data-enabled", "true")

        row.locator('button[data-action="pause"]').click()
        expect(row).to_have_attribute("data-enabled", "false")
        expect(row).to_contain_text("paused")
        assert stack.client.get("/api/v1/schedules/nightly").json()["enabled"] is False
        row.locator('button[data-action="resume"]').click()
        expect(row).to_have_attribute("data-enabled", "true")

        row.locator('button[data-action="trigger"]').click()
        expect(row.locator(".badge")).to_have_text("pending")
        [task] = stack.client.get("/api/v1/tasks", params={"schedule": "nightly"}).json()["items"]
        page.locator(f'#task-rows tr[data-task-id="{task["id"]}"]').click()
        expect(page.locator("#detail")).to_contain_text("nightly")

        # Its history: the task list filtered by the schedule, a filter that can be removed.
        other = stack.submit("add")
        expect(page.locator(f'#task-rows tr[data-task-id="{other["id"]}"]')).to_be_visible()
        expect(row.locator('[data-field="counts"]')).to_have_text("1 fired, 0 skipped, 0 missed")
        row.locator('button[data-action="history"]').click()
        expect(page.locator("#filter-schedule")).to_be_visible()
        expect(page.locator("#filter-schedule-name")).to_have_text("nightly")
        expect(page.locator("#task-rows tr")).to_have_count(1)
        expect(page.locator(f'#task-rows tr[data-task-id="{task["id"]}"]')).to_be_visible()
        assert "schedule=nightly" in page.url
        page.click("#filter-schedule-clear")
        expect(page.locator("#filter-schedule")).to_be_hidden()
        expect(page.locator("#task-rows tr")).to_have_count(2)


def test_the_next_run_counts_down(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=0) as stack:
        body = {"name": "often", "cron": "* * * * *", "task": {"type": "add", "payload": {"a": 1, "b": 2}}}
        assert stack.client.post("/api/v1/schedules", json=body).status_code == 201
        page.goto(f"{stack.url}/")
        countdown = page.locator('#schedule-rows tr[data-schedule="often"] .countdown')
        expect(countdown).to_have_text(re.compile(r"^(in \d{1,2} s|due now)$"))
        schedule = stack.client.get("/api/v1/schedules/often").json()
        assert countdown.get_attribute("datetime") == schedule["next_run_at"]
