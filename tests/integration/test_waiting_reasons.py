"""Why isn't this task running? Every waiting task says so in `waiting` (issue 14): a delay, a retry backoff,
or due and waiting for a slot with its position in its queue (paused queues and missing workers: test_queues.py,
test_version_skew.py)."""

from __future__ import annotations

from datetime import datetime

from inprocess import InProcessFactory


async def test_each_waiting_task_says_why_it_is_not_running(inprocess_factory: InProcessFactory) -> None:
    env = {"TASKPROC_WORKER_CONCURRENCY": "1", "TASKPROC_RETRY_BASE_S": "600", "TASKPROC_SHUTDOWN_GRACE_S": "1"}
    async with inprocess_factory(workers=1, env=env) as stack:
        failing = await stack.submit("sleep", {"duration_ms": 1, "fail_rate": 1}, max_retries=3)
        retrying = await stack.wait_status(failing["id"], "retrying")
        assert retrying["waiting"]["reason"] == "backoff", retrying
        assert datetime.fromisoformat(retrying["waiting"]["until"]) == datetime.fromisoformat(retrying["run_at"])

        delayed = await stack.get((await stack.submit(delay_s=600))["id"])
        assert delayed["waiting"]["reason"] == "delayed", delayed
        assert datetime.fromisoformat(delayed["waiting"]["until"]) == datetime.fromisoformat(delayed["run_at"])

        # The one slot is taken: what comes next is due and waits, in the order the worker will take it.
        busy = await stack.submit("sleep", {"duration_ms": 120_000})
        await stack.wait_status(busy["id"], "running")
        assert (await stack.get(busy["id"]))["waiting"] is None
        first = await stack.submit()
        second = await stack.submit()
        urgent = await stack.submit(priority="high")
        positions = {}
        for name, task in (("first", first), ("second", second), ("urgent", urgent)):
            waiting = (await stack.get(task["id"]))["waiting"]
            assert waiting["reason"] == "ready" and waiting["until"] is None, waiting
            positions[name] = waiting["position"]
        assert positions == {"urgent": 0, "first": 1, "second": 2}

        listed = (await stack.client.get("/api/v1/tasks", params={"status": "pending"})).json()["items"]
        reasons = {t["id"]: t["waiting"]["reason"] for t in listed}
        assert reasons[delayed["id"]] == "delayed" and reasons[first["id"]] == "ready", reasons
