"""Per-key limits through the SDK (taskproc.client), sync and async, against a real `taskproc api` with workers:
set, read, list and delete a limit, keys with any characters, `concurrency_key` on submit and submit_many, and a
held-back task's `waiting` (concurrency_limited, rate_limited)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from taskproc.client import (
    AsyncTaskprocClient,
    InvalidInputError,
    LimitOrigin,
    LimitPublic,
    NotFoundError,
    Rate,
    TaskCreate,
    TaskprocClient,
    TaskStatus,
)

from support import Stack, wait_for


@pytest.fixture
def client(stack: Stack) -> Iterator[TaskprocClient]:
    with TaskprocClient(stack.url) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_set_get_list_and_delete_a_limit(client: TaskprocClient) -> None:
    key = unique("tenant")
    limit = client.put_limit(key, max_running=3)
    assert isinstance(limit, LimitPublic)
    assert (limit.key, limit.max_running, limit.rate, limit.running) == (key, 3, None, 0)
    assert limit.origin is LimitOrigin.api and limit.tokens is None
    assert limit.updated_at.tzinfo is not None and abs((datetime.now(UTC) - limit.updated_at).total_seconds()) < 60

    # The rate three ways: a Rate, a mapping, a (count, per_s) pair; a PUT replaces the whole limit.
    for rate in (Rate(count=10, per_s=2.5), {"count": 10, "per_s": 2.5}, (10, 2.5)):
        limit = client.put_limit(key, rate=rate)
        assert limit.max_running is None and limit.rate == Rate(count=10, per_s=2.5), rate
        assert limit.tokens is not None and 0 <= limit.tokens <= 10
    both = client.put_limit(key, max_running=2, rate=(5, 1))
    assert both.max_running == 2 and both.rate == Rate(count=5, per_s=1)
    got = client.get_limit(key)
    assert (got.key, got.max_running, got.rate) == (key, 2, Rate(count=5, per_s=1))
    other = unique("other")
    client.put_limit(other, max_running=1)
    listed = [limit.key for limit in client.list_limits()]
    assert {key, other} <= set(listed) and listed == sorted(listed), "by key"

    client.delete_limit(key)
    with pytest.raises(NotFoundError):
        client.get_limit(key)
    with pytest.raises(NotFoundError):
        client.delete_limit(key)
    assert key not in {limit.key for limit in client.list_limits()}

    with pytest.raises(InvalidInputError):
        client.put_limit(other)  # neither max_running nor rate
    with pytest.raises(InvalidInputError):
        client.put_limit(other, max_running=0)
    with pytest.raises(InvalidInputError):
        client.put_limit(other, rate=(1, 0))
    assert client.get_limit(other).max_running == 1, "a refused PUT changed nothing"


@pytest.mark.parametrize(
    "key", ["tenant/42", "..", "a/../b", ".", "with space, ümlaut & 100%", "?x=1#frag", "k" * 200, "%2F"]
)
def test_any_key_of_1_to_200_characters_is_one_key(client: TaskprocClient, key: str) -> None:
    limit = client.put_limit(key, max_running=7)
    assert limit.key == key
    assert client.get_limit(key).key == key
    assert key in {limit.key for limit in client.list_limits()}
    client.delete_limit(key)
    with pytest.raises(NotFoundError):
        client.get_limit(key)


def test_a_key_out_of_range_fails_before_any_request(client: TaskprocClient) -> None:
    for bad in ("", "k" * 201):
        with pytest.raises(ValueError, match="1 to 200 characters"):
            client.put_limit(bad, max_running=1)
        with pytest.raises(ValueError, match="1 to 200 characters"):
            client.get_limit(bad)
    with pytest.raises(InvalidInputError):
        client.submit("add", {"a": 1, "b": 2}, concurrency_key="k" * 201)


def test_a_task_over_its_keys_limit_waits_and_says_why(client: TaskprocClient) -> None:
    key = unique("one-at-a-time")
    client.put_limit(key, max_running=1)
    first = client.submit("sleep", {"duration_ms": 60_000}, concurrency_key=key)
    assert first.concurrency_key == key
    wait_for(lambda: client.get(first.id).status is TaskStatus.running, what="the first task to run")
    second = client.submit("add", {"a": 1, "b": 2}, concurrency_key=key)
    free = client.submit("add", {"a": 1, "b": 2}, concurrency_key=unique("free"))
    assert client.wait(free.id, timeout=30).status is TaskStatus.completed, "another key is not held up"

    held = client.get(second.id)
    assert held.status is TaskStatus.pending and held.concurrency_key == key
    assert held.waiting is not None and held.waiting.reason == "concurrency_limited", held.waiting
    assert (held.waiting.key, held.waiting.running, held.waiting.limit) == (key, 1, 1)
    assert client.get_limit(key).running == 1

    client.cancel(first.id)
    assert client.wait(second.id, timeout=30).status is TaskStatus.completed, "taken once the key has room"
    wait_for(lambda: client.get_limit(key).running == 0, what="the key's running count to fall back to 0")


def test_a_task_over_its_keys_rate_waits_until_a_token(client: TaskprocClient) -> None:
    key = unique("rated")
    client.put_limit(key, rate=(1, 600))
    first = client.submit("add", {"a": 1, "b": 2}, concurrency_key=key)
    assert client.wait(first.id, timeout=30).status is TaskStatus.completed
    second = client.submit("add", {"a": 1, "b": 2}, concurrency_key=key)
    waiting = wait_for(
        lambda: (w := client.get(second.id).waiting) is not None and w.reason == "rate_limited" and w,
        what="the second task to wait for a token",
    )
    assert waiting.key == key and waiting.until is not None
    left = (waiting.until - datetime.now(UTC)).total_seconds()
    assert 500 < left <= 600, left
    limit = client.get_limit(key)
    assert limit.tokens is not None and limit.tokens < 1

    client.delete_limit(key)  # no limit: it runs
    assert client.wait(second.id, timeout=30).status is TaskStatus.completed


async def test_async_limits_and_submit_many_with_a_key(stack: Stack) -> None:
    key, own = unique("async"), unique("own")
    async with AsyncTaskprocClient(stack.url) as aclient:
        limit = await aclient.put_limit(key, max_running=5, rate=Rate(count=100, per_s=1))
        assert limit.key == key and limit.max_running == 5 and limit.rate == Rate(count=100, per_s=1)
        assert (await aclient.get_limit(key)).max_running == 5
        assert key in {limit.key for limit in await aclient.list_limits()}

        one = await aclient.submit("add", {"a": 1, "b": 1}, concurrency_key=key)
        assert one.concurrency_key == key
        batch = await aclient.submit_many(
            [
                TaskCreate(type="add", payload={"a": 1, "b": 2}),
                {"type": "add", "payload": {"a": 3, "b": 4}},
                TaskCreate(type="add", payload={"a": 5, "b": 6}, concurrency_key=own),
            ],
            concurrency_key=key,
        )
        assert [t.concurrency_key for t in batch] == [key, key, own], "an item's own key wins"
        keyless = await aclient.submit_many([{"type": "add", "payload": {"a": 1, "b": 1}}])
        assert [t.concurrency_key for t in keyless] == [None]
        for task in [one, *batch]:
            assert (await aclient.wait(task.id, timeout=30)).status is TaskStatus.completed

        await aclient.delete_limit(key)
        with pytest.raises(NotFoundError):
            await aclient.get_limit(key)
        with pytest.raises(ValueError, match="1 to 200 characters"):
            await aclient.delete_limit("")
