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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis

from taskproc.models import DEFAULT_QUEUE, Priority

# arq's default queue and abort set (arq.constants); tests/unit/test_arq_fence.py checks that they still are.
QUEUE_KEY = "arq:queue"
DEFERRED_KEY = "taskproc:deferred"
# Jobs a worker has taken off the queue, scored by when: a job stays here while its task is claimed, runs and
# has its outcome written, so queue + deferred + running is the whole backlog (KEDA scales on all three).
RUNNING_KEY = "taskproc:running"
ABORT_KEY = "arq:abort"
# Named queues (migration 0007): the default queue keeps the keys above, so workers older than named queues
# and the KEDA triggers that read them go on working; queue `q` has `taskproc:queue:q` and
# `taskproc:deferred:q` (not `arq:queue:q`: arq keeps its health check at `arq:queue:health-check`).
# QUEUES_KEY holds the names of the other queues that ever had a job enqueued (the enqueue script adds them),
# which is what a worker without a list of queues and the API's promotion go through.
QUEUES_KEY = "taskproc:queues"
NAMED_READY_PREFIX = "taskproc:queue:"
WAKE_CHANNEL = "taskproc:wake"
JOB_FUNCTION = "run_task"
# An abort request nobody acted on within this long is dropped (the task finished or was never ours).
ABORT_MAX_AGE_MS = 60_000

# Every entry of arq:queue is due (future ones wait in the deferred set) and the lowest score goes first.
# Subtracting a large band per priority orders high < normal < low, FIFO inside a band by due time (on Redis's
# clock). 1e13 ms is ~300 years, far more than any wait.
BAND = {Priority.high: -2e13, Priority.normal: -1e13, Priority.low: 0.0}
_BAND_EDGES = (-1.5e13, -0.5e13)


def ready_key(queue: str) -> str:
    """The sorted set of a queue's ready jobs (the one workers take from and KEDA counts)."""
    return QUEUE_KEY if queue == DEFAULT_QUEUE else f"{NAMED_READY_PREFIX}{queue}"


async def ready_position(redis: Redis, queue: str, task_id: uuid.UUID, generation: int) -> int | None:
    """The job's rank in its queue's ready set (workers take the lowest scores first); None if it is not there."""
    rank = await redis.zrank(ready_key(queue), job_id(task_id, generation))
    return None if rank is None else int(rank)


def deferred_key(queue: str) -> str:
    """The sorted set of a queue's jobs waiting out a delay or backoff."""
    return DEFERRED_KEY if queue == DEFAULT_QUEUE else f"{DEFERRED_KEY}:{queue}"


# The same naming inside the scripts (a function of the queue name, for the queues a script finds itself).
_LUA_KEYS = f"""
local function ready_key(q)
  if q == '{DEFAULT_QUEUE}' then return '{QUEUE_KEY}' end return '{NAMED_READY_PREFIX}' .. q
end
local function deferred_key(q)
  if q == '{DEFAULT_QUEUE}' then return '{DEFERRED_KEY}' end return '{DEFERRED_KEY}:' .. q
end
"""


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
    queue: str = DEFAULT_QUEUE


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
    @property
    def queue(self) -> str: ...


def entry(row: Queueable, now: datetime) -> Enqueue:
    """The queue entry of a task row, its delay computed on Postgres's clock alone: `now` is Postgres's now()
    when the row was read, or the row's `updated_at`, which every statement that writes a row to enqueue
    (insert, transitions) sets to now() itself."""
    return Enqueue(
        task_id=row.id,
        generation=row.generation,
        priority=row.priority,
        delay_ms=int((row.run_at - now).total_seconds() * 1000),
        queue=row.queue,
    )


def _deferred_member(priority: Priority, jid: str) -> str:
    return f"{priority.value}|{jid}"


