"""The limits panel of the dashboard in headless Chromium, against a real API and worker: set a limit from the
form, see a key's running tasks against it, edit and delete it, and a held-back task's reason in its detail."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory
from support import Stack

pytestmark = pytest.mark.browser


def limit_of(stack: Stack, key: str) -> dict[str, object] | None:
    r = stack.client.get(f"/api/v1/limits/{quote(key, safe='')}")
    return None if r.status_code == 404 else dict(r.json())


def test_set_edit_and_delete_a_limit_and_see_a_task_held_back(stack_factory: StackFactory, page: Page) -> None:
    key = "tenant/7"
    with stack_factory(workers=1) as stack:
        page.goto(f"{stack.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#limits")).to_be_visible()
        expect(page.locator("#limits-empty")).to_be_visible()

        expect(page.locator("#limit-form")).to_be_hidden()
        page.click("#limit-new")
        page.click("#limit-submit")  # nothing filled in: refused before any request
        expect(page.locator("#limit-errors")).to_contain_text("key: 1 to 200 characters")
        page.fill("#limit-key", key)
        page.fill("#limit-rate-count", "5")
        page.click("#limit-submit")
        expect(page.locator("#limit-errors")).to_contain_text("give both the count and the period")
        assert limit_of(stack, key) is None

        page.fill("#limit-max-running", "1")
        page.fill("#limit-rate-per-s", "60")
        page.click("#limit-submit")
        row = page.locator(f'#limit-rows tr[data-key="{key}"]')
        expect(row.locator('[data-field="running"]')).to_have_text("0 of 1")
        expect(row.locator('[data-field="rate"]')).to_have_text("5 per 60 s")
        expect(row.locator('[data-field="origin"]')).to_have_text("API")
        expect(page.locator("#limit-errors")).to_be_hidden()
        expect(page.locator("#limit-form")).to_be_hidden()  # closed once set
        expect(page.locator("#limits-empty")).to_be_hidden()
        assert limit_of(stack, key) is not None
        stored = limit_of(stack, key) or {}
        assert stored["max_running"] == 1 and stored["rate"] == {"count": 5, "per_s": 60.0}

        busy = stack.submit("sleep", {"duration_ms": 60_000}, concurrency_key=key)
        stack.wait_status(busy["id"], "running")
        expect(row.locator('[data-field="running"]')).to_have_text("1 of 1")
        expect(row.locator(".meter")).to_have_class(re.compile(r"\bfull\b"))
        # Submitted from the form, with its key: its detail opens and says why it waits.
        page.click("#new-task")
        page.select_option("#submit-type", "add")
        page.fill("#payload-a", "1")
        page.fill("#payload-b", "2")
        page.fill("#submit-concurrency-key", key)
        page.click("#submit-button")
        expect(page.locator("#submit-dialog")).to_be_hidden()
        # The detail opens once the submit's answer is in: wait for it to name a task other than the busy one.
        expect(page.locator("#detail")).to_have_attribute("data-task-id", re.compile(rf"^(?!{busy['id']}$).+"))
        held_id = page.locator("#detail").get_attribute("data-task-id")
        assert held_id and stack.get(held_id)["concurrency_key"] == key
        line = page.locator("#detail-waiting")
        expect(line).to_have_attribute("data-reason", "concurrency_limited")
        expect(line.locator(".reason")).to_have_text("concurrency limited")
        expect(page.locator("#detail-waiting-limit")).to_have_text("1 running of limit 1")
        expect(line.locator(".waiting-key code")).to_have_text(key)
        expect(page.locator("#detail-key")).to_have_text(key)

        row.locator('button[data-action="edit"]').click()
        expect(page.locator("#limit-key")).to_have_value(key)
        expect(page.locator("#limit-max-running")).to_have_value("1")
        page.fill("#limit-max-running", "2")
        page.click("#limit-submit")
        # The key has room now: the held task runs and completes, the busy one still runs.
        expect(page.locator("#detail h2 .badge")).to_have_attribute("data-status", "completed", timeout=15_000)
        expect(page.locator("#detail-waiting")).to_have_count(0)
        expect(row.locator('[data-field="running"]')).to_have_text("1 of 2")
        assert (limit_of(stack, key) or {})["max_running"] == 2

        delete = row.locator('button[data-action="delete"]')
        delete.click()
        expect(delete).to_have_text("Confirm delete")
        delete.click()
        expect(row).to_have_count(0)
        assert limit_of(stack, key) is None


def test_a_rate_limited_task_counts_down_to_its_token(stack_factory: StackFactory, page: Page) -> None:
    key = "rated"
    with stack_factory(workers=1) as stack:
        assert stack.client.put(f"/api/v1/limits/{key}", json={"rate": {"count": 1, "per_s": 600}}).status_code == 200
        first = stack.submit("add", concurrency_key=key)
        stack.wait_status(first["id"], "completed")
        second = stack.submit("add", concurrency_key=key)
        page.goto(f"{stack.url}/#task={second['id']}")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#detail-waiting")).to_have_attribute("data-reason", "rate_limited")
        expect(page.locator("#detail-waiting .reason")).to_have_text("rate limited")
        expect(page.locator("#detail-countdown")).to_have_text(re.compile(r"^in (9|10) m \d\d s$"))
        row = page.locator(f'#limit-rows tr[data-key="{key}"]')
        expect(row.locator('[data-field="rate"]')).to_have_text("1 per 600 s")
        expect(row.locator('[data-field="tokens"]')).to_have_text(re.compile(r"^0\.\d$"))
