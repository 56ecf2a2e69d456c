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
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

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
# Each queue's own running set (besides RUNNING_KEY, shared by all): what a worker pool's ScaledObject counts.
QUEUE_RUNNING_PREFIX = "taskproc:running:"
# A paused queue's ready jobs live in PAUSED_PREFIX + name instead of its ready set (the queues in PAUSED_KEY), so
# a KEDA trigger on the ready set does not scale workers up for work nobody may start. Postgres holds the pause
# (the claim refuses it); this is its mirror, kept by pause/resume and by sync_paused().
PAUSED_KEY = "taskproc:paused"
PAUSED_PREFIX = "taskproc:paused:"
# Per-key limits (migration 0008). Postgres enforces them in the claim (a trigger); Redis keeps jobs of a key
# with no room out of the ready sets, so they neither spin through claims nor block other keys behind them:
# - JOBKEY_KEY: job id -> concurrency key, for keyed jobs only (unkeyed work pays nothing);
# - LIMITS_KEY: key -> "max_running|rate_count|rate_per_s" (mirror of task_key, see sync_limits());
# - TOKENS_KEY: key -> "tokens|ms" (the rate's token bucket as of that Redis time);
# - KEY_RUNNING_PREFIX + key: the key's jobs taken and not yet released;
# - HELD_PREFIX + key: the key's ready jobs waiting for room, member "queue|job id", scored as in the ready set;
# - HELD_KEYS_KEY: keys with held jobs, scored by when to look at their room again (a release makes it now).
JOBKEY_KEY = "taskproc:jobkey"
LIMITS_KEY = "taskproc:limits"
TOKENS_KEY = "taskproc:tokens"
KEY_RUNNING_PREFIX = "taskproc:key-running:"
HELD_PREFIX = "taskproc:held:"
HELD_KEYS_KEY = "taskproc:held-keys"
# Most jobs of saturated keys one tick moves out of the ready sets (a few ms of Redis time); the worker ticks
# again at once while it parks any, so a backlog of one key clears out of the way in a few rounds.
PARK_BUDGET = 2000
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


def paused_key(queue: str) -> str:
    """Where a paused queue's ready jobs wait for the resume."""
    return f"{PAUSED_PREFIX}{queue}"


def queue_running_key(queue: str) -> str:
    return f"{QUEUE_RUNNING_PREFIX}{queue}"


async def ready_position(redis: Redis, queue: str, task_id: uuid.UUID, generation: int) -> int | None:
    """The job's rank in its queue's ready set (workers take the lowest scores first); None if it is not there."""
    jid = job_id(task_id, generation)
    rank = await redis.zrank(ready_key(queue), jid)
    if rank is None:
        rank = await redis.zrank(paused_key(queue), jid)
    return None if rank is None else int(rank)


def deferred_key(queue: str) -> str:
    """The sorted set of a queue's jobs waiting out a delay or backoff."""
    return DEFERRED_KEY if queue == DEFAULT_QUEUE else f"{DEFERRED_KEY}:{queue}"


# The same naming inside the scripts (a function of the queue name, for the queues a script finds itself).
# live_key(q) is where a job of q that becomes ready goes: its ready set, or its paused set while q is paused.
_LUA_KEYS = f"""
local function ready_key(q)
  if q == '{DEFAULT_QUEUE}' then return '{QUEUE_KEY}' end return '{NAMED_READY_PREFIX}' .. q
end
local function deferred_key(q)
  if q == '{DEFAULT_QUEUE}' then return '{DEFERRED_KEY}' end return '{DEFERRED_KEY}:' .. q
end
local function live_key(q)
  if redis.call('SISMEMBER', '{PAUSED_KEY}', q) == 1 then return '{PAUSED_PREFIX}' .. q end
  return ready_key(q)
end
"""


def now_ms() -> int:
    """This process's wall clock: for logs and tests only; queue decisions use Redis's clock (TIME)."""
    return int(time.time() * 1000)


