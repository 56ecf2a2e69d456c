"""Fire times of cron schedules (taskproc.cron): aliases, both DST transitions in real zones, the catch-up plan."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from taskproc import cron
from taskproc.models import ScheduleCreate

BERLIN = cron.zone("Europe/Berlin")
NEW_YORK = cron.zone("America/New_York")


def fires(expr: str, tz: cron.ZoneInfo, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = cron.next_fire(expr, tz, t)
        out.append(t)
    return out


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", at(2026, 1, 1, 13)),
        ("@daily", at(2026, 1, 2)),
        ("@weekly", at(2026, 1, 4)),  # Sunday midnight
        ("@monthly", at(2026, 2, 1)),
        ("@yearly", at(2027, 1, 1)),
    ],
)
def test_aliases(alias: str, expected: datetime) -> None:
    assert cron.parse_expression(alias) == alias
    assert cron.next_fire(alias, cron.zone("UTC"), at(2026, 1, 1, 12, 30)) == expected


@pytest.mark.parametrize("bad", ["* * * *", "* * * * * *", "61 * * * *", "@often", "a b c d e"])
def test_bad_expressions_are_refused(bad: str) -> None:
    with pytest.raises(cron.CronError):
        cron.parse_expression(bad)


def test_expressions_are_normalised_and_zones_checked() -> None:
    assert cron.parse_expression("  */5   *  * * 1-5 ") == "*/5 * * * 1-5"
    with pytest.raises(cron.CronError):
        cron.zone("Mars/Olympus_Mons")
    with pytest.raises(cron.CronError):
        cron.zone("../etc/passwd")


def test_a_0230_schedule_runs_once_on_the_spring_forward_day() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    got = fires("30 2 * * *", BERLIN, at(2026, 3, 27, 12), 3)
    assert got == [at(2026, 3, 28, 1, 30), at(2026, 3, 29, 1, 30), at(2026, 3, 30, 0, 30)]
    local = [g.astimezone(BERLIN).strftime("%d %H:%M %Z") for g in got]
    assert local == ["28 02:30 CET", "29 03:30 CEST", "30 02:30 CEST"]


def test_no_schedule_runs_twice_on_the_fall_back_day() -> None:
    # America/New_York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    got = fires("30 1 * * *", NEW_YORK, at(2026, 10, 31, 12), 3)
    assert got == [at(2026, 11, 1, 5, 30), at(2026, 11, 2, 6, 30), at(2026, 11, 3, 6, 30)]
    assert len({g.astimezone(NEW_YORK).date() for g in got}) == 3


def test_hourly_through_both_transitions_never_repeats_an_instant() -> None:
    spring = fires("0 * * * *", BERLIN, at(2026, 3, 28, 23), 4)
    # 02:00 does not exist: it fires at 03:00 CEST, which is also 03:00's own fire time: once.
    assert spring == [at(2026, 3, 29, 0), at(2026, 3, 29, 1), at(2026, 3, 29, 2), at(2026, 3, 29, 3)]
    fall = fires("0 * * * *", BERLIN, at(2026, 10, 24, 23), 4)
    # 02:00 happens twice (CEST, then CET): the first only.
    assert fall == [at(2026, 10, 25, 0), at(2026, 10, 25, 2), at(2026, 10, 25, 3), at(2026, 10, 25, 4)]
    assert all(b > a for a, b in itertools.pairwise(fall))


def test_plan_runs_the_latest_passed_fire_within_the_catch_up_window_once() -> None:
    utc = cron.zone("UTC")
    due = at(2026, 1, 1, 0, 0)
    # Down for 10 minutes and a bit: the fire of 00:10 runs (5 s late), the ten before are missed.
    p = cron.plan("* * * * *", utc, due, at(2026, 1, 1, 0, 10, 5), catchup_s=0)
    assert p.fire_at == at(2026, 1, 1, 0, 10)
    assert (p.missed, p.first_missed, p.last_missed) == (10, due, at(2026, 1, 1, 0, 9))
    assert p.next_run_at == at(2026, 1, 1, 0, 11)


def test_plan_skips_a_fire_older_than_the_window_and_catches_up_one_within_it() -> None:
    utc = cron.zone("UTC")
    due = at(2026, 1, 1, 2)
    now = due + timedelta(hours=1)
    late = cron.plan("0 2 * * *", utc, due, now, catchup_s=600)
    assert late.fire_at is None and late.missed == 1 and late.last_missed == due
    assert late.next_run_at == at(2026, 1, 2, 2)
    caught = cron.plan("0 2 * * *", utc, due, now, catchup_s=7200)
    assert caught.fire_at == due and caught.missed == 0
    on_time = cron.plan("0 2 * * *", utc, due, due + timedelta(seconds=cron.GRACE_S - 1), catchup_s=0)
    assert on_time.fire_at == due
    not_due = cron.plan("0 2 * * *", utc, due, due - timedelta(seconds=1), catchup_s=0)
    assert not_due.fire_at is None and not_due.missed == 0 and not_due.next_run_at == due


def test_schedule_create_validates_cron_zone_name_and_task_body() -> None:
    ok = ScheduleCreate.model_validate({"name": "nightly-1", "cron": "@daily", "task": {"type": "add"}})
    assert ok.timezone == "UTC" and ok.overlap == "allow" and ok.catchup_s == 0
    with pytest.raises(ValidationError) as info:
        ScheduleCreate.model_validate(
            {
                "name": "Bad Name",
                "cron": "* * * * * *",
                "timezone": "Nowhere/City",
                "overlap": "sometimes",
                "catchup_s": -1,
                "task": {"type": "add", "delay_s": 3},
            }
        )
    assert {e["loc"][0] for e in info.value.errors()} == {"name", "cron", "timezone", "overlap", "catchup_s", "task"}
