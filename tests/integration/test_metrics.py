"""Metrics read back from the real API's and a real worker's /metrics after driving tasks through them."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from taskproc.dev.embedded import free_port

from conftest import StackFactory
from support import TASKPROC, Proc, wait_for


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(httpx.get(url, timeout=10).text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_task_metrics_from_api_and_worker(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        api_metrics = f"{stack.url}/metrics"
        assert value(scrape(api_metrics), "taskproc_workers") == 0
        ids = [stack.submit("add", priority="high")["id"] for _ in range(3)]
        ids += [stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=1)["id"]]
        m = scrape(api_metrics)
        assert value(m, "taskproc_tasks_submitted_total", type="add", priority="high") == 3
        assert value(m, "taskproc_tasks_submitted_total", type="sleep", priority="normal") == 1
        assert value(m, "taskproc_queue_depth", priority="high") == 3
        assert value(m, "taskproc_queue_depth", priority="normal") == 1
        assert value(m, "taskproc_api_operations_total", operation="create_task", outcome="ok") == 4

        port = free_port()
        stack.start_worker(metrics_port=port)
        worker_metrics = f"http://127.0.0.1:{port}/metrics"
        for task_id in ids:
            stack.wait_status(task_id, {"completed", "failed"})
        wait_for(lambda: value(scrape(api_metrics), "taskproc_workers") == 1, what="worker gauge 1")
        m = scrape(api_metrics)
        assert value(m, "taskproc_queue_depth") == 0, "queue depth went back down"

        w = scrape(worker_metrics)
        assert value(w, "taskproc_tasks_finished_total", type="add", status="completed") == 3
        assert value(w, "taskproc_tasks_finished_total", type="sleep", status="failed") == 1
        assert value(w, "taskproc_tasks_retried_total", type="sleep") == 1
        assert value(w, "taskproc_task_attempts_total", type="add", outcome="success") == 3
        assert value(w, "taskproc_task_attempts_total", type="sleep", outcome="error") == 2
        assert value(w, "taskproc_task_duration_seconds_count", type="add") == 3
        assert value(w, "taskproc_task_queue_wait_seconds_count", priority="high") == 3
        assert value(w, "taskproc_tasks_running") == 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        # A counter is cumulative: scraping again does not reset it.
        assert value(scrape(worker_metrics), "taskproc_tasks_finished_total", type="add", status="completed") == 3

        # Delayed tasks show as deferred, not as ready.
        stack.submit("add", delay_s=3600)
        m = scrape(api_metrics)
        assert value(m, "taskproc_queue_deferred") == 1
        assert value(m, "taskproc_queue_depth") == 0


def test_running_gauge_and_no_task_ids_in_labels(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        port = free_port()
        stack.start_worker(metrics_port=port)
        stack.wait_ready(1)
        task = stack.submit("sleep", {"duration_ms": 20_000})
        stack.wait_status(task["id"], "running")
        w = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(w, "taskproc_tasks_running") == 1
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text + httpx.get(f"{stack.url}/metrics").text
        assert task["id"] not in text
        stack.client.post(f"/api/v1/tasks/{task['id']}/cancel")
        stack.wait_status(task["id"], "canceled")
        w = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(w, "taskproc_tasks_running") == 0
        assert value(w, "taskproc_task_attempts_total", type="sleep", outcome="aborted") == 1
        assert value(w, "taskproc_tasks_finished_total", type="sleep", status="canceled") == 1


def test_several_uvicorn_workers_report_one_total(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        port = free_port()
        api = Proc(
            "api-multi",
            [TASKPROC, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            {k: v for k, v in stack.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            stack.workdir,
        ).start()
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, what="multi-worker API")
            with httpx.Client(base_url=base, timeout=10) as c:
                for i in range(20):
                    r = c.post("/api/v1/tasks", json={"type": "add", "payload": {"a": i, "b": 0}})
                    assert r.status_code == 201
            # Whichever process answers the scrape, the total is the sum over both.
            for _ in range(6):
                m = scrape(f"{base}/metrics")
                assert value(m, "taskproc_tasks_submitted_total", type="add") == 20
                assert value(m, "http_requests_total", handler="/api/v1/tasks", method="POST") == 20
        finally:
            api.stop()