# Redis's clock in ms, for the scripts below (TIME is allowed before writes: scripts replicate by effects).
_LUA_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# Per-key limits inside the scripts (after _LUA_NOW and _LUA_KEYS). admit(k) takes a slot's token for a job of k
# about to be taken and returns 0, or returns how many ms to wait before k may have room; room(k) is how many
# jobs of k may start now (and that wait); hold(k, ...) parks a ready job of k; unpark(k) moves as many of k's
# held jobs as it has room for back to their queues; forget(jid) is for a job leaving Redis or the running set.
_LUA_LIMITS = f"""
local function limit_of(k)
  local raw = redis.call('HGET', '{LIMITS_KEY}', k)
  if not raw then return nil, nil, nil end
  local m, c, p = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)$')
  return tonumber(m), tonumber(c), tonumber(p)
end
local function tokens_of(k, count, per)
  local tokens, at = count, now
  local raw = redis.call('HGET', '{TOKENS_KEY}', k)
  if raw then
    local tk, a = string.match(raw, '^([^|]*)|([^|]*)$')
    tokens, at = tonumber(tk), tonumber(a)
  end
  return math.min(count, tokens + math.max(0, now - at) / 1000 * count / per)
end
local function token_wait(tokens, count, per)
  return math.max(1, math.ceil((1 - (tokens - math.floor(tokens))) * per / count * 1000))
end
local function admit(k)
  local m, c, p = limit_of(k)
  if m and redis.call('ZCARD', '{KEY_RUNNING_PREFIX}' .. k) >= m then return 1000 end
  if c then
    local tokens = tokens_of(k, c, p)
    if tokens < 1 then return token_wait(tokens, c, p) end
    redis.call('HSET', '{TOKENS_KEY}', k, tostring(tokens - 1) .. '|' .. now)
  end
  return 0
end
local function room(k)
  local m, c, p = limit_of(k)
  local n, wait = {PARK_BUDGET}, 1000
  if m then n = math.min(n, m - redis.call('ZCARD', '{KEY_RUNNING_PREFIX}' .. k)) end
  if c then
    local tokens = tokens_of(k, c, p)
    n = math.min(n, math.floor(tokens))
    wait = math.min(wait, token_wait(tokens, c, p))
  end
  return n, wait
end
local function hold(k, score, member, wait)
  redis.call('ZADD', '{HELD_PREFIX}' .. k, score, member)
  redis.call('ZADD', '{HELD_KEYS_KEY}', 'LT', now + wait, k)
end
local function unpark(k)
  local hk = '{HELD_PREFIX}' .. k
  local n, wait = room(k)
  if n > 0 then
    local jobs = redis.call('ZRANGE', hk, 0, n - 1, 'WITHSCORES')
    for i = 1, #jobs, 2 do
      local member = jobs[i]
      local sep = string.find(member, '|', 1, true)
      redis.call('ZADD', live_key(string.sub(member, 1, sep - 1)), tonumber(jobs[i + 1]), string.sub(member, sep + 1))
      redis.call('ZREM', hk, member)
    end
  end
  if redis.call('EXISTS', hk) == 1 then
    redis.call('ZADD', '{HELD_KEYS_KEY}', now + wait, k)
  else
    redis.call('ZREM', '{HELD_KEYS_KEY}', k)
  end
  return n > 0
end
-- Whether any job has a key, asked once per script call: a release of a batch without keys then costs no
-- HGET per job.
local jobkeys_present = nil
local function stop_running(jid, q, forget)
  redis.call('ZREM', '{RUNNING_KEY}', jid)
  if q ~= '' then
    redis.call('ZREM', '{QUEUE_RUNNING_PREFIX}' .. q, jid)
  else
    redis.call('ZREM', '{QUEUE_RUNNING_PREFIX}{DEFAULT_QUEUE}', jid)
    for _, name in ipairs(redis.call('SMEMBERS', '{QUEUES_KEY}')) do
      redis.call('ZREM', '{QUEUE_RUNNING_PREFIX}' .. name, jid)
    end
  end
  if jobkeys_present == nil then jobkeys_present = redis.call('EXISTS', '{JOBKEY_KEY}') == 1 end
  local k = jobkeys_present and redis.call('HGET', '{JOBKEY_KEY}', jid)
  if k then
    redis.call('ZREM', '{KEY_RUNNING_PREFIX}' .. k, jid)
    if forget then
      redis.call('HDEL', '{JOBKEY_KEY}', jid)
      if q ~= '' then redis.call('ZREM', '{HELD_PREFIX}' .. k, q .. '|' .. jid) end
    end
    if redis.call('EXISTS', '{HELD_PREFIX}' .. k) == 1 then redis.call('ZADD', '{HELD_KEYS_KEY}', now, k) end
  end
  return k
end
"""


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
    key: str | None = None  # the task's concurrency key


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
    @property
    def concurrency_key(self) -> str | None: ...


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
        key=row.concurrency_key,
    )


