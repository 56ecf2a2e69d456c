"""/readyz reflects what the API can serve: Postgres. Redis down is reported (body, metric, log) but leaves the
API in the Service, since it keeps accepting tasks then (they are safe in Postgres)."""

from __future__ import annotations

import pytest
from test_metrics import scrape, value
from test_reliability_outage import redis_stopped

from conftest import StackFactory
from support import Servers, wait_for

pytestmark = pytest.mark.slow


def test_redis_down_keeps_the_api_ready_and_says_so(stack_factory: StackFactory, servers: Servers) -> None:
    with stack_factory(workers=0) as stack:
        r = stack.client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        with redis_stopped(servers):
            r = stack.client.get("/readyz")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["checks"]["postgres"] == "ok"
            assert body["checks"]["redis"].startswith("unavailable"), body
            assert "redis" in body["status"]
            m = scrape(f"{stack.url}/metrics")
            assert value(m, "taskproc_dependency_up", dependency="redis") == 0
            assert value(m, "taskproc_dependency_up", dependency="postgres") == 1
            r = stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}})
            assert r.status_code == 201, r.text
            assert stack.api is not None
            wait_for(
                lambda: "redis unavailable" in stack.api.log_path.read_text(),  # type: ignore[union-attr]
                what="a log line about Redis",
            )
        wait_for(lambda: stack.client.get("/readyz").json()["checks"]["redis"] == "ok", timeout=20, what="Redis back")
        assert value(scrape(f"{stack.url}/metrics"), "taskproc_dependency_up", dependency="redis") == 1
        assert "redis available again" in stack.api.log_path.read_text()
