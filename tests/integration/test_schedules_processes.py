"""Schedules through real processes: the REST API of two `taskproc api` processes on one database, both
running the scheduler, with no worker at all. Fire times are made due by moving a schedule's next_run_at into
the past in Postgres (no waiting for the clock); each must give exactly one task across both processes, and the
fires go on when one process is stopped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import pytest

from taskproc.client import (
    AsyncTaskprocClient,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SchedulePublic,
    TaskprocClient,
)
from taskproc.dev.embedded import free_port

from conftest import StackFactory
from support import TASKPROC, Proc, Stack, wait_for

ADD = {"type": "add", "payload": {"a": 1, "b": 2}}
BODY = {"name": "every-minute", "cron": "* * * * *", "task": {"type": "add", "payload": {"a": 1, "b": 2}}}


def second_api(stack: Stack) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc("api2", [TASKPROC, "api", "--host", "127.0.0.1", "--port", str(port)], stack.env, stack.workdir)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: stack.client.get(f"{url}/readyz").status_code == 200, timeout=60, what="second API ready")
    return proc, url


def fired(stack: Stack, name: str) -> list[tuple[Any, ...]]:
    return stack.sql("SELECT fire_at FROM schedule_fire WHERE schedule = %s AND outcome = 'fired'", (name,))


def test_two_api_processes_fire_each_due_time_exactly_once(stack_factory: StackFactory) -> None:
    # A yearly schedule: nothing falls due by itself while the test runs; the test makes each fire due.
    body = {**BODY, "name": "yearly", "cron": "0 0 1 1 *"}
    with stack_factory(workers=0, env={"TASKPROC_SCHEDULER_TICK_S": "0.2"}) as stack:
        api2, url2 = second_api(stack)
        try:
            r = stack.client.post("/api/v1/schedules", json=body)
            assert r.status_code == 201, r.text
            for i in range(1, 5):
                if i == 4:
                    api1 = stack.api
                    assert api1 is not None
                    api1.stop()  # one replica down: the other keeps firing
                stack.sql(
                    "UPDATE schedule SET next_run_at = clock_timestamp() - interval '1 second' WHERE name = 'yearly'"
                )
                wait_for(lambda i=i: len(fired(stack, "yearly")) >= i, timeout=20, what=f"fire {i}")
                # The fire and the move of next_run_at into next year commit together: nothing more is due.
                [(due,)] = stack.sql("SELECT next_run_at > now() + interval '1 day' FROM schedule")
                assert due
            assert len({f for (f,) in fired(stack, "yearly")}) == 4
            tasks = stack.client.get(f"{url2}/api/v1/tasks", params={"schedule": "yearly"}).json()["items"]
            assert len(tasks) == 4, "exactly one task per fire time across both processes"
            assert {t["schedule"] for t in tasks} == {"yearly"} and {t["status"] for t in tasks} == {"pending"}
            [(n,)] = stack.sql("SELECT count(*) FROM task WHERE schedule = 'yearly'")
            assert n == 4
            got = stack.client.get(f"{url2}/api/v1/schedules/yearly").json()
            assert got["fired_total"] == 4 and got["last_run_at"] and got["last_task_status"] == "pending"
            assert api2.alive()
        finally:
            api2.stop()


def test_the_schedules_routes_answer_with_json_errors(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        c = stack.client
        r = c.post("/api/v1/schedules", json=BODY)
        assert r.status_code == 201, r.text
        created = r.json()
        assert r.headers["location"] == "/api/v1/schedules/every-minute"
        assert created["next_run_at"].endswith(":00Z") and created["enabled"] is True
        assert c.post("/api/v1/schedules", json=BODY).status_code == 409
        for bad in (
            {**BODY, "name": "Bad"},
            {**BODY, "cron": "* * * * * *"},
            {**BODY, "timezone": "Nowhere/City"},
            {**BODY, "overlap": "sometimes"},
            {**BODY, "catchup_s": -1},
            {**BODY, "task": {"type": "add", "payload": {"a": "x"}}},
            {**BODY, "task": {"type": "no-such-type"}},
            {**BODY, "task": {"type": "add", "queue": "q"}},  # no payload
            {**BODY, "task": {**BODY["task"], "queue": "Not a queue"}},
        ):
            r = c.post("/api/v1/schedules", json={**bad, "name": bad["name"] if bad["name"] == "Bad" else "x"})
            assert r.status_code == 422, (bad, r.text)
            assert isinstance(r.json()["detail"], list)
        assert [s["name"] for s in c.get("/api/v1/schedules").json()] == ["every-minute"]
        assert c.get("/api/v1/schedules/nope").status_code == 404
        assert c.get("/api/v1/schedules/nope").json()["detail"] == "schedule 'nope' not found"

        paused = c.patch("/api/v1/schedules/every-minute", json={"enabled": False}).json()
        assert paused["enabled"] is False and paused["next_run_at"] is None
        assert c.patch("/api/v1/schedules/every-minute", json={"cron": "bad"}).status_code == 422
        assert c.patch("/api/v1/schedules/every-minute", json={"cron": None}).status_code == 422
        assert c.patch("/api/v1/schedules/nope", json={"enabled": True}).status_code == 404

        r = c.post("/api/v1/schedules/every-minute/trigger")
        assert r.status_code == 201, r.text
        task = r.json()
        assert task["schedule"] == "every-minute" and task["payload"] == {"a": 1, "b": 2}
        assert c.post("/api/v1/schedules/nope/trigger").status_code == 404
        listed = c.get("/api/v1/tasks", params={"schedule": "every-minute"}).json()["items"]
        assert [t["id"] for t in listed] == [task["id"]]
        assert c.get("/api/v1/tasks", params={"schedule": "other"}).json()["items"] == []
        assert c.get("/api/v1/schedules/every-minute").json()["last_task_id"] == task["id"]
        assert c.get("/api/v1/schedules/every-minute/fires").json() == []

        assert c.delete("/api/v1/schedules/every-minute").status_code == 204
        assert c.delete("/api/v1/schedules/every-minute").status_code == 404
        assert c.get(f"/api/v1/tasks/{task['id']}").json()["schedule"] == "every-minute"
        metrics = c.get("/metrics").text
        assert 'taskproc_schedule_fires_total{outcome="fired",schedule="every-minute"}' in metrics


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPROC_API_")}
    env["TASKPROC_API_URL"] = stack.url
    return subprocess.run([TASKPROC, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_sdk_and_the_cli_manage_schedules(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        with TaskprocClient(stack.url) as client:
            created = client.create_schedule(
                "sdk", cron="@daily", timezone="Europe/Berlin", task={"type": "add", "payload": {"a": 1, "b": 2}}
            )
            assert isinstance(created, SchedulePublic) and created.next_run_at is not None
            assert created.task.type == "add" and created.overlap == "allow"
            with pytest.raises(ConflictError):
                client.create_schedule("sdk", cron="@daily", task=ADD)
            with pytest.raises(InvalidInputError):
                client.create_schedule("bad", cron="@sometimes", task=ADD)
            with pytest.raises(ValueError, match="schedule name"):
                client.get_schedule("../tasks")
            paused = client.update_schedule("sdk", enabled=False, overlap="skip")
            assert not paused.enabled and paused.overlap == "skip" and paused.next_run_at is None
            task = client.trigger_schedule("sdk")
            assert task.schedule == "sdk"
            assert [t.id for t in client.list(schedule="sdk")] == [task.id]
            assert [s.name for s in client.list_schedules()] == ["sdk"]
            assert client.get_schedule("sdk").last_task_id == task.id
            client.delete_schedule("sdk")
            with pytest.raises(NotFoundError):
                client.get_schedule("sdk")

        async def use_async() -> None:
            async with AsyncTaskprocClient(stack.url) as client:
                s = await client.create_schedule("async", cron="*/10 * * * *", task=ADD)
                assert (await client.get_schedule("async")).name == s.name
                assert (await client.update_schedule("async", catchup_s=60)).catchup_s == 60
                assert (await client.trigger_schedule("async")).schedule == "async"
                assert [x.name for x in await client.list_schedules()] == ["async"]
                await client.delete_schedule("async")

        asyncio.run(use_async())

        r = cli(
            stack,
            "schedules",
            "create",
            "cli-1",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--type",
            "add",
            "--payload",
            '{"a": 2, "b": 3}',
            "--overlap",
            "cancel_previous",
            "--queue",
            "reports",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["overlap"] == "cancel_previous"
        assert json.loads(r.stdout)["task"]["queue"] == "reports"
        assert cli(stack, "schedules", "create", "cli-1", "--cron", "@daily", "--type", "add").returncode == 3
        listed = cli(stack, "schedules", "list")
        assert listed.returncode == 0 and "cli-1" in listed.stdout and "30 2 * * *" in listed.stdout
        assert "paused" in cli(stack, "schedules", "pause", "cli-1").stdout
        assert json.loads(cli(stack, "schedules", "get", "cli-1", "--json").stdout)["enabled"] is False
        assert "resumed" in cli(stack, "schedules", "resume", "cli-1").stdout
        triggered = cli(stack, "schedules", "trigger", "cli-1", "--json")
        assert triggered.returncode == 0 and json.loads(triggered.stdout)["schedule"] == "cli-1"
        assert json.loads(triggered.stdout)["queue"] == "reports", "a fire's task goes to the schedule's queue"
        shown = cli(stack, "schedules", "get", "cli-1")
        assert shown.returncode == 0 and "fired 1" in shown.stdout
        assert cli(stack, "schedules", "delete", "cli-1").returncode == 0
        assert cli(stack, "schedules", "get", "cli-1").returncode == 3


def test_after_downtime_a_fire_within_catchup_s_runs_once_and_an_older_one_is_recorded_missed(
    stack_factory: StackFactory,
) -> None:
    with stack_factory(workers=0, env={"TASKPROC_SCHEDULER_TICK_S": "0.2"}) as stack:
        for name, catchup_s in (("short", 600), ("long", 7200)):
            body = {**BODY, "name": name, "cron": "0 0 1 1 *", "catchup_s": catchup_s}
            assert stack.client.post("/api/v1/schedules", json=body).status_code == 201
        assert stack.api is not None
        stack.api.stop()
        # While no API runs, a fire time passes an hour ago (as if the API had been down since before it).
        stack.sql("UPDATE schedule SET next_run_at = clock_timestamp() - interval '1 hour'")
        stack.start_api()
        stack.wait_ready()

        def state(name: str) -> dict[str, Any]:
            return dict(stack.client.get(f"/api/v1/schedules/{name}").json())

        wait_for(lambda: state("short")["missed_total"] == 1 and state("long")["fired_total"] == 1, what="catch-up")
        short, long = state("short"), state("long")
        assert short["fired_total"] == 0 and short["last_skip_reason"].startswith("missed")
        assert long["missed_total"] == 0
        counts = dict(stack.sql("SELECT schedule, count(*) FROM task GROUP BY schedule"))
        assert counts == {"long": 1}
        [fire] = stack.client.get("/api/v1/schedules/short/fires").json()
        assert fire["outcome"] == "missed"