def _deferred_member(priority: Priority, jid: str) -> str:
    return f"{priority.value}|{jid}"


# KEYS: the queue's deferred set, the wake channel, QUEUES_KEY. ARGV: high band, normal band, the queue's name
# ('' for the default queue), then (job id, priority, delay ms, concurrency key or '') per job.
# Ready jobs are scored by when they became due on Redis's clock (now + delay, delay <= 0) plus their band and go
# to the queue's live set (its paused set while it is paused); deferred ones are scored by when they fall due.
# A ready job of a key that already has held jobs joins them, behind them: FIFO within the key, and the ready set
# only ever holds jobs that may start.
ENQUEUE_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + f"""
local ready = {{}}
local deferred = {{}}
local name = ARGV[3]
if name ~= '' then redis.call('SADD', KEYS[3], name) else name = '{DEFAULT_QUEUE}' end
for i = 4, #ARGV, 4 do
  local jid = ARGV[i]
  local prio = ARGV[i + 1]
  local delay = tonumber(ARGV[i + 2])
  local k = ARGV[i + 3]
  if k ~= '' then redis.call('HSET', '{JOBKEY_KEY}', jid, k) end
  if delay <= 0 then
    local band = 0
    if prio == 'high' then band = tonumber(ARGV[1]) elseif prio == 'normal' then band = tonumber(ARGV[2]) end
    if k ~= '' and redis.call('EXISTS', '{HELD_PREFIX}' .. k) == 1 then
      hold(k, now + delay + band, name .. '|' .. jid, 1000)
    else
      ready[#ready + 1] = now + delay + band
      ready[#ready + 1] = jid
    end
  else
    deferred[#deferred + 1] = now + delay
    deferred[#deferred + 1] = prio .. '|' .. jid
  end
end
if #ready > 0 then redis.call('ZADD', live_key(name), unpack(ready)) end
if #deferred > 0 then redis.call('ZADD', KEYS[1], unpack(deferred)) end
redis.call('PUBLISH', KEYS[2], '1')
return #ready
"""
)
# Enqueue scripts send a few thousand jobs per call at most: unpack() has a limit of about 8000 values.
_ENQUEUE_CHUNK = 1500


_ENQUEUE_SCRIPTS: weakref.WeakKeyDictionary[Redis, AsyncScript] = weakref.WeakKeyDictionary()


def _enqueue_script(redis: Redis) -> AsyncScript:
    # Once per client: register_script hashes the script's text (a few KB) every time, on every submit.
    script = _ENQUEUE_SCRIPTS.get(redis)
    if script is None:
        script = _ENQUEUE_SCRIPTS[redis] = redis.register_script(ENQUEUE_SCRIPT)
    return script


async def enqueue(redis: Redis, items: Sequence[Enqueue]) -> None:
    """Add queue entries for `items` (one script call per chunk), then wake idle workers.

    Also for deferred-only batches: an idle worker must learn the new earliest due time.
    """
    script = _enqueue_script(redis)
    by_queue: dict[str, list[Enqueue]] = {}
    for item in items:
        by_queue.setdefault(item.queue, []).append(item)
    for name, queued in by_queue.items():
        keys = [deferred_key(name), WAKE_CHANNEL, QUEUES_KEY]
        for start in range(0, len(queued), _ENQUEUE_CHUNK):
            args: list[Any] = [BAND[Priority.high], BAND[Priority.normal], "" if name == DEFAULT_QUEUE else name]
            for item in queued[start : start + _ENQUEUE_CHUNK]:
                args += [job_id(item.task_id, item.generation), item.priority.value, int(item.delay_ms), item.key or ""]
            await script(keys=keys, args=args)


# ARGV: (job id, queue) per job. Wherever the job is (ready, paused, deferred, held, running), it is deleted, and
# its key (if any) is looked at again for room.
REMOVE_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + f"""
for i = 1, #ARGV, 2 do
  local jid, q = ARGV[i], ARGV[i + 1]
  redis.call('ZREM', ready_key(q), jid)
  redis.call('ZREM', '{PAUSED_PREFIX}' .. q, jid)
  redis.call('ZREM', deferred_key(q), 'high|' .. jid, 'normal|' .. jid, 'low|' .. jid)
  stop_running(jid, q, true)
end
return 0
"""
)

