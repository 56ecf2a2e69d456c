"""The webhooks panel in headless Chromium, against a real API and worker and a real HTTP receiver in the test:
create a webhook (its secret shown once), see its delivery retried past a failing first answer with its status
codes and timings, redeliver it, and delete the webhook."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from standardwebhooks import Webhook

from conftest import StackFactory
from support import wait_for

pytestmark = pytest.mark.browser

FAST = {
    "TASKPROC_WEBHOOK_ALLOW_PRIVATE": "true",
    "TASKPROC_WEBHOOK_RETRY_BASE_S": "0.1",
    "TASKPROC_WEBHOOK_RETRY_MAX_S": "0.3",
    "TASKPROC_WEBHOOK_TICK_S": "0.1",
}


class Receiver:
    """Answers 500 to the first request, then 200; keeps every request's headers and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def handle(self, headers: dict[str, str], raw: bytes) -> int:
        with self.lock:
            self.requests.append((headers, raw))
            return 500 if len(self.requests) == 1 else 200


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            code = rec.handle({k.lower(): v for k, v in self.headers.items()}, raw)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_create_see_deliveries_redeliver_and_delete(
    stack_factory: StackFactory, page: Page, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    with stack_factory(workers=1, env=FAST) as stack:
        page.goto(f"{stack.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#webhooks-empty")).to_be_visible()
        page.click("#webhook-new")
        page.fill("#webhook-url", url)
        expect(page.locator("#webhook-event-task-completed")).to_be_checked()
        page.fill("#webhook-filter-type", "add")
        page.click("#webhook-submit")
        secret = page.locator("#webhook-secret-value")
        expect(page.locator("#webhook-secret")).to_be_visible()
        [hook] = stack.client.get("/api/v1/webhooks").json()
        assert hook["url"] == url and hook["filter"]["type"] == ["add"]
        assert sorted(hook["events"]) == ["task.completed", "task.failed"]
        row = page.locator(f'#webhook-rows tr[data-webhook-id="{hook["id"]}"]')
        expect(row).to_contain_text("type add")
        signing = secret.inner_text()
        assert signing.startswith("whsec_")

        task = stack.submit("add", {"a": 2, "b": 3})
        stack.wait_status(task["id"], "completed")
        row.locator('button[data-action="deliveries"]').click()
        delivery = page.locator("#webhook-delivery-rows tr").first
        expect(delivery).to_have_attribute("data-status", "delivered", timeout=20_000)
        expect(delivery.locator('[data-field="attempts"]')).to_have_text("2")  # a 500 first, then a 200
        expect(delivery.locator('[data-field="code"]')).to_have_text("200")
        expect(delivery.locator('[data-field="latency"]')).to_contain_text("ms")
        expect(delivery).to_contain_text(task["id"][:8])
        headers, raw = rec.requests[-1]
        Webhook(signing).verify(raw, headers)  # signed with the secret the page showed

        delivery.locator('button[data-action="redeliver"]').click()
        wait_for(lambda: len(rec.requests) == 3, what="the redelivery")
        expect(delivery.locator('[data-field="attempts"]')).to_have_text("3")
        assert rec.requests[2][0]["webhook-id"] == rec.requests[1][0]["webhook-id"], "the same delivery again"

        remove = row.locator('button[data-action="delete"]')
        remove.click()
        expect(remove).to_have_text("Confirm delete")
        remove.click()
        expect(row).to_have_count(0)
        expect(page.locator("#webhook-deliveries")).to_be_hidden()
        assert stack.client.get("/api/v1/webhooks").json() == []
