"""/readyz reflects what the API can serve: Postgres. Redis down is reported (body, metric, log) but leaves the
API in the Service, since it keeps accepting tasks then (they are safe in Postgres). In process, with the
session's Redis stopped."""

from __future__ import annotations

import pytest
from test_metrics import samples, value
from test_reliability_outage import redis_stopped

from inprocess import InProcessFactory, wait_until
from support import Servers

pytestmark = pytest.mark.slow


async def test_redis_down_keeps_the_api_ready_and_says_so(
    inprocess_factory: InProcessFactory, servers: Servers
) -> None:
    async with inprocess_factory(workers=0) as stack:
        r = await stack.client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        with redis_stopped(servers):
            r = await stack.client.get("/readyz")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["checks"]["postgres"] == "ok"
            assert body["checks"]["redis"].startswith("unavailable"), body
            assert "redis" in body["status"]
            m = samples((await stack.client.get("/metrics")).text)
            assert value(m, "taskproc_dependency_up", dependency="redis") == 0
            assert value(m, "taskproc_dependency_up", dependency="postgres") == 1
            r = await stack.client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}})
            assert r.status_code == 201, r.text

            async def logged() -> bool:
                return "redis unavailable" in stack.logs()

            await wait_until(logged, what="a log line about Redis")

        async def redis_back() -> bool:
            return bool((await stack.client.get("/readyz")).json()["checks"]["redis"] == "ok")

        await wait_until(redis_back, timeout=20, what="Redis back")
        m = samples((await stack.client.get("/metrics")).text)
        assert value(m, "taskproc_dependency_up", dependency="redis") == 1
        assert "redis available again" in stack.logs()