# ARGV: (job id, queue or '' if unknown) per job whose outcome is written: off the running sets, its key freed.
RELEASE_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + f"""
local freed = false
for i = 1, #ARGV, 2 do
  if stop_running(ARGV[i], ARGV[i + 1], true) then freed = true end
end
if freed then redis.call('PUBLISH', '{WAKE_CHANNEL}', '1') end
return 0
"""
)


async def remove_jobs(redis: Redis, jobs: Iterable[tuple[uuid.UUID, int, Priority, str]]) -> None:
    """Delete obsolete job generations (task id, generation, priority, queue) so they neither run nor count as
    backlog."""
    args: list[str] = []
    for task_id, generation, _, name in jobs:
        args += [job_id(task_id, generation), name]
    for start in range(0, len(args), 2 * _ENQUEUE_CHUNK):
        await redis.register_script(REMOVE_SCRIPT)(args=args[start : start + 2 * _ENQUEUE_CHUNK])


async def release(redis: Redis, jids: Sequence[str], queues: Sequence[str] | None = None) -> None:
    """Jobs whose outcome is written (`queues`: the queue of each, if known): off the running sets; their keys,
    if any, are looked at again for room."""
    if not jids:
        return
    names = list(queues) if queues is not None else [""] * len(jids)
    args: list[str] = []
    for jid, name in zip(jids, names, strict=True):
        args += [jid, name]
    for start in range(0, len(args), 2 * _ENQUEUE_CHUNK):
        await redis.register_script(RELEASE_SCRIPT)(args=args[start : start + 2 * _ENQUEUE_CHUNK])


# KEYS: the queue's deferred set, the running set, QUEUES_KEY; ARGV: delay, the queue's name ('' for default),
# the members. The name is recorded again: after a Redis flush only this job may know of its queue.
DEFER_AGAIN_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + f"""
local q = ARGV[2]
if q ~= '' then redis.call('SADD', KEYS[3], q) else q = '{DEFAULT_QUEUE}' end
for i = 3, #ARGV do
  local member = ARGV[i]
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
  stop_running(string.sub(member, string.find(member, '|', 1, true) + 1), q, false)
end
return 0
"""
)

# Jobs whose claim the limit of their key refused (Postgres had no room, though Redis thought it had: after a
# Redis flush, say): held for their key, looked at again after ARGV[1] ms or when one of the key's jobs ends.
# ARGV: wait ms, then (job id, queue, key, score) per job.
PARK_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + f"""
local wait = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local jid, q, k = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('HSET', '{JOBKEY_KEY}', jid, k)
  stop_running(jid, q, false)
  hold(k, tonumber(ARGV[i + 3]), q .. '|' .. jid, wait)
end
return 0
"""
)


async def park(redis: Redis, jobs: Sequence[tuple[str, str, str, float]], *, wait_ms: int = 1000) -> None:
    """Hold taken jobs (job id, queue, concurrency key, queue score) whose claim their key's limit refused."""
    if not jobs:
        return
    args: list[Any] = [wait_ms]
    for jid, name, key, score in jobs:
        args += [jid, name, key, score]
    await redis.register_script(PARK_SCRIPT)(args=args)


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


# The mirrors of Postgres state (the pause, the limits) are written twice: at once by the API after its commit,
# and every few seconds by a sync from a fresh read of Postgres. A sync's read can predate a commit whose direct
# write then lands first; so a sync leaves alone what was written directly within MIRROR_FRESH_MS (far longer
# than a read-to-write gap), and the next sync, reading later, corrects whatever needs it.
MIRROR_FRESH_MS = 10_000
MIRROR_STAMPS_KEY = "taskproc:mirror-stamps"  # "pause:<queue>" / "limit:<key>" -> Redis ms of the direct write

_LUA_PAUSE = f"""
local function pause(q)
  if redis.call('SADD', '{PAUSED_KEY}', q) == 1 then
    redis.call('ZUNIONSTORE', '{PAUSED_PREFIX}' .. q, 2, '{PAUSED_PREFIX}' .. q, ready_key(q))
    redis.call('DEL', ready_key(q))
    return 1
  end
  return 0
end
local function resume(q)
  local was = redis.call('SREM', '{PAUSED_KEY}', q)
  redis.call('ZUNIONSTORE', ready_key(q), 2, ready_key(q), '{PAUSED_PREFIX}' .. q)
  redis.call('DEL', '{PAUSED_PREFIX}' .. q)
  return was
end
local function fresh(what)
  local at = redis.call('HGET', '{MIRROR_STAMPS_KEY}', what)
  return at and now - tonumber(at) < {MIRROR_FRESH_MS}
end
"""

