"""The dashboard at / in headless Chromium, against the real API and workers: live updates, actions, filters,
paging and the API key prompt."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from conftest import StackFactory
from support import Stack, wait_for

pytestmark = pytest.mark.browser


def open_dashboard(page: Page, url: str) -> None:
    page.goto(f"{url}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def row(page: Page, task_id: str) -> Locator:
    return page.locator(f'#task-rows tr[data-task-id="{task_id}"]')


def shown_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("#task-rows tr").evaluate_all("rows => rows.map(r => r.dataset.taskId)")
    return ids


def test_page_is_served_with_its_assets(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/static/js/app.js", "/static/style.css", "/static/favicon.svg", "/favicon.ico"):
        asset = httpx.get(f"{stack.url}{path}", timeout=10)
        assert asset.status_code == 200, path
        etag = asset.headers["etag"]
        assert httpx.get(f"{stack.url}{path}", headers={"If-None-Match": etag}, timeout=10).status_code == 304
    assert httpx.get(f"{stack.url}/static/js/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{stack.url}/static/../../config.py", timeout=10).status_code == 404
    assert httpx.get(f"{stack.url}/static/%2e%2e/%2e%2e/config.py", timeout=10).status_code == 404
    assert "/" not in httpx.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"], "not in the API schema"


def test_submit_from_the_form_and_see_it_complete_live(stack: Stack, page: Page) -> None:
    open_dashboard(page, stack.url)
    page.evaluate("window.__sameDocument = true")
    page.click("#new-task")
    page.select_option("#submit-type", "sleep")
    expect(page.locator("#submit-type-description")).to_contain_text("Simulated work")
    page.fill("#payload-duration_ms", "2000")
    page.click("#submit-button")
    expect(page.locator("#submit-dialog")).to_be_hidden()

    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    task_id = detail.get_attribute("data-task-id")
    assert task_id
    r = row(page, task_id)
    expect(r).to_be_visible()
    expect(r).to_have_attribute("data-status", "running", timeout=10_000)
    expect(r).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(r.locator(".badge")).to_have_text("completed")
    expect(page.locator("#detail-result")).to_contain_text('"slept_ms": 2000')
    expect(page.locator("#detail-timeline li")).to_have_count(3)
    expect(page.locator("#detail h2 .badge")).to_have_attribute("data-status", "completed")
    assert page.evaluate("window.__sameDocument") is True, "no reload happened"
    task = stack.get(task_id)
    assert task["status"] == "completed" and task["payload"] == {"duration_ms": 2000, "fail_rate": 0.0}


def test_cancel_a_long_task_from_the_table(stack: Stack, page: Page) -> None:
    open_dashboard(page, stack.url)
    task = stack.submit("sleep", {"duration_ms": 60_000})
    r = row(page, task["id"])
    expect(r).to_have_attribute("data-status", "running", timeout=10_000)  # a new row, without reload
    r.locator('button[data-action="cancel"]').click()
    expect(r).to_have_attribute("data-status", "canceled", timeout=10_000)
    expect(r.locator('button[data-action="retry"]')).to_be_visible()
    expect(r.locator('button[data-action="cancel"]')).to_have_count(0)
    assert stack.get(task["id"])["status"] == "canceled"


def test_detail_shows_the_error_then_retry_and_delete(stack: Stack, page: Page) -> None:
    task = stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0)
    stack.wait_status(task["id"], "failed")
    page.goto(f"{stack.url}/#task={task['id']}")  # a link to a task opens its detail
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#detail-error")).to_contain_text("simulated failure")
    expect(page.locator("#detail-payload")).to_contain_text('"fail_rate": 1')
    timeline = page.locator("#detail-timeline li")
    expect(timeline).to_have_count(3)
    expect(timeline.last).to_have_attribute("data-status", "failed")

    page.locator('#detail .detail-actions button[data-action="retry"]').click()
    expect(timeline).to_have_count(6, timeout=15_000)  # + pending (retry requested), running, failed
    expect(timeline.nth(3)).to_contain_text("retry requested")
    expect(page.locator("#detail h2 .badge")).to_have_attribute("data-status", "failed")

    delete = page.locator('#detail .detail-actions button[data-action="delete"]')
    delete.click()
    expect(delete).to_have_text("Confirm delete")
    delete.click()
    expect(page.locator("#detail")).to_be_hidden()
    expect(row(page, task["id"])).to_have_count(0)
    assert stack.client.get(f"/api/v1/tasks/{task['id']}").status_code == 404


def test_form_validation_and_raw_json(stack: Stack, page: Page) -> None:
    open_dashboard(page, stack.url)
    page.click("#new-task")
    page.select_option("#submit-type", "add")
    page.fill("#payload-a", "1")
    page.click("#submit-button")
    expect(page.locator('[data-field="b"] .field-error')).to_have_text("required")
    expect(page.locator("#submit-dialog")).to_be_visible()

    page.select_option("#submit-type", "sleep")
    page.fill("#payload-duration_ms", "99999999")
    page.click("#submit-button")
    expect(page.locator('[data-field="duration_ms"] .field-error')).to_contain_text("less than or equal")

    page.select_option("#submit-type", "sum_pairs")
    expect(page.locator('[data-field="pairs"] textarea')).to_be_visible()  # a complex field is JSON
    page.click("#toggle-raw")
    page.fill("#payload-raw", '{"pairs": [[1, 2], [3, 4.5]]}')
    page.click("#submit-button")
    expect(page.locator("#submit-dialog")).to_be_hidden()
    expect(page.locator("#detail-result")).to_contain_text("7.5", timeout=15_000)
    task_id = page.locator("#detail").get_attribute("data-task-id")
    assert task_id and stack.get(task_id)["result"] == {"results": [3, 7.5]}


def test_filters_and_paging(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=0) as stack:
        created = []
        for i in range(30):
            if i % 6 == 0:
                created.append(stack.submit("text_stats", {"text": f"t{i}"}, priority="high"))
            elif i % 4 == 1:
                created.append(stack.submit("sum_pairs", {"pairs": [[i, i]]}, priority="low"))
            else:
                created.append(stack.submit("add", {"a": i, "b": i}))
        newest_first = [t["id"] for t in reversed(created)]
        sum_pairs = [t["id"] for t in reversed(created) if t["type"] == "sum_pairs"]
        high = [t["id"] for t in reversed(created) if t["priority"] == "high"]

        open_dashboard(page, stack.url)
        expect(page.locator('.card[data-status="total"] .count')).to_have_text("30")
        page.select_option("#page-size", "10")
        label, older, newer = page.locator("#page-label"), page.locator("#page-older"), page.locator("#page-newer")
        expect(page.locator("#task-rows tr")).to_have_count(10)
        assert shown_ids(page) == newest_first[:10]
        expect(newer).to_be_disabled()
        older.click()
        expect(label).to_have_text("Page 2")
        assert shown_ids(page) == newest_first[10:20]
        older.click()
        expect(label).to_have_text("Page 3")
        assert shown_ids(page) == newest_first[20:30]
        expect(older).to_be_disabled()
        newer.click()
        expect(label).to_have_text("Page 2")
        assert shown_ids(page) == newest_first[10:20]

        page.select_option("#filter-type", "sum_pairs")
        expect(label).to_have_text("Page 1")
        expect(page.locator("#task-rows tr")).to_have_count(len(sum_pairs))
        assert shown_ids(page) == sum_pairs
        page.select_option("#filter-priority", "high")
        expect(page.locator("#empty")).to_be_visible()
        page.select_option("#filter-type", "")
        expect(page.locator("#task-rows tr")).to_have_count(len(high))
        assert shown_ids(page) == high
        page.click("#clear-filters")
        expect(page.locator("#task-rows tr")).to_have_count(10)

        for task_id in newest_first[:2]:
            assert stack.client.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        canceled_card = page.locator('.card[data-status="canceled"]')
        expect(canceled_card.locator(".count")).to_have_text("2")  # live
        canceled_card.click()
        expect(page.locator("#filter-status")).to_have_value("canceled")
        expect(page.locator("#task-rows tr")).to_have_count(2)
        assert shown_ids(page) == newest_first[:2]
        assert "status=canceled" in page.url

        page.reload()  # filters live in the URL
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#filter-status")).to_have_value("canceled")
        expect(page.locator("#task-rows tr")).to_have_count(2)


def test_change_the_priority_of_a_pending_task(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=0) as stack:
        task = stack.submit("add", priority="low")
        open_dashboard(page, stack.url)
        expect(page.locator('#queue-bars .bar[data-priority="low"] .count')).to_have_text("1")
        row(page, task["id"]).click()
        page.select_option("#detail-priority", "high")
        expect(row(page, task["id"]).locator(".prio")).to_have_text("high")
        expect(page.locator("#detail-timeline")).to_contain_text("priority changed to high")
        expect(page.locator('#queue-bars .bar[data-priority="high"] .count')).to_have_text("1")
        expect(page.locator('#queue-bars .bar[data-priority="low"] .count')).to_have_text("0")
        expect(page.locator("#workers-count")).to_have_text("0")
        assert stack.get(task["id"])["priority"] == "high"


def test_the_page_asks_for_the_key_when_keys_are_on(stack_factory: StackFactory, browser: Browser, page: Page) -> None:
    key = "browser-test-key-7f3a"
    # No worker yet: the stack's readiness check reads /api/v1/stats without a key.
    with stack_factory(workers=0, env={"TASKPROC_API_KEYS": key}) as stack:
        stack.start_worker()
        page.goto(f"{stack.url}/")
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-error")).to_be_hidden()
        page.fill("#key-input", "wrong-key")
        page.click("#key-submit")
        expect(page.locator("#key-error")).to_contain_text("rejected")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_visible()  # no way around it

        page.fill("#key-input", key)
        page.click("#key-submit")
        expect(dialog).to_be_hidden()
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")  # the stream sends the key too
        assert page.evaluate("sessionStorage.getItem('taskproc.apiKey')") == key
        assert page.evaluate("localStorage.length") == 0
        assert page.evaluate("document.cookie") == ""
        assert key not in page.url

        auth = {"Authorization": f"Bearer {key}"}
        r = stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 2}}, headers=auth)
        assert r.status_code == 201, r.text
        expect(row(page, r.json()["id"])).to_have_attribute("data-status", "completed", timeout=30_000)

        page.reload()  # the same tab keeps its key
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(dialog).to_be_hidden()

        other = browser.new_context()  # another browser session does not have it
        try:
            other_page = other.new_page()
            other_page.goto(f"{stack.url}/")
            expect(other_page.locator("#key-dialog")).to_be_visible()
        finally:
            other.close()

        page.click("#forget-key")
        expect(dialog).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('taskproc.apiKey')") is None
        assert key not in stack.logs()


def test_reconnects_and_resumes_after_an_api_restart(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=1) as stack:
        stream_requests: list[dict[str, str]] = []
        page.on("request", lambda r: stream_requests.append(r.headers) if "/api/v1/events" in r.url else None)
        open_dashboard(page, stack.url)
        task = stack.submit("sleep", {"duration_ms": 3000})
        r = row(page, task["id"])
        expect(r).to_have_attribute("data-status", "running", timeout=10_000)
        r.click()
        expect(page.locator("#detail-timeline li")).to_have_count(2)
        page.evaluate("window.__sameDocument = true")

        assert stack.api is not None
        stack.api.stop()
        expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
        wait_for(
            lambda: stack.sql("SELECT status FROM task WHERE id = %s", (task["id"],))[0][0] == "completed",
            what="the worker to finish the task while the API is down",
        )
        stack.start_api()
        stack.wait_ready()

        expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=20_000)
        expect(r).to_have_attribute("data-status", "completed")
        expect(page.locator("#detail-timeline li")).to_have_count(3)
        assert page.evaluate("window.__sameDocument") is True
        # The reconnect asked for what it missed: the completion happened after its Last-Event-ID.
        completed_id = stack.sql(
            "SELECT id FROM task_event WHERE task_id = %s AND status = 'completed'", (task["id"],)
        )[0][0]
        assert int(stream_requests[-1]["last-event-id"]) < completed_id
