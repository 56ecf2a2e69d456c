"""A `* * * * *` schedule on the real clock for five fire times, with two `taskproc api` processes on one
database both running the scheduler: exactly one task per minute, consecutive minutes, no duplicate, each
fire made by one of the two processes. test_schedules_processes.py makes fire times due by moving
next_run_at (fast); this one waits for the wall clock, as a deployment does. It mostly sleeps between polls
(one query a second), so it runs beside the rest of the suite; in a file of its own so `--dist loadfile`
gives it a worker of its own."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from test_metrics import scrape, value
from test_schedules_processes import second_api

from conftest import StackFactory
from support import wait_for

pytestmark = pytest.mark.slow

ADD = {"type": "add", "payload": {"a": 1, "b": 2}}
FIRES = 5
MINUTE = timedelta(minutes=1)
# How late after its fire time a task may be created: a tick is 1 s; the rest is a loaded machine.
LATE = timedelta(seconds=20)


@pytest.mark.timeout(FIRES * 60 + 180)
def test_an_every_minute_schedule_fires_once_a_minute_for_five_minutes_across_two_apis(
    stack_factory: StackFactory,
) -> None:
    with stack_factory(workers=0) as stack:
        api1 = stack.api
        assert api1 is not None
        api2, url2 = second_api(stack)
        urls = (stack.url, url2)
        try:
            r = stack.client.post(
                "/api/v1/schedules",
                json={"name": "minutely", "cron": "* * * * *", "task": {**ADD, "queue": "minutely"}},
            )
            assert r.status_code == 201, r.text
            first = datetime.fromisoformat(r.json()["next_run_at"])
            assert first.second == 0 and first.microsecond == 0
            expected = [first + i * MINUTE for i in range(FIRES)]

            def both_alive() -> None:
                # Raised out of wait_for's predicate: checked at every poll, so "alive throughout" is exact
                # to a second.
                for proc in (api1, api2):
                    if not proc.alive():
                        pytest.fail(f"{proc.name} exited during the run:\n{proc.tail()}")

            def created() -> list[datetime]:
                both_alive()
                return [t for (t,) in stack.sql("SELECT created_at FROM task WHERE schedule = 'minutely' ORDER BY 1")]

            for i, fire_at in enumerate(expected, start=1):
                # A poll a second: the wait is the wall clock's, the CPU stays idle.
                wait_for(
                    lambda i=i: len(created()) >= i,
                    timeout=(fire_at - datetime.now(fire_at.tzinfo)).total_seconds() + LATE.total_seconds(),
                    interval=1.0,
                    what=f"the fire at {fire_at:%H:%M}",
                )
                for url in urls:
                    assert stack.client.get(f"{url}/readyz").status_code == 200, url
            both_alive()

            # Exactly one task per fire time: each created within LATE after its minute, none before the first
            # and none extra (the sixth fire time has not come while LATE < a minute).
            tasks = created()
            assert len(tasks) == FIRES, tasks
            for fire_at, at in zip(expected, tasks, strict=True):
                assert fire_at <= at < fire_at + LATE, (fire_at, at)
            fires = stack.sql("SELECT fire_at, outcome FROM schedule_fire WHERE schedule = 'minutely' ORDER BY fire_at")
            assert fires == [(f, "fired") for f in expected], "one fire row per consecutive minute, all fired"
            got = stack.client.get(f"{url2}/api/v1/schedules/minutely").json()
            assert got["fired_total"] == FIRES and got["skipped_total"] == 0 and got["missed_total"] == 0
            # last_run_at is when the last fire was made (not its nominal minute).
            assert expected[-1] <= datetime.fromisoformat(got["last_run_at"]) < expected[-1] + LATE
            assert datetime.fromisoformat(got["next_run_at"]) == expected[-1] + MINUTE
            listed = stack.client.get("/api/v1/tasks", params={"schedule": "minutely"}).json()["items"]
            assert len(listed) == FIRES and len({t["id"] for t in listed}) == FIRES
            # In the schedule's task queue, which nothing serves here (no worker): all five wait there.
            assert {t["queue"] for t in listed} == {"minutely"}
            stats = stack.client.get("/api/v1/stats", params={"queue": "minutely"}).json()
            assert stats["tasks"]["pending"] == stats["tasks"]["total"] == FIRES

            # Each process counts the fires it made itself (no shared metrics directory): together exactly one
            # per fire time, so no fire was made twice and both processes served as the scheduler's candidates.
            # Which of the two took the advisory lock at each minute is the processes' race; it is reported.
            per_process = {
                proc.name: value(
                    scrape(f"{url}/metrics"), "taskproc_schedule_fires_total", schedule="minutely", outcome="fired"
                )
                for proc, url in zip((api1, api2), urls, strict=True)
            }
            assert sum(per_process.values()) == FIRES, per_process
            print(f"fires per API process: {per_process}")
            both_alive()
        finally:
            api2.stop()