# ARGV: the names of every paused queue (Postgres's view, read just before). Queues paused here and not there are
# resumed (their paused set merged back into the ready set, workers woken); queues paused there and not here
# have their ready set moved aside; a queue paused or resumed directly a moment ago is left as it is. Returns
# how many queues changed.
SYNC_PAUSED_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_PAUSE
    + f"""
local want = {{}}
for _, q in ipairs(ARGV) do want[q] = true end
local changed = 0
for _, q in ipairs(redis.call('SMEMBERS', '{PAUSED_KEY}')) do
  if not want[q] and not fresh('pause:' .. q) then changed = changed + resume(q) end
end
for q, _ in pairs(want) do
  if not fresh('pause:' .. q) then changed = changed + pause(q) end
end
if changed > 0 then redis.call('PUBLISH', '{WAKE_CHANNEL}', '1') end
return changed
"""
)

# ARGV[1]: 'pause' or 'resume', ARGV[2]: the queue.
SET_PAUSED_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_PAUSE
    + f"""
local q = ARGV[2]
redis.call('HSET', '{MIRROR_STAMPS_KEY}', 'pause:' .. q, now)
if ARGV[1] == 'pause' then
  pause(q)
else
  resume(q)
  redis.call('PUBLISH', '{WAKE_CHANNEL}', '1')
end
return 0
"""
)


async def set_paused(redis: Redis, name: str, *, paused: bool) -> None:
    """Mirror a pause or resume that Postgres committed: a paused queue's ready jobs move out of its ready set (so
    KEDA does not scale up for them) and come back, workers woken, on the resume."""
    await redis.register_script(SET_PAUSED_SCRIPT)(args=["pause" if paused else "resume", name])


async def sync_paused(redis: Redis, names: Sequence[str]) -> int:
    """Make Redis's mirror of the pause equal Postgres's list of paused queues, read just before (after a flush,
    a lost update); what was paused or resumed directly a moment ago is left to the next sync."""
    return int(await redis.register_script(SYNC_PAUSED_SCRIPT)(args=list(names)))


class _LimitFields(Protocol):
    @property
    def max_running(self) -> int | None: ...
    @property
    def rate_count(self) -> int | None: ...
    @property
    def rate_per_s(self) -> float | None: ...


@dataclass(frozen=True)
class KeyLimit:
    """A key's limit as the scripts read it (mirrored from Postgres's task_key)."""

    max_running: int | None
    rate_count: int | None
    rate_per_s: float | None

    @classmethod
    def of(cls, row: _LimitFields) -> KeyLimit:
        """The mirror of a limit as Postgres keeps it (a task_key row, or a type's default)."""
        return cls(row.max_running, row.rate_count, row.rate_per_s)

    def encoded(self) -> str:
        return "|".join("" if v is None else repr(v) for v in (self.max_running, self.rate_count, self.rate_per_s))


# ARGV[1]: 'sync' (the keys that follow are every limit there is, as Postgres was just read: others are dropped,
# and what was written directly a moment ago is left alone) or 'direct' (written after a commit); then (key,
# encoded limit or '' to drop it) pairs. Keys whose limit changed are looked at again for room at once.
SYNC_LIMITS_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_PAUSE
    + f"""
local sync = ARGV[1] == 'sync'
local given = {{}}
local function changed(k)
  redis.call('HDEL', '{TOKENS_KEY}', k)
  if redis.call('EXISTS', '{HELD_PREFIX}' .. k) == 1 then redis.call('ZADD', '{HELD_KEYS_KEY}', now, k) end
end
for i = 2, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  given[k] = true
  if not (sync and fresh('limit:' .. k)) then
    if not sync then redis.call('HSET', '{MIRROR_STAMPS_KEY}', 'limit:' .. k, now) end
    local old = redis.call('HGET', '{LIMITS_KEY}', k)
    if v == '' then
      if old then
        redis.call('HDEL', '{LIMITS_KEY}', k)
        changed(k)
      end
    elseif old ~= v then
      redis.call('HSET', '{LIMITS_KEY}', k, v)
      changed(k)
    end
  end
end
if sync then
  for _, k in ipairs(redis.call('HKEYS', '{LIMITS_KEY}')) do
    if not given[k] and not fresh('limit:' .. k) then
      redis.call('HDEL', '{LIMITS_KEY}', k)
      changed(k)
    end
  end
  -- Stamps older than the freshness window protect nothing any more.
  for _, what in ipairs(redis.call('HKEYS', '{MIRROR_STAMPS_KEY}')) do
    if not fresh(what) then redis.call('HDEL', '{MIRROR_STAMPS_KEY}', what) end
  end
end
redis.call('PUBLISH', '{WAKE_CHANNEL}', '1')
return 0
"""
)


