"""Fire times of cron schedules: pure computation, no I/O (the scheduler and the API's validation use it).

A schedule's fire times are the wall-clock times in its IANA zone that match its cron expression (croniter
parses it: five fields, or one of the ALIASES), each turned into an instant in UTC:

- A wall-clock time that does not exist (the hour skipped when the clocks spring forward) fires once, at the
  instant it names with the offset in force before the change (a 02:30 schedule on that day fires at 03:30).
- A wall-clock time that occurs twice (the hour repeated when the clocks fall back) fires at its first
  occurrence only, so no schedule runs twice; an hourly or minutely schedule skips the repeated hour then.
  A schedule that must fire at a steady interval through the year uses timezone UTC.
- Two wall-clock times that land on the same instant (02:00 in the gap and 03:00) fire once.

`plan` decides what a scheduler does with a schedule that is due: the latest fire time that has passed runs
when it is no later than `catchup_s` (plus GRACE_S, the slack of a scheduler tick) ago; every other passed fire
time is missed and only counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
# How late a fire may be and still count as on time besides the schedule's catchup_s: a tick interval, a slow
# Postgres answer, a leader that just took over.
GRACE_S = 30.0
# A plan looks at this many passed fire times at most; the rest of a long downtime is counted without walking it.
MAX_WALK = 10_000


class CronError(ValueError):
    """An expression or time zone that taskproc does not accept (the message says why)."""


def parse_expression(expr: str) -> str:
    """The expression normalised (single spaces), or CronError: five fields or an alias, as croniter reads them."""
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text not in ALIASES:
            raise CronError(f"unknown alias {text!r}; use one of {', '.join(ALIASES)}")
        return text
    fields = text.split(" ")
    if len(fields) != 5:
        raise CronError(f"a cron expression has 5 fields (minute hour day month weekday), not {len(fields)}")
    if not croniter.is_valid(text):
        raise CronError(f"invalid cron expression {text!r}")
    return text


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or CronError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC") from exc


def _utc(wall: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a repeated wall time is its first occurrence; a skipped one takes the offset before the change.
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_fire(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire time strictly after the instant `after` (timezone-aware), in UTC."""
    wall_after = after.astimezone(tz).replace(tzinfo=None)
    it = croniter(expr, wall_after)
    while True:
        wall = it.get_next(datetime)
        fire = _utc(wall, tz)
        if fire > after:
            return fire


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a due schedule at `now`."""

    fire_at: datetime | None  # the fire time to run now, if any
    missed: int  # passed fire times that will not run (too late, or older than the one that runs)
    first_missed: datetime | None
    last_missed: datetime | None
    next_run_at: datetime  # the first fire time after now


def plan(expr: str, tz: ZoneInfo, due: datetime, now: datetime, catchup_s: float) -> Plan:
    """`due` is the schedule's next_run_at (<= now): the fire times from it up to now, and which one runs."""
    passed: list[datetime] = []
    fire = due
    count = 0
    while fire <= now and count < MAX_WALK:
        passed.append(fire)
        count += 1
        fire = next_fire(expr, tz, fire)
    if fire <= now:
        # A downtime longer than MAX_WALK fires: the ones past the walk are missed too, and uncounted beyond it.
        fire = next_fire(expr, tz, now)
    if not passed:
        return Plan(None, 0, None, None, fire)
    latest = passed[-1]
    on_time = now - latest <= timedelta(seconds=catchup_s + GRACE_S)
    missed = passed[:-1] if on_time else passed
    return Plan(
        fire_at=latest if on_time else None,
        missed=len(missed),
        first_missed=missed[0] if missed else None,
        last_missed=missed[-1] if missed else None,
        next_run_at=fire,
    )
