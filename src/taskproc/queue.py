"""The Redis side of a task: queue entries ordered by priority, the deferred set, the running set and wake-ups.

Postgres is the source of truth; everything here can be rebuilt from it by the reconciler, so every write is
best effort from the caller's point of view and happens after the Postgres transaction commits.

A job is the member `<task id>.<generation>` and nothing else: there is no per-job record to read or lock, so
taking jobs is one script call for a whole batch (see TICK_SCRIPT) and a worker's claim in Postgres, a
compare-and-set, is what makes a job run once.

Clocks: no process compares its own wall clock with another's. Due times are kept on Redis's clock (every script
reads `TIME`), and what goes in is a delay that Postgres computed against its own clock (`run_at - now()`), so a
pod whose clock is off by an hour neither delays nor hurries anyone's task.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis

from taskproc.models import Priority

# arq's default queue and abort set (arq.constants); tests/unit/test_arq_fence.py checks that they still are.
QUEUE_KEY = "arq:queue"
DEFERRED_KEY = "taskproc:deferred"
# Jobs a worker has taken off the queue, scored by when: a job stays here while its task is claimed, runs and
# has its outcome written, so queue + deferred + running is the whole backlog (KEDA scales on all three).
RUNNING_KEY = "taskproc:running"
ABORT_KEY = "arq:abort"
WAKE_CHANNEL = "taskproc:wake"
JOB_FUNCTION = "run_task"
# An abort request nobody acted on within this long is dropped (the task finished or was never ours).
ABORT_MAX_AGE_MS = 60_000

# Every entry of arq:queue is due (future ones wait in the deferred set) and the lowest score goes first.
# Subtracting a large band per priority orders high < normal < low, FIFO inside a band by due time (on Redis's
# clock). 1e13 ms is ~300 years, far more than any wait.
BAND = {Priority.high: -2e13, Priority.normal: -1e13, Priority.low: 0.0}
_BAND_EDGES = (-1.5e13, -0.5e13)


def now_ms() -> int:
    """This process's wall clock: for logs and tests only; queue decisions use Redis's clock (TIME)."""
    return int(time.time() * 1000)


# Redis's clock in ms, for the scripts below (TIME is allowed before writes: scripts replicate by effects).
_LUA_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"


def job_id(task_id: uuid.UUID | str, generation: int) -> str:
    return f"{task_id}.{generation}"


def parse_job_id(value: str) -> tuple[uuid.UUID, int]:
    task_part, _, gen_part = value.rpartition(".")
    return uuid.UUID(task_part), int(gen_part)


def priority_of_score(score: float) -> Priority:
    if score < _BAND_EDGES[0]:
        return Priority.high
    if score < _BAND_EDGES[1]:
        return Priority.normal
    return Priority.low


def json_serializer(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def json_deserializer(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("job record is not an object")
    return value


@dataclass(frozen=True)
class Enqueue:
    """One task generation to put on the queue: ready when delay_ms <= 0, else deferred for delay_ms.

    delay_ms is `run_at - now()` as Postgres computed it: a span, not a time, so it means the same on any clock.
    """

    task_id: uuid.UUID
    generation: int
    priority: Priority
    delay_ms: int


class Queueable(Protocol):
    """A task row that can be put on the queue (store.TaskRow, store.WaitingJob, store.JobState)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def generation(self) -> int: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def run_at(self) -> datetime: ...


def entry(row: Queueable, now: datetime) -> Enqueue:
    """The queue entry of a task row, its delay computed on Postgres's clock alone: `now` is Postgres's now()
    when the row was read, or the row's `updated_at`, which every statement that writes a row to enqueue
    (insert, transitions) sets to now() itself."""
    return Enqueue(
        task_id=row.id,
        generation=row.generation,
        priority=row.priority,
        delay_ms=int((row.run_at - now).total_seconds() * 1000),
    )