async def set_limits(redis: Redis, limits: Mapping[str, KeyLimit | None], *, complete: bool = False) -> None:
    """Mirror keys' limits (None: the key has none any more) after a commit; `complete`: a sync, these are all
    the limits there are, as Postgres was just read. A changed limit starts with a full bucket here too (as in
    Postgres, which stays the judge)."""
    args: list[str] = ["sync" if complete else "direct"]
    for key, limit in limits.items():
        args += [key, "" if limit is None else limit.encoded()]
    await redis.register_script(SYNC_LIMITS_SCRIPT)(args=args)


async def held_count(redis: Redis, key: str) -> int:
    """Ready jobs of `key` held for room."""
    return int(await redis.zcard(f"{HELD_PREFIX}{key}"))


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
            pipe.zscore(paused_key(name), jid)
            pipe.hget(JOBKEY_KEY, jid)
            pipe.zscore(RUNNING_KEY, jid)
        raw = await pipe.execute()
        # A keyed job may be held for its key's room.
        held: list[bool] = []
        for i, (_, _, _, name) in enumerate(jobs):
            key = raw[5 * i + 3]
            if key is not None and all(raw[5 * i + j] is None for j in range(3)):
                pipe.zscore(f"{HELD_PREFIX}{key.decode()}", f"{name}|{job_id(jobs[i][0], jobs[i][1])}")
        held_raw = iter(await pipe.execute())
        for i in range(len(jobs)):
            key = raw[5 * i + 3]
            held.append(
                key is not None and all(raw[5 * i + j] is None for j in range(3)) and next(held_raw) is not None
            )
    return [
        JobState(
            queued=any(raw[5 * i + j] is not None for j in range(3)) or held[i],
            taken_ms_ago=None if raw[5 * i + 4] is None else max(0, current - int(raw[5 * i + 4])),
        )
        for i in range(len(jobs))
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
    """Jobs taken by a worker that never claimed them: off the running set, back into the queue (in that order:
    the release forgets the job's key, the enqueue records it again)."""
    if items:
        await release(redis, [job_id(i.task_id, i.generation) for i in items], [i.queue for i in items])
        await enqueue(redis, items)


# promote(q) moves due members of q's deferred set into its live set (ready, or paused) with their priority band
# (ARGV[1] at most, ARGV[2] and ARGV[3] the high and normal bands) and returns how many; a job of a key that has
# held jobs joins those instead. `now` is Redis's clock. Shared by the tick and by promote_due().
_PROMOTE_LUA = f"""
local keyed = redis.call('EXISTS', '{JOBKEY_KEY}') == 1
local function promote(q)
local dkey = deferred_key(q)
local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
if #due == 0 then return 0 end
local rkey = live_key(q)
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
    local k = keyed and redis.call('HGET', '{JOBKEY_KEY}', jid)
    if k and redis.call('EXISTS', '{HELD_PREFIX}' .. k) == 1 then
      hold(k, score + band, q .. '|' .. jid, 1000)
    else
      redis.call('ZADD', rkey, score + band, jid)
    end
  end
  redis.call('ZREM', dkey, member)
  moved = moved + 1
end
return moved
end
"""

# Due deferred jobs into their queues, without taking any: what API processes run while workers may be at zero,
# so a delayed task that falls due shows up in its ready set, where KEDA looks. Every queue: the default one and
# those in KEYS[2] (QUEUES_KEY). Held jobs of keys whose room is due to be looked at move back too. Atomic, so
# any number of processes may run it at once. Returns how many moved.
PROMOTE_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
    + _PROMOTE_LUA
    + f"""
local moved = promote('{DEFAULT_QUEUE}')
for _, q in ipairs(redis.call('SMEMBERS', KEYS[2])) do moved = moved + promote(q) end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', '{HELD_KEYS_KEY}', '-inf', now, 'LIMIT', 0, 100)) do
  if unpark(k) then moved = moved + 1 end
end
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
#    names after the paused ones), move due members of its deferred set into its ready set with their band, and
#    move back the held jobs of keys whose room is due to be looked at (a job of theirs ended, or a token came);
# 2. take up to ARGV[4] jobs into the running sets, lowest score (highest priority, then longest due) first across
#    the worker's queues that are not paused (ARGV[7] names follow, the pause as the worker last read it from
#    Postgres): so priority and FIFO hold within a queue, and across queues the oldest due work goes first. A
#    job of a key without room (admit) is held for its key instead and the next candidates are looked at, up to
#    PARK_BUDGET held per call: a saturated key never blocks the jobs of other keys behind it;
# 3. read the abort requests (dropping those older than ARGV[5] ms).
# Times are Redis's (TIME). Returns {promoted, ms until the next deferred job is due or -1, {job, score, queue,
# key or '', ...}, {aborted job, ...}, held}: a span, so the caller never compares a Redis time with its own clock.
# The keys of queues a script finds in QUEUES_KEY are not passed in KEYS: fine on a single Redis (what taskproc
# runs on), not on Redis Cluster.
TICK_SCRIPT = (
    _LUA_NOW
    + _LUA_KEYS
    + _LUA_LIMITS
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
for _, q in ipairs(names) do moved = moved + promote(q) end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', '{HELD_KEYS_KEY}', '-inf', now, 'LIMIT', 0, 100)) do
  if unpark(k) then moved = moved + 1 end
end
keyed = redis.call('EXISTS', '{JOBKEY_KEY}') == 1
local taken = {{}}
local want = tonumber(ARGV[4])
local held = 0
while want > 0 and held < {PARK_BUDGET} do
  local candidates = {{}}
  for _, q in ipairs(names) do
    if not paused[q] then
      local head = redis.call('ZRANGE', ready_key(q), 0, want - 1, 'WITHSCORES')
      for i = 1, #head, 2 do candidates[#candidates + 1] = {{head[i], tonumber(head[i + 1]), q, head[i + 1]}} end
    end
  end
  if #candidates == 0 then break end
  table.sort(candidates, function(a, b) return a[2] < b[2] end)
  local running = {{}}
  local held_now = 0
  for i = 1, math.min(want, #candidates) do
    local c = candidates[i]
    redis.call('ZREM', ready_key(c[3]), c[1])
    local k = keyed and redis.call('HGET', '{JOBKEY_KEY}', c[1])
    local wait = 0
    if k then wait = admit(k) end
    if wait > 0 then
      hold(k, c[2], c[3] .. '|' .. c[1], wait)
      held_now = held_now + 1
    else
      running[#running + 1] = now
      running[#running + 1] = c[1]
      redis.call('ZADD', '{QUEUE_RUNNING_PREFIX}' .. c[3], now, c[1])
      if k then redis.call('ZADD', '{KEY_RUNNING_PREFIX}' .. k, now, c[1]) end
      taken[#taken + 1] = c[1]
      taken[#taken + 1] = c[4]
      taken[#taken + 1] = c[3]
      taken[#taken + 1] = k or ''
    end
  end
  if #running > 0 then redis.call('ZADD', KEYS[1], unpack(running)) end
  want = want - math.floor(#running / 2)
  held = held + held_now
  if held_now == 0 then break end
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
local nxt = redis.call('ZRANGE', '{HELD_KEYS_KEY}', 0, 0, 'WITHSCORES')
if #nxt > 0 then
  local d = math.max(0, tonumber(nxt[2]) - now)
  if next_in < 0 or d < next_in then next_in = d end
end
if moved > 0 then redis.call('PUBLISH', KEYS[3], '1') end
return {{moved, tostring(next_in), taken, aborts, held}}
"""
)


