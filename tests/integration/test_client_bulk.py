"""Bulk actions through the SDK, blocking and asyncio, against a real API and worker: a dry run's count, a
retry of every failed task of a type followed to its end, set_priority, and the audit list."""

from __future__ import annotations

import pytest

from taskproc.client import AsyncTaskprocClient, BulkCount, BulkPublic, NotFoundError, TaskprocClient

from conftest import StackFactory
from inprocess import wait_until
from support import wait_for


def test_bulk_retry_dry_run_status_and_list(stack_factory: StackFactory) -> None:
    with stack_factory(workers=1) as stack, TaskprocClient(stack.url) as client:
        failing = [client.submit("sleep", {"duration_ms": 0, "fail_rate": 1}, max_retries=0) for _ in range(3)]
        other = client.submit("add", {"a": 1, "b": 2})
        for t in failing:
            stack.wait_status(str(t.id), "failed")
        stack.wait_status(str(other.id), "completed")

        count = client.bulk("retry", {"status": "failed", "type": "sleep"}, dry_run=True)
        assert isinstance(count, BulkCount) and count.total == 3 and count.dry_run
        assert client.bulk("retry", {"status": "failed", "type": "add"}, dry_run=True).total == 0
        assert all(client.get(t.id).attempts == 1 for t in failing), "a dry run changes nothing"

        op = client.bulk("retry", {"status": "failed", "type": "sleep"})
        assert isinstance(op, BulkPublic) and op.action.value == "retry" and op.total == 3
        final = wait_for(lambda: (o := client.bulk_status(op.id)).status.value != "running" and o, what="the bulk")
        assert final.status.value == "completed" and final.done == 3 and final.failed == 0
        # Retried: each ran again (and failed again: fail_rate 1), with a second attempt recorded.
        for t in failing:
            wait_for(lambda t=t: client.get(t.id).status.value == "failed" and len(client.history(t.id)) > 3)
        assert client.get(other.id).status.value == "completed", "outside the filter"
        assert client.list_bulk(limit=5)[0].id == op.id
        with pytest.raises(NotFoundError):
            client.bulk_status("00000000-0000-0000-0000-000000000000")


async def test_async_bulk_set_priority(stack_factory: StackFactory) -> None:
    with stack_factory(workers=0) as stack:
        async with AsyncTaskprocClient(stack.url) as client:
            low = [await client.submit("add", {"a": i, "b": 1}, priority="low") for i in range(4)]
            await client.submit("add", {"a": 0, "b": 0}, priority="normal")
            count = await client.bulk("set_priority", {"priority": "low"}, priority="high", dry_run=True)
            assert isinstance(count, BulkCount) and count.total == 4
            op = await client.bulk("set_priority", {"priority": "low"}, priority="high")
            assert isinstance(op, BulkPublic) and op.priority is not None and op.priority.value == "high"

            async def ended() -> BulkPublic | None:
                o = await client.bulk_status(op.id)
                return o if o.status.value != "running" else None

            final = await wait_until(ended, what="the bulk operation to end")
            assert final.status.value == "completed" and final.done == 4
            assert {(await client.get(t.id)).priority.value for t in low} == {"high"}
            assert (await client.list_bulk())[0].id == op.id