def _deferred_member(priority: Priority, jid: str) -> str:
    return f"{priority.value}|{jid}"


# ARGV: high band, normal band, then (job id, priority, delay ms) per job. Ready jobs are scored by when they
# became due on Redis's clock (now + delay, delay <= 0) plus their band; deferred ones by when they fall due.
ENQUEUE_SCRIPT = (
    _LUA_NOW
    + """
local ready = {}
local deferred = {}
for i = 3, #ARGV, 3 do
  local jid = ARGV[i]
  local prio = ARGV[i + 1]
  local delay = tonumber(ARGV[i + 2])
  if delay <= 0 then
    local band = 0
    if prio == 'high' then band = tonumber(ARGV[1]) elseif prio == 'normal' then band = tonumber(ARGV[2]) end
    ready[#ready + 1] = now + delay + band
    ready[#ready + 1] = jid
  else
    deferred[#deferred + 1] = now + delay
    deferred[#deferred + 1] = prio .. '|' .. jid
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[1], unpack(ready)) end
if #deferred > 0 then redis.call('ZADD', KEYS[2], unpack(deferred)) end
redis.call('PUBLISH', KEYS[3], '1')
return #ready
"""
)
# Enqueue scripts send a few thousand jobs per call at most: unpack() has a limit of about 8000 values.
_ENQUEUE_CHUNK = 2000


async def enqueue(redis: Redis, items: Sequence[Enqueue]) -> None:
    """Add queue entries for `items` (one script call per chunk), then wake idle workers.

    Also for deferred-only batches: an idle worker must learn the new earliest due time.
    """
    script = redis.register_script(ENQUEUE_SCRIPT)
    for start in range(0, len(items), _ENQUEUE_CHUNK):
        args: list[Any] = [BAND[Priority.high], BAND[Priority.normal]]
        for item in items[start : start + _ENQUEUE_CHUNK]:
            args += [job_id(item.task_id, item.generation), item.priority.value, int(item.delay_ms)]
        await script(keys=[QUEUE_KEY, DEFERRED_KEY, WAKE_CHANNEL], args=args)


async def remove_jobs(redis: Redis, jobs: Iterable[tuple[uuid.UUID, int, Priority]]) -> None:
    """Delete obsolete job generations so they neither run nor count as backlog."""
    jids = [job_id(task_id, generation) for task_id, generation, _ in jobs]
    if not jids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(QUEUE_KEY, *jids)
        pipe.zrem(DEFERRED_KEY, *(_deferred_member(p, jid) for jid in jids for p in Priority))
        pipe.zrem(RUNNING_KEY, *jids)
        await pipe.execute()


async def release(redis: Redis, jids: Sequence[str]) -> None:
    """Jobs whose outcome is written: off the running set."""
    if jids:
        await redis.zrem(RUNNING_KEY, *jids)


DEFER_AGAIN_SCRIPT = (
    _LUA_NOW
    + """
for i = 2, #ARGV do
  local member = ARGV[i]
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
  redis.call('ZREM', KEYS[2], string.sub(member, string.find(member, '|', 1, true) + 1))
end
return 0
"""
)


async def defer_again(redis: Redis, jobs: Sequence[tuple[str, Priority]], delay_ms: int) -> None:
    """Put taken jobs back, due in `delay_ms` (their claim could not be made: Postgres is unreachable)."""
    if not jobs:
        return
    script = redis.register_script(DEFER_AGAIN_SCRIPT)
    await script(
        keys=[DEFERRED_KEY, RUNNING_KEY], args=[delay_ms, *(_deferred_member(prio, jid) for jid, prio in jobs)]
    )


async def wake(redis: Redis) -> None:
    """Wake idle workers (a queue was resumed: its jobs may be taken now)."""
    await redis.publish(WAKE_CHANNEL, "1")


ABORT_SCRIPT = _LUA_NOW + "redis.call('ZADD', KEYS[1], now, ARGV[1])\nredis.call('PUBLISH', KEYS[2], '1')\nreturn 0\n"