@dataclass(frozen=True)
class Tick:
    promoted: int
    next_due_in_ms: int | None  # how long until the next deferred job falls due
    taken: list[tuple[str, float]]  # (job id, queue score)
    aborts: list[str]
    queue_of: dict[str, str] = field(default_factory=dict)  # job id -> its queue, for the jobs taken
    held: int = 0  # jobs of keys without room moved out of the ready sets by this tick
    keyed: bool = False  # some job taken has a concurrency key


class Ticker:
    """The worker's one round trip per loop iteration (TICK_SCRIPT), over its queues (None: every queue)."""

    def __init__(self, redis: Redis, queues: Sequence[str] | None = None) -> None:
        self._script = redis.register_script(TICK_SCRIPT)
        self.queues = None if queues is None else list(queues)

    async def tick(self, take: int, *, promote_limit: int = 1000, paused: Sequence[str] = ()) -> Tick:
        """Promote and take (up to `take`) from this worker's queues, none from the `paused` ones."""
        args: list[Any] = [promote_limit, BAND[Priority.high], BAND[Priority.normal], take, ABORT_MAX_AGE_MS]
        args += ["all" if self.queues is None else "list", len(paused), *paused, *(self.queues or ())]
        moved, next_in, taken, aborts, held = await self._script(
            keys=[RUNNING_KEY, ABORT_KEY, WAKE_CHANNEL, QUEUES_KEY], args=args
        )
        nd = float(next_in)
        return Tick(
            promoted=int(moved),
            next_due_in_ms=None if nd < 0 else int(nd),
            taken=[(taken[i].decode(), float(taken[i + 1])) for i in range(0, len(taken), 4)],
            aborts=[a.decode() for a in aborts],
            queue_of={taken[i].decode(): taken[i + 2].decode() for i in range(0, len(taken), 4)},
            keyed=any(taken[i + 3] for i in range(0, len(taken), 4)),
            held=int(held),
        )


