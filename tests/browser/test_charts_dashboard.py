"""The overview's live charts in headless Chromium, against a real API (sampling every second) and a real
worker: after tasks ran, the throughput chart counts them and draws them, and the backlog follows a running
task, without a reload."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from conftest import StackFactory

pytestmark = pytest.mark.browser


def test_charts_show_the_completed_and_failed_tasks_live(stack_factory: StackFactory, page: Page) -> None:
    with stack_factory(workers=1, env={"TASKPROC_STATS_SAMPLE_S": "1"}) as stack:
        page.goto(f"{stack.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        charts = page.locator("#charts")
        expect(charts).to_be_visible()
        completed = page.locator('#chart-throughput li[data-series="completed_per_s"]')
        expect(completed).to_have_attribute("data-total", "0")

        done = [stack.submit("add", {"a": i, "b": 1}) for i in range(5)]
        failed = stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0)
        for t in done:
            stack.wait_status(t["id"], "completed")
        stack.wait_status(failed["id"], "failed")

        expect(completed).to_have_attribute("data-total", "5", timeout=20_000)  # polled, no reload
        expect(completed).to_contain_text("5 in the hour")
        expect(page.locator('#chart-throughput li[data-series="failed_per_s"]')).to_have_attribute("data-total", "1")
        series = page.locator('#chart-throughput g[data-series="completed_per_s"]')
        expect(series.locator("polyline, circle").first).to_be_attached()
        expect(page.locator('#chart-latency li[data-series="run_p50_s"] strong')).not_to_have_text("\u2013")

        long = stack.submit("sleep", {"duration_ms": 60_000})
        stack.wait_status(long["id"], "running")
        expect(page.locator('#chart-backlog li[data-series="running"] strong')).to_have_text("1", timeout=20_000)
        assert stack.client.post(f"/api/v1/tasks/{long['id']}/cancel").status_code == 200