async def request_abort(redis: Redis, task_id: uuid.UUID, generation: int) -> None:
    """Ask whichever worker runs this job to cancel it (arq's abort set), and wake it to look now."""
    script = redis.register_script(ABORT_SCRIPT)
    await script(keys=[ABORT_KEY, WAKE_CHANNEL], args=[job_id(task_id, generation)])


async def redis_now_ms(redis: Redis) -> int:
    """Redis's clock, the one the due times and the running set's scores are on."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def forget_aborts(redis: Redis, jids: Sequence[str]) -> None:
    if jids:
        await redis.zrem(ABORT_KEY, *jids)


@dataclass(frozen=True)
class JobState:
    """Where Redis holds one job: in the queue (ready or deferred), or taken by a worker (and how long ago)."""

    queued: bool
    taken_ms_ago: int | None  # None: not in the running set


async def job_states(redis: Redis, jobs: Sequence[tuple[uuid.UUID, int, Priority]]) -> list[JobState]:
    current = await redis_now_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for task_id, generation, priority in jobs:
            jid = job_id(task_id, generation)
            pipe.zscore(QUEUE_KEY, jid)
            pipe.zscore(DEFERRED_KEY, _deferred_member(priority, jid))
            pipe.zscore(RUNNING_KEY, jid)
        raw = await pipe.execute()
    return [
        JobState(
            queued=raw[i] is not None or raw[i + 1] is not None,
            taken_ms_ago=None if raw[i + 2] is None else max(0, current - int(raw[i + 2])),
        )
        for i in range(0, len(raw), 3)
    ]


async def taken_before(
    redis: Redis, *, older_than_ms: float, start: int = 0, limit: int = 1000
) -> list[tuple[uuid.UUID, int]]:
    """Jobs taken by a worker more than `older_than_ms` ago and still in the running set, oldest first."""
    before = await redis_now_ms(redis) - older_than_ms
    members = await redis.zrangebyscore(RUNNING_KEY, "-inf", before, start=start, num=limit)
    out = []
    for member in members:
        try:
            out.append(parse_job_id(member.decode()))
        except ValueError:
            await redis.zrem(RUNNING_KEY, member)  # not one of ours
    return out


async def requeue_taken(redis: Redis, items: Sequence[Enqueue]) -> None:
    """Jobs taken by a worker that never claimed them: back into the queue, off the running set."""
    if items:
        await enqueue(redis, items)
        await release(redis, [job_id(i.task_id, i.generation) for i in items])


# Moves due members of the deferred set into the queue with their priority band (ARGV[1] at most, ARGV[2] and
# ARGV[3] the high and normal bands); `now` is Redis's clock. Shared by the tick and by promote_due().
_PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for i = 1, #due, 2 do
  local member = due[i]
  local score = tonumber(due[i + 1])
  local sep = string.find(member, '|', 1, true)
  if sep then
    local prio = string.sub(member, 1, sep - 1)
    local jid = string.sub(member, sep + 1)
    local band = 0
    if prio == 'high' then band = tonumber(ARGV[2]) elseif prio == 'normal' then band = tonumber(ARGV[3]) end
    redis.call('ZADD', KEYS[2], score + band, jid)
  end
  redis.call('ZREM', KEYS[1], member)
  moved = moved + 1
end
"""

# Due deferred jobs into the queue, without taking any: what API processes run while workers may be at zero, so
# a delayed task that falls due shows up in arq:queue, where KEDA looks. Atomic, so any number of processes may
# run it at once. Returns how many moved.
PROMOTE_SCRIPT = (
    _LUA_NOW
    + _PROMOTE_LUA
    + """
if moved > 0 then redis.call('PUBLISH', KEYS[3], '1') end
return moved
"""
)


