"""The queues panel and "why isn't it running?" in the dashboard, in headless Chromium against a real API and
workers: pause and resume a queue, filter the task list by queue, a waiting task's reason, countdown and
position."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory
from support import Stack

pytestmark = pytest.mark.browser


def open_dashboard(page: Page, url: str, fragment: str = "") -> None:
    page.goto(f"{url}/{fragment}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def queue_state(stack: Stack, name: str) -> dict[str, object]:
    [queue] = [q for q in stack.client.get("/api/v1/queues").json() if q["name"] == name]
    return dict(queue)


def test_pause_and_resume_a_queue_and_see_why_its_task_waits(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=1) as stack:
        running = stack.submit("sleep", {"duration_ms": 120_000}, queue="emails")
        stack.wait_status(running["id"], "running")
        open_dashboard(page, stack.url)
        row = page.locator('#queue-rows tr[data-queue="emails"]')
        expect(row).to_have_attribute("data-paused", "false")
        expect(row.locator('[data-field="running"]')).to_have_text("1")
        expect(row.locator('[data-field="workers"]')).to_have_text("1")
        expect(page.locator('#queue-rows tr[data-queue="default"]')).to_be_visible()

        row.locator('button[data-action="pause"]').click()
        expect(row).to_have_attribute("data-paused", "true")
        expect(row.locator(".state")).to_have_text("paused")
        expect(page.locator("#queues-summary")).to_have_text("1 paused")
        assert queue_state(stack, "emails")["paused"] is True

        # Submitted while paused: it waits, and says why, in the list and in its detail.
        waiting = stack.submit("add", queue="emails")
        other = stack.submit("add")
        stack.wait_status(other["id"], "completed")  # the other queue is not held up
        task_row = page.locator(f'#task-rows tr[data-task-id="{waiting["id"]}"]')
        expect(task_row.locator("td.queue")).to_have_text("emails")
        expect(task_row.locator(".reason")).to_have_attribute("data-reason", "queue_paused")
        expect(row.locator('[data-field="ready"]')).to_have_text("1")  # a paused queue keeps its ready tasks
        expect(row.locator('[data-field="oldest"]')).not_to_have_text("\u2013")  # due, and not started
        task_row.click()
        line = page.locator("#detail-waiting")
        expect(line).to_have_attribute("data-reason", "queue_paused")
        expect(line.locator(".reason")).to_have_text("queue paused")
        expect(line).to_contain_text("'emails' is paused")
        expect(page.locator("#detail-queue")).to_have_text("emails")

        page.locator('#task-rows tr[data-task-id="' + other["id"] + '"]').wait_for()
        page.select_option("#filter-queue", "emails")
        expect(page.locator("#task-rows tr")).to_have_count(2)
        assert "queue=emails" in page.url
        assert {tr.get_attribute("data-task-id") for tr in page.locator("#task-rows tr").all()} == {
            running["id"],
            waiting["id"],
        }

        row.locator('button[data-action="resume"]').click()
        expect(row).to_have_attribute("data-paused", "false")
        expect(page.locator("#queues-summary")).to_have_text("")
        assert queue_state(stack, "emails")["paused"] is False
        stack.wait_status(waiting["id"], "completed")
        expect(page.locator("#detail h2 .badge")).to_have_attribute("data-status", "completed")
        expect(line).to_have_count(0)


def test_delayed_counts_down_ready_shows_its_place_and_no_worker_is_flagged(
    stack_factory: StackFactory, page: Page
) -> None:
    env = {"TASKPROC_WORKER_CONCURRENCY": "1", "TASKPROC_WORKER_QUEUES": "default"}
    with stack_factory(workers=1, env=env) as stack:
        delayed = stack.submit("add", delay_s=600)
        open_dashboard(page, stack.url, f"#task={delayed['id']}")
        line = page.locator("#detail-waiting")
        expect(line).to_have_attribute("data-reason", "delayed")
        expect(line.locator(".reason")).to_have_text("delayed")
        expect(line).to_contain_text("waiting out its delay")
        countdown = page.locator("#detail-countdown")
        expect(countdown).to_have_text(re.compile(r"^in (9 m \d\d|10 m 00) s$"))
        first = countdown.inner_text()
        expect(countdown).not_to_have_text(first)  # it ticks
        assert countdown.get_attribute("datetime") == stack.get(delayed["id"])["waiting"]["until"]
        expect(page.locator(f'#task-rows tr[data-task-id="{delayed["id"]}"] .reason')).to_have_text("delayed")

        busy = stack.submit("sleep", {"duration_ms": 120_000})
        stack.wait_status(busy["id"], "running")
        behind = [stack.submit("add") for _ in range(2)]
        open_dashboard(page, stack.url, f"#task={behind[1]['id']}")
        expect(line).to_have_attribute("data-reason", "ready")
        expect(page.locator("#detail-position")).to_have_attribute("data-position", "1")
        expect(page.locator("#detail-position")).to_have_text("1 ahead of it in its queue")
        expect(page.locator("#detail-countdown")).to_have_count(0)
        # A ready task is the normal case: the list marks only the tasks held back by something.
        expect(page.locator(f'#task-rows tr[data-task-id="{behind[1]["id"]}"] .reason')).to_have_count(0)

        # A queue no live worker takes from: its task says so, and so do the queue and the workers panel.
        orphan = stack.submit("add", queue="nobody")
        open_dashboard(page, stack.url, f"#task={orphan['id']}")
        expect(line).to_have_attribute("data-reason", "no_worker")
        expect(line).to_contain_text("no live worker takes from queue 'nobody'")
        expect(page.locator('#queue-rows tr[data-queue="nobody"] [data-field="workers"]')).to_have_text("0")
        expect(page.locator("#workers-hint")).to_have_text("1 waiting with no worker for their type or queue")