async def queue_names(redis: Redis) -> list[str]:
    """The default queue and every other one that ever had a job enqueued, by name."""
    return sorted({DEFAULT_QUEUE, *(n.decode() for n in await redis.smembers(QUEUES_KEY))})  # type: ignore[misc]


async def ready_by_priority(redis: Redis, queue: str = DEFAULT_QUEUE) -> dict[Priority, int]:
    """Entries of a queue's ready set per priority: ZCOUNT over each band, O(log n) whatever the backlog."""
    low_edge, high_edge = _BAND_EDGES
    async with redis.pipeline(transaction=False) as pipe:
        for key in (ready_key(queue), paused_key(queue)):
            pipe.zcount(key, "-inf", f"({low_edge}")
            pipe.zcount(key, low_edge, f"({high_edge}")
            pipe.zcount(key, high_edge, "+inf")
        raw = [int(n) for n in await pipe.execute()]
    return {Priority.high: raw[0] + raw[3], Priority.normal: raw[1] + raw[4], Priority.low: raw[2] + raw[5]}


@dataclass(frozen=True)
class QueueSizes:
    """ZCARD of one queue's ready (or, paused, its paused set) and deferred sets."""

    ready: int
    deferred: int


async def sizes_by_queue(redis: Redis) -> dict[str, QueueSizes]:
    """Ready and deferred jobs of every queue (queue_names); a paused queue's ready jobs count as ready."""
    names = await queue_names(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(ready_key(name))
            pipe.zcard(paused_key(name))
            pipe.zcard(deferred_key(name))
        raw = [int(n) for n in await pipe.execute()]
    return {name: QueueSizes(raw[3 * i] + raw[3 * i + 1], raw[3 * i + 2]) for i, name in enumerate(names)}


HELD_TOTAL_SCRIPT = f"""
local n = 0
for _, k in ipairs(redis.call('ZRANGE', '{HELD_KEYS_KEY}', 0, -1)) do
  n = n + redis.call('ZCARD', '{HELD_PREFIX}' .. k)
end
return n
"""


async def held_totals(redis: Redis) -> tuple[int, int]:
    """Jobs held for their keys' room over all keys, and how many keys have some."""
    jobs = int(await redis.register_script(HELD_TOTAL_SCRIPT)())
    return jobs, int(await redis.zcard(HELD_KEYS_KEY))


async def queue_sizes(redis: Redis) -> tuple[int, int, int]:
    """Ready jobs (held ones of keys without room included) and deferred ones summed over every queue, and the
    running set (shared by all queues)."""
    sizes = await sizes_by_queue(redis)
    running = await redis.zcard(RUNNING_KEY)
    held, _ = await held_totals(redis)
    return sum(s.ready for s in sizes.values()) + held, sum(s.deferred for s in sizes.values()), int(running)
