"""Worker behaviour, with real arq workers run in process: priority, retries with backoff, timeouts, concurrency,
wake-ups."""

from __future__ import annotations

import itertools
from datetime import datetime

from inprocess import InProcess, InProcessFactory


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_priority_order_when_several_are_ready(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=0, env={"TASKPROC_WORKER_CONCURRENCY": "1"}) as stack:
        plan = ["low", "normal", "high", "low", "high", "normal", "low", "high", "normal", "low", "high"]
        ids: dict[str, list[str]] = {prio: [] for prio in ("high", "normal", "low")}
        for prio in plan:
            ids[prio].append((await stack.submit("sleep", {"duration_ms": 5}, priority=prio))["id"])
        await stack.start_worker()
        for prio_ids in ids.values():
            for task_id in prio_ids:
                await stack.wait_status(task_id, "completed")
        started = sorted(
            [(_ts((await stack.get(t))["started_at"]), prio, t) for prio, ts in ids.items() for t in ts],
        )
        order = [prio for _, prio, _ in started]
        assert order == ["high"] * 4 + ["normal"] * 3 + ["low"] * 4, order
        for prio, prio_ids in ids.items():
            assert [t for _, p, t in started if p == prio] == prio_ids, f"FIFO within {prio}"


async def test_patched_priority_applies_to_the_pending_task(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=0, env={"TASKPROC_WORKER_CONCURRENCY": "1"}) as stack:
        lows = [(await stack.submit("add", priority="low"))["id"] for _ in range(5)]
        r = await stack.client.patch(f"/api/v1/tasks/{lows[-1]}", json={"priority": "high"})
        assert r.status_code == 200
        await stack.start_worker()
        for t in lows:
            await stack.wait_status(t, "completed")
        started_at = {t: _ts((await stack.get(t))["started_at"]) for t in lows}
        first = min(lows, key=started_at.__getitem__)
        assert first == lows[-1]
        # The superseded job of the old generation did not run it a second time.
        statuses = [e["status"] for e in await stack.events(lows[-1])]
        assert statuses.count("running") == 1


async def test_retries_with_growing_backoff_until_failed(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_RETRY_BASE_S": "0.3"}) as stack:
        task = await stack.submit("sleep", {"duration_ms": 0, "fail_rate": 1.0}, max_retries=3)
        failed = await stack.wait_status(task["id"], "failed", timeout=60)
        assert failed["attempts"] == 4
        assert "simulated failure" in failed["error"]
        events = await stack.events(task["id"])
        statuses = [e["status"] for e in events]
        assert statuses == ["pending"] + ["running", "retrying"] * 3 + ["running", "failed"]
        starts = [_ts(e["at"]) for e in events if e["status"] == "running"]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        # Equal-jitter backoff: attempt n waits within [base*2^(n-1)/2, base*2^(n-1)], so gaps never shrink.
        assert gaps[0] >= 0.15
        assert gaps == sorted(gaps), gaps
        assert gaps[-1] >= 0.6
        stats = (await stack.client.get("/api/v1/stats")).json()
        assert stats["retried_total"] >= 3


async def test_timeout_fails_the_attempt(inprocess: InProcess) -> None:
    stack = inprocess
    task = await stack.submit("sleep", {"duration_ms": 30_000}, timeout_s=0.5, max_retries=0)
    failed = await stack.wait_status(task["id"], "failed", timeout=20)
    assert "timed out after 0.5s" in failed["error"]
    assert failed["attempts"] == 1


async def test_worker_concurrency_bounds_parallel_tasks(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_WORKER_CONCURRENCY": "3"}) as stack:
        r = await stack.client.post(
            "/api/v1/tasks/batch", json={"tasks": [{"type": "sleep", "payload": {"duration_ms": 700}}] * 9}
        )
        ids = [t["id"] for t in r.json()["items"]]
        tasks = [await stack.wait_status(t, "completed") for t in ids]
        spans = [(_ts(t["started_at"]), _ts(t["finished_at"])) for t in tasks]
        peak = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
        assert 2 <= peak <= 3, peak


async def test_idle_worker_is_woken_without_waiting_for_a_poll(inprocess_factory: InProcessFactory) -> None:
    # With the fallback poll at 60 s, only the pub/sub wake-up can make the task start in time.
    async with inprocess_factory(workers=1, env={"TASKPROC_WORKER_POLL_S": "60"}) as stack:
        for _ in range(3):
            task = await stack.submit("add")
            await stack.wait_status(task["id"], "completed", timeout=10)


async def test_delayed_task_starts_on_time_without_polling(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1, env={"TASKPROC_WORKER_POLL_S": "60"}) as stack:
        task = await stack.submit("add", delay_s=1.0, priority="high")
        done = await stack.wait_status(task["id"], "completed", timeout=15)
        wait_s = (_ts(done["started_at"]) - _ts(done["created_at"])).total_seconds()
        assert wait_s >= 1.0


async def test_a_worker_is_listening_for_wakeups_by_the_time_it_shows_up_as_live(
    inprocess_factory: InProcessFactory,
) -> None:
    # A task submitted the moment a fresh worker registers must start at once, not at its first fallback poll
    # (60 s here): the worker subscribes to wake-ups before it registers, and looks at the queue again when
    # its subscription is confirmed.
    async with inprocess_factory(workers=0, env={"TASKPROC_WORKER_POLL_S": "60"}) as stack:
        for _ in range(6):
            await stack.start_worker(wait=False)
            await stack.wait_workers(1)
            task = await stack.submit("add")
            await stack.wait_status(task["id"], "completed", timeout=10)
            await stack.stop_workers()
