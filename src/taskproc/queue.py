"""The Redis side of a task: arq job records, priority scores, the deferred set and wake-ups.

Postgres is the source of truth; everything here can be rebuilt from it by the reconciler, so every write is
best effort from the caller's point of view and happens after the Postgres transaction commits.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from taskproc.models import MAX_TIMEOUT_S, Priority

QUEUE_KEY = "arq:queue"
DEFERRED_KEY = "taskproc:deferred"
WAKE_CHANNEL = "taskproc:wake"
JOB_FUNCTION = "run_task"
# arq's timeout for the one job function; the task's own timeout is enforced by the worker, this is a backstop.
JOB_TIMEOUT_S = MAX_TIMEOUT_S + 60
# arq marks a job taken with `arq:in-progress:<job id>`, set with this TTL (its job timeout + 10 s) when a worker
# starts it and deleted when the job ends. A worker killed in between leaves the key behind for a day, and every
# other worker skips the job meanwhile; the reconciler uses the TTL left to tell how long ago it was set.
IN_PROGRESS_TTL_MS = int((JOB_TIMEOUT_S + 10) * 1000)

# Every entry of arq:queue must be "due" (score <= now) for arq to take it, and arq takes the lowest score
# first. Subtracting a large band per priority keeps all entries due while ordering high < normal < low,
# FIFO inside a band by enqueue time. 1e13 ms is ~300 years, far more than any clock difference.
BAND = {Priority.high: -2e13, Priority.normal: -1e13, Priority.low: 0.0}
_BAND_EDGES = (-1.5e13, -0.5e13)


def now_ms() -> int:
    return int(time.time() * 1000)


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
    """One task generation to put on the queue: ready now, or deferred until run_at_ms."""

    task_id: uuid.UUID
    generation: int
    priority: Priority
    run_at_ms: int


def _job_record(item: Enqueue, enqueued_ms: int) -> bytes:
    return serialize_job(
        JOB_FUNCTION,
        (),
        {"task_id": str(item.task_id), "generation": item.generation},
        None,
        enqueued_ms,
        serializer=json_serializer,
    )


async def enqueue(redis: Redis, items: Sequence[Enqueue]) -> None:
    """Write arq job records and queue entries for `items` in one MULTI, then wake idle workers."""
    if not items:
        return
    current = now_ms()
    async with redis.pipeline(transaction=True) as pipe:
        for item in items:
            jid = job_id(item.task_id, item.generation)
            # No expiry on the record: Postgres decides when a job is obsolete, not a TTL.
            pipe.set(job_key_prefix + jid, _job_record(item, current))
            if item.run_at_ms <= current:
                pipe.zadd(QUEUE_KEY, {jid: item.run_at_ms + BAND[item.priority]})
            else:
                pipe.zadd(DEFERRED_KEY, {f"{item.priority.value}|{jid}": item.run_at_ms})
        # Also for deferred-only batches: an idle worker must learn the new earliest due time.
        pipe.publish(WAKE_CHANNEL, b"1")
        await pipe.execute()


async def remove_jobs(redis: Redis, jobs: Iterable[tuple[uuid.UUID, int, Priority]]) -> None:
    """Delete obsolete job generations so they neither run nor count as backlog."""
    async with redis.pipeline(transaction=False) as pipe:
        queued = False
        for task_id, generation, _priority in jobs:
            jid = job_id(task_id, generation)
            pipe.zrem(QUEUE_KEY, jid)
            pipe.zrem(DEFERRED_KEY, *(f"{p.value}|{jid}" for p in Priority))
            pipe.delete(job_key_prefix + jid, in_progress_key_prefix + jid, retry_key_prefix + jid)
            queued = True
        if queued:
            await pipe.execute()


async def request_abort(redis: Redis, task_id: uuid.UUID, generation: int) -> None:
    """Ask whichever worker runs this job to cancel it (arq's abort set), and wake it to look now."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(abort_jobs_ss, {job_id(task_id, generation): now_ms()})
        pipe.publish(WAKE_CHANNEL, b"1")
        await pipe.execute()


async def existing_jobs(redis: Redis, job_ids: Sequence[str]) -> list[bool]:
    async with redis.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            pipe.exists(job_key_prefix + jid)
        return [bool(x) for x in await pipe.execute()]


@dataclass(frozen=True)
class JobState:
    """What Redis holds for one job: its record, a queue entry (ready or deferred), and arq's in-progress mark."""

    recorded: bool
    queued: bool
    taken_ms_ago: int | None  # None: no in-progress mark

    def taken_longer_than(self, ms: float) -> bool:
        return self.taken_ms_ago is not None and self.taken_ms_ago > ms


def _taken_ms_ago(pttl: int) -> int | None:
    if pttl == -2:  # no such key
        return None
    if pttl == -1:  # no TTL: not set by arq's worker; treat as long abandoned
        return IN_PROGRESS_TTL_MS
    return max(0, IN_PROGRESS_TTL_MS - pttl)


async def job_states(redis: Redis, jobs: Sequence[tuple[uuid.UUID, int, Priority]]) -> list[JobState]:
    async with redis.pipeline(transaction=False) as pipe:
        for task_id, generation, priority in jobs:
            jid = job_id(task_id, generation)
            pipe.exists(job_key_prefix + jid)
            pipe.zscore(QUEUE_KEY, jid)
            pipe.zscore(DEFERRED_KEY, f"{priority.value}|{jid}")
            pipe.pttl(in_progress_key_prefix + jid)
        raw = await pipe.execute()
    return [
        JobState(
            recorded=bool(raw[i]),
            queued=raw[i + 1] is not None or raw[i + 2] is not None,
            taken_ms_ago=_taken_ms_ago(int(raw[i + 3])),
        )
        for i in range(0, len(raw), 4)
    ]


async def abandoned_at_head(redis: Redis, *, limit: int, older_than_ms: float) -> list[tuple[uuid.UUID, int]]:
    """Jobs among the first `limit` of the ready queue that a worker took over `older_than_ms` ago.

    Workers read the queue from its head and skip jobs marked in progress, so jobs abandoned by killed workers
    pile up there: enough of them would hide every real job from the workers (and they count as backlog).
    """
    members = await redis.zrange(QUEUE_KEY, 0, limit - 1)
    if not members:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.pttl(in_progress_key_prefix + member.decode())
        ttls = await pipe.execute()
    out = []
    for member, pttl in zip(members, ttls, strict=True):
        age = _taken_ms_ago(int(pttl))
        if age is None or age <= older_than_ms:
            continue
        try:
            out.append(parse_job_id(member.decode()))
        except ValueError:
            continue  # not one of ours
    return out


# Moves due members of the deferred set into arq's queue with their priority band, atomically, so two
# workers promoting at once can neither lose nor duplicate an entry. Returns the count moved and the
# next due time (or -1) so the caller can sleep exactly until then.
PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for i = 1, #due, 2 do
  local member = due[i]
  local score = tonumber(due[i + 1])
  local sep = string.find(member, '|', 1, true)
  if sep then
    local prio = string.sub(member, 1, sep - 1)
    local jid = string.sub(member, sep + 1)
    local band = 0
    if prio == 'high' then band = tonumber(ARGV[3]) elseif prio == 'normal' then band = tonumber(ARGV[4]) end
    redis.call('ZADD', KEYS[2], score + band, jid)
  end
  redis.call('ZREM', KEYS[1], member)
  moved = moved + 1
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if #nxt > 0 then next_due = tonumber(nxt[2]) end
if moved > 0 then redis.call('PUBLISH', KEYS[3], '1') end
return {moved, tostring(next_due)}
"""


class Promoter:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(PROMOTE_SCRIPT)

    async def promote(self, limit: int = 1000) -> tuple[int, int | None]:
        """Move due deferred jobs to the queue; return (moved, next due ms or None)."""
        moved, next_due = await self._script(
            keys=[DEFERRED_KEY, QUEUE_KEY, WAKE_CHANNEL],
            args=[now_ms(), limit, BAND[Priority.high], BAND[Priority.normal]],
        )
        nd = float(next_due)
        return int(moved), (None if nd < 0 else int(nd))


async def queue_sizes(redis: Redis) -> tuple[int, int]:
    """ZCARD of the two keys the workers consume, as KEDA reads them."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(QUEUE_KEY)
        pipe.zcard(DEFERRED_KEY)
        ready, deferred = await pipe.execute()
    return int(ready), int(deferred)