# KEYS: the queue's ready set, its deferred set, the wake channel, QUEUES_KEY. ARGV: high band, normal band, the
# queue's name to record in QUEUES_KEY ('' for the default queue), then (job id, priority, delay ms) per job.
# Ready jobs are scored by when they became due on Redis's clock (now + delay, delay <= 0) plus their band;
# deferred ones by when they fall due.
ENQUEUE_SCRIPT = (
    _LUA_NOW
    + """
local ready = {}
local deferred = {}
if ARGV[3] ~= '' then redis.call('SADD', KEYS[4], ARGV[3]) end
for i = 4, #ARGV, 3 do
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
    by_queue: dict[str, list[Enqueue]] = {}
    for item in items:
        by_queue.setdefault(item.queue, []).append(item)
    for name, queued in by_queue.items():
        keys = [ready_key(name), deferred_key(name), WAKE_CHANNEL, QUEUES_KEY]
        for start in range(0, len(queued), _ENQUEUE_CHUNK):
            args: list[Any] = [BAND[Priority.high], BAND[Priority.normal], "" if name == DEFAULT_QUEUE else name]
            for item in queued[start : start + _ENQUEUE_CHUNK]:
                args += [job_id(item.task_id, item.generation), item.priority.value, int(item.delay_ms)]
            await script(keys=keys, args=args)


async def remove_jobs(redis: Redis, jobs: Iterable[tuple[uuid.UUID, int, Priority, str]]) -> None:
    """Delete obsolete job generations (task id, generation, priority, queue) so they neither run nor count as
    backlog."""
    by_queue: dict[str, list[str]] = {}
    for task_id, generation, _, name in jobs:
        by_queue.setdefault(name, []).append(job_id(task_id, generation))
    if not by_queue:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for name, jids in by_queue.items():
            pipe.zrem(ready_key(name), *jids)
            pipe.zrem(deferred_key(name), *(_deferred_member(p, jid) for jid in jids for p in Priority))
            pipe.zrem(RUNNING_KEY, *jids)
        await pipe.execute()


async def release(redis: Redis, jids: Sequence[str]) -> None:
    """Jobs whose outcome is written: off the running set."""
    if jids:
        await redis.zrem(RUNNING_KEY, *jids)


# KEYS: the queue's deferred set, the running set, QUEUES_KEY; ARGV: delay, the queue's name ('' for default),
# the members. The name is recorded again: after a Redis flush only this job may know of its queue.
DEFER_AGAIN_SCRIPT = (
    _LUA_NOW
    + """
if ARGV[2] ~= '' then redis.call('SADD', KEYS[3], ARGV[2]) end
for i = 3, #ARGV do
  local member = ARGV[i]
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
  redis.call('ZREM', KEYS[2], string.sub(member, string.find(member, '|', 1, true) + 1))
end
return 0
"""
)


async def defer_again(
    redis: Redis, jobs: Sequence[tuple[str, Priority]], delay_ms: int, *, queue: str = DEFAULT_QUEUE
) -> None:
    """Put taken jobs (job id, priority) of `queue` back into its deferred set, due in `delay_ms` (their claim
    could not be made, or was refused for now)."""
    if not jobs:
        return
    script = redis.register_script(DEFER_AGAIN_SCRIPT)
    name = "" if queue == DEFAULT_QUEUE else queue
    members = [_deferred_member(prio, jid) for jid, prio in jobs]
    await script(keys=[deferred_key(queue), RUNNING_KEY, QUEUES_KEY], args=[delay_ms, name, *members])


async def defer_again_by_queue(redis: Redis, jobs: Sequence[tuple[str, Priority, str]], delay_ms: int) -> None:
    """defer_again() for jobs (job id, priority, queue) of several queues."""
    by_queue: dict[str, list[tuple[str, Priority]]] = {}
    for jid, prio, name in jobs:
        by_queue.setdefault(name, []).append((jid, prio))
    for name, queued in by_queue.items():
        await defer_again(redis, queued, delay_ms, queue=name)


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


async def job_states(redis: Redis, jobs: Sequence[tuple[uuid.UUID, int, Priority, str]]) -> list[JobState]:
    """Where Redis holds each job (task id, generation, priority, queue)."""
    current = await redis_now_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for task_id, generation, priority, name in jobs:
            jid = job_id(task_id, generation)
            pipe.zscore(ready_key(name), jid)
            pipe.zscore(deferred_key(name), _deferred_member(priority, jid))
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


# promote(deferred key, ready key) moves due members of a deferred set into its queue with their priority band
# (ARGV[1] at most, ARGV[2] and ARGV[3] the high and normal bands) and returns how many; `now` is Redis's clock.
# Shared by the tick and by promote_due().
_PROMOTE_LUA = """
local function promote(dkey, rkey)
local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
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
    redis.call('ZADD', rkey, score + band, jid)
  end
  redis.call('ZREM', dkey, member)
  moved = moved + 1
end
return moved
end
"""

# Due deferred jobs into their queues, without taking any: what API processes run while workers may be at zero,
# so a delayed task that falls due shows up in its ready set, where KEDA looks. Every queue: the default one and
# those in KEYS[2] (QUEUES_KEY). Atomic, so any number of processes may run it at once. Returns how many moved.
PROMOTE_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _PROMOTE_LUA
    + f"""
local moved = promote(deferred_key('{DEFAULT_QUEUE}'), ready_key('{DEFAULT_QUEUE}'))
for _, q in ipairs(redis.call('SMEMBERS', KEYS[2])) do moved = moved + promote(deferred_key(q), ready_key(q)) end
if moved > 0 then redis.call('PUBLISH', KEYS[1], '1') end
return moved
"""
)


async def promote_due(redis: Redis, *, limit: int = 1000) -> int:
    script = redis.register_script(PROMOTE_SCRIPT)
    moved = await script(keys=[WAKE_CHANNEL, QUEUES_KEY], args=[limit, BAND[Priority.high], BAND[Priority.normal]])
    return int(moved)


# One call per worker loop iteration, atomic, so two workers can neither lose nor share a job:
# 1. for each of the worker's queues (ARGV[6] = 'all': the default one and every queue in QUEUES_KEY; else the
#    names after the paused ones), move due members of its deferred set into its ready set with their band;
# 2. take up to ARGV[4] jobs into the running set, lowest score (highest priority, then longest due) first across
#    the worker's queues that are not paused (ARGV[7] names follow, the pause as the worker last read it from
#    Postgres): so priority and FIFO hold within a queue, and across queues the oldest due work goes first;
# 3. read the abort requests (dropping those older than ARGV[5] ms).
# Times are Redis's (TIME). Returns {promoted, ms until the next deferred job is due or -1, {job, score, queue,
# ...}, {aborted job, ...}}: a span, so the caller never compares a Redis time with its own clock.
# The keys of queues a script finds in QUEUES_KEY are not passed in KEYS: fine on a single Redis (what taskproc
# runs on), not on Redis Cluster.
TICK_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _PROMOTE_LUA
    + f"""
local npaused = tonumber(ARGV[7])
local paused = {{}}
for i = 8, 7 + npaused do paused[ARGV[i]] = true end
local names = {{}}
if ARGV[6] == 'all' then
  names[1] = '{DEFAULT_QUEUE}'
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[4])) do names[#names + 1] = q end
else
  for i = 8 + npaused, #ARGV do names[#names + 1] = ARGV[i] end
end
local moved = 0
for _, q in ipairs(names) do moved = moved + promote(deferred_key(q), ready_key(q)) end
local taken = {{}}
local want = tonumber(ARGV[4])
if want > 0 then
  local candidates = {{}}
  for _, q in ipairs(names) do
    if not paused[q] then
      local head = redis.call('ZRANGE', ready_key(q), 0, want - 1, 'WITHSCORES')
      for i = 1, #head, 2 do candidates[#candidates + 1] = {{head[i], tonumber(head[i + 1]), q, head[i + 1]}} end
    end
  end
  table.sort(candidates, function(a, b) return a[2] < b[2] end)
  local running = {{}}
  for i = 1, math.min(want, #candidates) do
    local c = candidates[i]
    redis.call('ZREM', ready_key(c[3]), c[1])
    running[#running + 1] = now
    running[#running + 1] = c[1]
    taken[#taken + 1] = c[1]
    taken[#taken + 1] = c[4]
    taken[#taken + 1] = c[3]
  end
  if #running > 0 then redis.call('ZADD', KEYS[1], unpack(running)) end
end
local aborts = {{}}
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
  aborts = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local next_in = -1
for _, q in ipairs(names) do
  local nxt = redis.call('ZRANGE', deferred_key(q), 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    local d = math.max(0, tonumber(nxt[2]) - now)
    if next_in < 0 or d < next_in then next_in = d end
  end
end
if moved > 0 then redis.call('PUBLISH', KEYS[3], '1') end
return {{moved, tostring(next_in), taken, aborts}}
"""
)


@dataclass(frozen=True)
class Tick:
    promoted: int
    next_due_in_ms: int | None  # how long until the next deferred job falls due
    taken: list[tuple[str, float]]  # (job id, queue score)
    aborts: list[str]
    queue_of: dict[str, str] = field(default_factory=dict)  # job id -> its queue, for the jobs taken


class Ticker:
    """The worker's one round trip per loop iteration (TICK_SCRIPT), over its queues (None: every queue)."""

    def __init__(self, redis: Redis, queues: Sequence[str] | None = None) -> None:
        self._script = redis.register_script(TICK_SCRIPT)
        self.queues = None if queues is None else list(queues)

    async def tick(self, take: int, *, promote_limit: int = 1000, paused: Sequence[str] = ()) -> Tick:
        """Promote and take (up to `take`) from this worker's queues, none from the `paused` ones."""
        args: list[Any] = [promote_limit, BAND[Priority.high], BAND[Priority.normal], take, ABORT_MAX_AGE_MS]
        args += ["all" if self.queues is None else "list", len(paused), *paused, *(self.queues or ())]
        moved, next_in, taken, aborts = await self._script(
            keys=[RUNNING_KEY, ABORT_KEY, WAKE_CHANNEL, QUEUES_KEY], args=args
        )
        nd = float(next_in)
        return Tick(
            promoted=int(moved),
            next_due_in_ms=None if nd < 0 else int(nd),
            taken=[(taken[i].decode(), float(taken[i + 1])) for i in range(0, len(taken), 3)],
            aborts=[a.decode() for a in aborts],
            queue_of={taken[i].decode(): taken[i + 2].decode() for i in range(0, len(taken), 3)},
        )


async def queue_names(redis: Redis) -> list[str]:
    """The default queue and every other one that ever had a job enqueued, by name."""
    return sorted({DEFAULT_QUEUE, *(n.decode() for n in await redis.smembers(QUEUES_KEY))})  # type: ignore[misc]


async def ready_by_priority(redis: Redis, queue: str = DEFAULT_QUEUE) -> dict[Priority, int]:
    """Entries of a queue's ready set per priority: ZCOUNT over each band, O(log n) whatever the backlog."""
    low_edge, high_edge = _BAND_EDGES
    key = ready_key(queue)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(key, "-inf", f"({low_edge}")
        pipe.zcount(key, low_edge, f"({high_edge}")
        pipe.zcount(key, high_edge, "+inf")
        high, normal, low = await pipe.execute()
    return {Priority.high: int(high), Priority.normal: int(normal), Priority.low: int(low)}


@dataclass(frozen=True)
class QueueSizes:
    """ZCARD of one queue's ready and deferred sets."""

    ready: int
    deferred: int


async def sizes_by_queue(redis: Redis) -> dict[str, QueueSizes]:
    """Ready and deferred jobs of every queue (queue_names)."""
    names = await queue_names(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(ready_key(name))
            pipe.zcard(deferred_key(name))
        raw = await pipe.execute()
    return {name: QueueSizes(int(raw[2 * i]), int(raw[2 * i + 1])) for i, name in enumerate(names)}


async def queue_sizes(redis: Redis) -> tuple[int, int, int]:
    """Ready and deferred jobs summed over every queue, and the running set (shared by all queues)."""
    sizes = await sizes_by_queue(redis)
    running = await redis.zcard(RUNNING_KEY)
    return sum(s.ready for s in sizes.values()), sum(s.deferred for s in sizes.values()), int(running)