async def promote_due(redis: Redis, *, limit: int = 1000) -> int:
    script = redis.register_script(PROMOTE_SCRIPT)
    moved = await script(
        keys=[DEFERRED_KEY, QUEUE_KEY, WAKE_CHANNEL], args=[limit, BAND[Priority.high], BAND[Priority.normal]]
    )
    return int(moved)


# One call per worker loop iteration, atomic, so two workers can neither lose nor share a job:
# 1. move due members of the deferred set into the queue with their priority band;
# 2. take up to ARGV[4] jobs, lowest score (highest priority, oldest) first, into the running set (every queue
#    entry is due: only the deferred set holds future ones);
# 3. read the abort requests (dropping those older than ARGV[5] ms).
# Times are Redis's (TIME). Returns {promoted, ms until the next deferred job is due or -1, {job, score, ...},
# {aborted job, ...}}: a span, so the caller never compares a Redis time with its own clock.
TICK_SCRIPT = (
    _LUA_NOW
    + _PROMOTE_LUA
    + """
local taken = {}
local want = tonumber(ARGV[4])
if want > 0 then
  taken = redis.call('ZRANGE', KEYS[2], 0, want - 1, 'WITHSCORES')
  if #taken > 0 then
    local members = {}
    local running = {}
    for i = 1, #taken, 2 do
      members[#members + 1] = taken[i]
      running[#running + 1] = now
      running[#running + 1] = taken[i]
    end
    redis.call('ZREM', KEYS[2], unpack(members))
    redis.call('ZADD', KEYS[3], unpack(running))
  end
end
local aborts = {}
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
  aborts = redis.call('ZRANGE', KEYS[4], 0, -1)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_in = -1
if #nxt > 0 then next_in = math.max(0, tonumber(nxt[2]) - now) end
if moved > 0 then redis.call('PUBLISH', KEYS[5], '1') end
return {moved, tostring(next_in), taken, aborts}
"""
)


@dataclass(frozen=True)
class Tick:
    promoted: int
    next_due_in_ms: int | None  # how long until the next deferred job falls due
    taken: list[tuple[str, float]]  # (job id, queue score)
    aborts: list[str]


class Ticker:
    """The worker's one round trip per loop iteration (TICK_SCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(TICK_SCRIPT)

    async def tick(self, take: int, *, promote_limit: int = 1000) -> Tick:
        moved, next_in, taken, aborts = await self._script(
            keys=[DEFERRED_KEY, QUEUE_KEY, RUNNING_KEY, ABORT_KEY, WAKE_CHANNEL],
            args=[promote_limit, BAND[Priority.high], BAND[Priority.normal], take, ABORT_MAX_AGE_MS],
        )
        nd = float(next_in)
        return Tick(
            promoted=int(moved),
            next_due_in_ms=None if nd < 0 else int(nd),
            taken=[(taken[i].decode(), float(taken[i + 1])) for i in range(0, len(taken), 2)],
            aborts=[a.decode() for a in aborts],
        )


async def ready_by_priority(redis: Redis) -> dict[Priority, int]:
    """Entries of the ready queue per priority: ZCOUNT over each band, O(log n) whatever the backlog."""
    low_edge, high_edge = _BAND_EDGES
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(QUEUE_KEY, "-inf", f"({low_edge}")
        pipe.zcount(QUEUE_KEY, low_edge, f"({high_edge}")
        pipe.zcount(QUEUE_KEY, high_edge, "+inf")
        high, normal, low = await pipe.execute()
    return {Priority.high: int(high), Priority.normal: int(normal), Priority.low: int(low)}


async def queue_sizes(redis: Redis) -> tuple[int, int, int]:
    """ZCARD of the ready queue, the deferred set and the running set, as KEDA reads them."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(QUEUE_KEY)
        pipe.zcard(DEFERRED_KEY)
        pipe.zcard(RUNNING_KEY)
        ready, deferred, running = await pipe.execute()
    return int(ready), int(deferred), int(running)
