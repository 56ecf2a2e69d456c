"""A rolling upgrade, as Kubernetes does it: the API and the workers are replaced independently, so an old worker
meets tasks of a type, or a payload field, that only the new version knows (issue 12 case 1).

The old worker must never fail them: it hands them back without spending an attempt, the task shows why it
waits (in the task, /stats and /metrics), and a worker of the new version runs it once it starts.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from conftest import StackFactory
from support import wait_for

OLD = '''
from pydantic import BaseModel, ConfigDict

from taskproc.tasks.registry import TaskContext, task_type


class EchoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


@task_type("skew_echo", payload=EchoIn)
async def echo(payload: EchoIn, ctx: TaskContext) -> dict[str, str]:
    """Echoes the text."""
    return {"text": payload.text}
'''

NEW = '''
from pydantic import BaseModel, ConfigDict

from taskproc.tasks.registry import TaskContext, task_type


class EchoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    upper: bool = False


@task_type("skew_echo", payload=EchoIn)
async def echo(payload: EchoIn, ctx: TaskContext) -> dict[str, str]:
    """Echoes the text, upper-cased if asked (a field the old version does not know)."""
    return {"text": payload.text.upper() if payload.upper else payload.text}


class FreshIn(BaseModel):
    text: str


@task_type("skew_fresh", payload=FreshIn)
async def fresh(payload: FreshIn, ctx: TaskContext) -> dict[str, int]:
    """A type only the new version has."""
    return {"length": len(payload.text)}
'''


def _module(root: Path, source: str) -> str:
    root.mkdir(parents=True)
    (root / "skew_tasks.py").write_text(textwrap.dedent(source))
    return os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])


def test_old_worker_hands_new_work_back_and_a_new_worker_completes_it(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    new_path = _module(tmp_path / "new", NEW)
    old_path = _module(tmp_path / "old", OLD)
    env = {"TASKPROC_TASK_MODULES": "skew_tasks", "PYTHONPATH": new_path}
    with stack_factory(workers=0, env=env) as stack:
        old = stack.start_worker(env={"PYTHONPATH": old_path})
        stack.wait_ready(workers=1)
        fresh = stack.submit("skew_fresh", {"text": "abcd"}, max_retries=3)
        upper = stack.submit("skew_echo", {"text": "abc", "upper": True}, max_retries=3)
        # Normalised by the new API's model, this payload carries `upper: false` too: also newer than the worker.
        plain = stack.submit("skew_echo", {"text": "plain"}, max_retries=0)
        # The old worker does run what it knows.
        assert stack.wait_status(stack.submit("add")["id"], "completed")["result"] == {"sum": 3}

        # It met both new tasks and gave them back, untouched or with the attempt given back.
        wait_for(
            lambda: "does not serve handed back" in old.tail(400),
            what="the old worker to hand back the job of an unknown type",
        )
        wait_for(
            lambda: any("handed back" in (e["detail"] or "") for e in stack.events(upper["id"])),
            what="the old worker to hand back the payload with a field it does not know",
        )
        for task_id in (fresh["id"], upper["id"], plain["id"]):
            task = stack.get(task_id)
            assert task["status"] == "pending", task
            assert task["attempts"] == 0 and task["error"] is None, task
        # Visible: the task says why it waits, /stats and /metrics count it.
        waiting = stack.get(fresh["id"])["waiting"]
        assert waiting is not None and waiting["reason"] == "no_worker", waiting
        assert "skew_fresh" in waiting["detail"]
        # Its type is served, just not by this version: never "no_worker". It waits out the hand-back delay or for
        # a slot, or is running for a moment (the old worker claims it before it hands it back).
        upper_waiting = stack.get(upper["id"])["waiting"]
        assert upper_waiting is None or upper_waiting["reason"] in {"delayed", "ready"}, upper_waiting
        assert stack.client.get("/api/v1/stats").json()["waiting_no_worker"] == 1
        assert "taskproc_tasks_waiting_no_worker 1.0" in stack.client.get("/metrics").text
        listed = stack.client.get("/api/v1/tasks", params={"type": "skew_fresh"}).json()["items"]
        assert [t["waiting"]["reason"] for t in listed] == ["no_worker"]

        # The new version's worker arrives: both run once, for the first time.
        stack.start_worker()
        done = stack.wait_status(fresh["id"], {"completed", "failed"})
        assert done["status"] == "completed" and done["result"] == {"length": 4}, done
        assert done["attempts"] == 1 and done["waiting"] is None
        done = stack.wait_status(upper["id"], {"completed", "failed"})
        assert done["status"] == "completed" and done["result"] == {"text": "ABC"}, done
        assert done["attempts"] == 1
        done = stack.wait_status(plain["id"], {"completed", "failed"})
        assert done["status"] == "completed" and done["attempts"] == 1, done
        assert stack.client.get("/api/v1/stats").json()["waiting_no_worker"] == 0
