"""GET /api/v1/stats/history: the samples an API process records (taskproc.samples) from the counters and the
tasks finished in each interval, after real workers ran tasks: every finished task counted once, percentiles
ordered, the sample statement bounded by the index on finished_at, old samples pruned."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from taskproc import store
from taskproc.db import create_engine, create_sessionmaker

from inprocess import InProcessFactory, wait_until

FAST = {"TASKPROC_STATS_SAMPLE_S": "0.3"}


async def test_history_counts_each_finished_task_once_with_percentiles(inprocess_factory: InProcessFactory) -> None:
    async with inprocess_factory(workers=1, env=FAST) as api:
        ok = [await api.submit("sleep", {"duration_ms": 50}) for _ in range(6)]
        bad = [await api.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0) for _ in range(2)]
        for t in ok:
            await api.wait_status(t["id"], "completed")
        for t in bad:
            await api.wait_status(t["id"], "failed")

        async def counted() -> dict[str, Any] | None:
            r = await api.client.get("/api/v1/stats/history", params={"window_s": 600})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            pts = body["points"]
            done = sum(p["completed"] for p in pts), sum(p["failed"] for p in pts)
            return body if done == (6, 2) else None

        body = await wait_until(counted, timeout=20, what="the samples to count 6 completed and 2 failed")
        assert body["window_s"] == 600 and body["sample_s"] == 0.3
        points = body["points"]
        assert [p["at"] for p in points] == sorted(p["at"] for p in points), "oldest first"
        busy = [p for p in points if p["completed"]]
        for p in busy:
            assert p["completed_per_s"] > 0 and p["interval_s"] > 0
            assert abs(p["completed_per_s"] - p["completed"] / p["interval_s"]) < 0.01
            assert 0 <= p["wait_p50_s"] <= p["wait_p95_s"] <= p["wait_p99_s"]
            assert 0.04 <= p["run_p50_s"] <= p["run_p95_s"] <= p["run_p99_s"] < 10  # each slept 50 ms
        assert all(p["wait_p50_s"] is None for p in points if not (p["completed"] or p["failed"]))

        # A task that stays running shows in the running series (from the trigger-kept counters).
        long = await api.submit("sleep", {"duration_ms": 60_000})
        await api.wait_status(long["id"], "running")

        async def running() -> bool:
            r = await api.client.get("/api/v1/stats/history")
            return bool(r.json()["points"]) and r.json()["points"][-1]["running"] == 1

        await wait_until(running, timeout=20, what="a sample with the running task")
        await api.client.post(f"/api/v1/tasks/{long['id']}/cancel")

        r = await api.client.get("/api/v1/stats/history", params={"window_s": 10})
        assert r.status_code == 422 and "window_s" in r.text


async def test_sample_reads_the_interval_over_the_finished_at_index_and_prunes(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=0, env={"TASKPROC_STATS_SAMPLE_S": "300"}) as api:
        engine = create_engine(api.settings, pool_size=1, max_overflow=0)
        try:
            sessions = create_sessionmaker(engine)
            async with sessions() as session:
                # The plan the sampler gets with its parameters: the task table only through the partial index.
                params = store._params(lag_s=1.0, first_s=10.0, max_s=300.0, min_gap_s=5.0)
                plan = "\n".join(
                    (await session.execute(sa.text("EXPLAIN " + str(store.TAKE_STATS_SAMPLE.text)), params)).scalars()
                )
                assert "ix_task_terminal_finished" in plan, plan
                assert "Seq Scan on task " not in plan, plan
                await session.rollback()

                # Under the lock the API's own sampler waits; the sample it may have taken at startup goes first.
                assert await store.try_stats_sample_lock(session)
                await store.prune_stats_samples(session, keep_s=0)
                first = await store.take_stats_sample(session, interval_s=10.0)
                assert first is not None and first.completed == 0 and first.wait_p50_s is None
                assert abs(first.interval_s - 10.0) < 0.5
                # Right after: another process's sample is skipped, not doubled.
                assert await store.take_stats_sample(session, interval_s=10.0) is None
                assert await store.prune_stats_samples(session, keep_s=3600) == 0
                assert await store.prune_stats_samples(session, keep_s=0) == 1
                assert await store.stats_samples(session, window_s=3600) == []
                await session.commit()
        finally:
            await engine.dispose()
