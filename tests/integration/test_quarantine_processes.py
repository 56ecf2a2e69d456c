"""Crash quarantine with real worker processes (issue 15's "done when"): a poison task that kills its worker three
times is then quarantined, failed for good, while other tasks keep flowing through the workers the test restarts."""

from __future__ import annotations

import os
import subprocess

from conftest import StackFactory
from support import ROOT, TASKPROC, Stack, SupervisedWorkers, wait_for

ENV = {
    "TASKPROC_TASK_MODULES": "poison_tasks",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    "TASKPROC_WORKER_CONCURRENCY": "4",
}


def _completed(stack: Stack, ids: list[str]) -> int:
    rows = stack.sql("SELECT count(*) FROM task WHERE id = ANY(%s) AND status = 'completed'", (ids,))
    return int(rows[0][0])


def test_a_poison_task_is_quarantined_after_killing_three_workers_while_others_flow(
    stack_factory: StackFactory,
) -> None:
    with stack_factory(workers=0, env=ENV) as stack:
        pool = SupervisedWorkers(stack)
        pool.start()
        pool.start()
        stack.wait_ready(2)
        # Retries are plenty: the quarantine, not max_retries, is what stops it.
        poison = stack.submit("poison", {"note": "kills its worker"}, max_retries=10)
        others: list[str] = []
        task = pool.until_ended(poison["id"], others)
        assert task["status"] == "failed" and task["quarantined"] is True, task
        assert task["error"] == "worker died during 3 attempts"
        assert (task["lost_attempts"], task["attempts"]) == (3, 3), "its max_retries of 10 were not what stopped it"
        assert pool.deaths == 3, "each attempt killed the worker that ran it, and there were three"
        events = stack.events(poison["id"])
        assert [e["status"] for e in events].count("running") == 3
        assert events[-1]["detail"] == (
            "quarantined: worker died during 3 attempts (TASKPROC_MAX_LOST_ATTEMPTS); not retried"
        )
        listed = stack.client.get("/api/v1/tasks", params={"status": "failed", "type": "poison"}).json()["items"]
        assert [(t["id"], t["quarantined"]) for t in listed] == [(poison["id"], True)]

        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_API_")}
        shown = subprocess.run(
            [TASKPROC, "get", poison["id"]],
            env={**env, "TASKPROC_API_URL": stack.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert "quarantined" in shown.stdout and "worker died during 3 attempts" in shown.stdout

        # Meanwhile the other tasks kept flowing: completed between the first death's reap and the quarantine.
        [(first_reap,)] = stack.sql(
            "SELECT min(at) FROM task_event WHERE task_id = %s AND detail LIKE 'worker lost%%'", (poison["id"],)
        )
        [(during,)] = stack.sql(
            "SELECT count(*) FROM task WHERE id = ANY(%s) AND finished_at > %s AND finished_at < %s",
            (others, first_reap, stack.sql("SELECT finished_at FROM task WHERE id = %s", (poison["id"],))[0][0]),
        )
        assert during >= 3, f"only {during} other tasks completed while the poison task was crash-looping"

        # Counted as quarantined (by the worker whose reaper failed it, which is alive: it never ran the poison
        # since) and as a failure like any other.
        assert wait_for(lambda: pool.metric("taskproc_tasks_quarantined_total", type="poison") == 1, timeout=10)
        assert pool.metric("taskproc_tasks_finished_total", type="poison", status="failed") == 1

        # It is never run again: more tasks go through both workers, and nobody dies.
        more = [stack.submit("add", {"a": i, "b": 2})["id"] for i in range(30)]
        wait_for(lambda: _completed(stack, more) == len(more), timeout=60, what="the tasks after the quarantine")
        wait_for(lambda: _completed(stack, others) == len(others), timeout=60, what="every other task")
        pool.supervise()
        assert pool.deaths == 3
        assert stack.get(poison["id"])["attempts"] == 3
        assert [e["status"] for e in stack.events(poison["id"])].count("running") == 3
