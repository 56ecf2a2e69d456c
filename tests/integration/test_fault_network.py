"""Network faults between workers and the servers, with a real worker in its own network namespace.

The worker reaches Postgres and Redis only through a veth pair (`support.NetNamespace`) and a relay on the host end
(`support.Relay`), so the link can be cut while the process keeps running (a partitioned node), or made slow and
lossy. Needs root (ip netns); CI runs as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import StackFactory
from support import TASKPROC, NetNamespace, Proc, Relay, Stack, wait_for

pytestmark = pytest.mark.slow

LEASE_S = 3.0


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    if os.geteuid() != 0:
        pytest.fail("network fault tests need root (ip netns); CI runs as root")
    ns = NetNamespace("p")
    try:
        yield ns
    finally:
        ns.remove()


def via(url: str, host: str, port: int) -> str:
    """`url` with its host:port replaced (credentials, path and db index kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


class Link:
    """Relays on the namespace's host address to the stack's Postgres and Redis, and a worker behind them."""

    def __init__(self, stack: Stack, ns: NetNamespace, *, delay_s: float = 0.0) -> None:
        pg, rd = urlsplit(stack.database_url), urlsplit(stack.redis_url)
        assert pg.port is not None and rd.port is not None
        self.pg = Relay(ns.host_ip, ("127.0.0.1", pg.port), delay_s=delay_s)
        self.redis = Relay(ns.host_ip, ("127.0.0.1", rd.port), delay_s=delay_s)
        self.stack = stack
        self.ns = ns
        self.env = {
            **stack.env,
            "TASKPROC_DATABASE_URL": via(stack.database_url, ns.host_ip, self.pg.port),
            "TASKPROC_REDIS_URL": via(stack.redis_url, ns.host_ip, self.redis.port),
        }

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, self.ns.wrap([TASKPROC, "worker"]), {**self.env, **(env or {})}, self.stack.workdir)
        self.stack.workers.append(proc.start())  # stopped by the stack's close()
        return proc

    def close(self) -> None:
        self.pg.close()
        self.redis.close()


PROBE = """
import sys, time
import psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    times = []
    for _ in range(9):
        started = time.monotonic()
        conn.execute("SELECT 1")
        times.append(time.monotonic() - started)
print(sorted(times)[4])
"""


def median_round_trip_s(link: Link) -> float:
    """Median `SELECT 1` round trip from inside the namespace, over the same path as the workers."""
    argv = link.ns.wrap([sys.executable, "-c", PROBE, link.env["TASKPROC_DATABASE_URL"]])
    return float(subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout)


def statuses(events: list[dict[str, Any]]) -> list[str]:
    return [e["status"] for e in events]


def test_a_partitioned_worker_task_is_rerun_elsewhere_and_its_late_result_refused(
    stack_factory: StackFactory, netns: NetNamespace
) -> None:
    """A worker cut off from Postgres and Redis (link down) but still running its task: the task is re-run by a
    worker on the other side within about a lease, and when the link comes back the cut-off worker's late result
    is refused by the compare-and-set. One `completed` event, the rerun's result."""
    with stack_factory(workers=0) as stack:
        link = Link(stack, netns)
        try:
            island = link.start_worker("island")
            stack.wait_ready(1)
            task = stack.submit("sleep", {"duration_ms": 6000}, timeout_s=600, max_retries=3)
            stack.wait_status(task["id"], "running", timeout=30)
            [(worker_id,)] = stack.sql("SELECT worker_id FROM task WHERE id = %s", (task["id"],))
            assert f"-{island.pid}-" in worker_id, worker_id
            netns.cut()
            cut_at = time.monotonic()
            try:
                mainland = stack.start_worker()

                def rerun() -> bool:
                    rows = stack.sql(
                        "SELECT count(*) FROM task_event WHERE task_id = %s AND status = 'running' AND detail LIKE %s",
                        (task["id"], f"%-{mainland.pid}-%"),
                    )
                    return rows[0][0] == 1

                wait_for(rerun, timeout=LEASE_S * 3 + 15, what="the task to be re-run on the mainland worker")
                rerun_after = time.monotonic() - cut_at
                done = stack.wait_status(task["id"], {"completed", "failed"}, timeout=30)
                assert island.alive(), island.tail()
                # The island's try ends (6 s sleep) while it is still cut off; its outcome waits in the process.
                wait_for(
                    lambda: "postgres unavailable" in island.log_path.read_text(),
                    timeout=30,
                    what="the cut-off worker to hold its outcome",
                )
            finally:
                netns.heal()
            print(f"re-run {rerun_after:.1f}s after the cut (lease {LEASE_S}s)")
            assert rerun_after < LEASE_S * 3 + 15
            assert done["status"] == "completed", done
            assert done["attempts"] == 2, done
            before = stack.events(task["id"])
            wait_for(
                lambda: "stale completion ignored" in island.log_path.read_text(),
                timeout=60,
                what="the healed worker to try (and fail) to record its late completion",
            )
            after = stack.get(task["id"])
            assert after["status"] == "completed"
            assert after["updated_at"] == done["updated_at"]
            events = stack.events(task["id"])
            assert events == before
            assert statuses(events) == ["pending", "running", "retrying", "running", "completed"], events
            assert "worker lost" in (events[2]["detail"] or "")
            assert f"-{mainland.pid}-" in (events[3]["detail"] or "")
            [(attempt_rows,)] = stack.sql(
                "SELECT count(*) FROM task_event WHERE task_id = %s AND status = 'completed'", (task["id"],)
            )
            assert attempt_rows == 1
            # Back on the network, the island worker serves again.
            mainland.stop()
            again = stack.submit("add", {"a": 2, "b": 3})
            assert stack.wait_status(again["id"], "completed", timeout=60)["result"] == {"sum": 5}
            assert f"-{island.pid}-" in (stack.events(again["id"])[1]["detail"] or "")
        finally:
            link.close()


def test_slow_lossy_links_lose_nothing_and_no_lease_lapses_at_the_default_lease(
    stack_factory: StackFactory, netns: NetNamespace
) -> None:
    """Two workers behind a link with 100 ms added latency and 5 % packet loss (tc netem where the kernel has it,
    else a delaying relay plus iptables' random drop): a batch of tasks all complete once each, at the default
    lease (30 s) no worker is taken for dead, and no task is reaped or re-run."""
    how = netns.shape(delay_ms=100, loss_pct=5)
    print(f"link shaped with {how}")
    env = {"TASKPROC_LEASE_S": "30", "TASKPROC_RECONCILE_S": "15"}
    with stack_factory(workers=0, env=env) as stack:
        link = Link(stack, netns, delay_s=0.0 if how == "netem" else 0.1)
        try:
            rtt = median_round_trip_s(link)
            print(f"median Postgres round trip over the link: {rtt * 1000:.0f} ms")
            assert rtt >= 0.095, "the link is not slowed down"
            workers = [link.start_worker(f"slow{i}") for i in range(2)]
            stack.wait_ready(2, timeout=90)
            items = [{"type": "sleep", "payload": {"duration_ms": (i * 37) % 200}} for i in range(300)]
            started = time.monotonic()
            r = stack.client.post("/api/v1/tasks/batch", json={"tasks": items})
            assert r.status_code == 201, r.text
            ids = [t["id"] for t in r.json()["items"]]

            def all_done() -> bool:
                [(waiting,)] = stack.sql(
                    "SELECT count(*) FROM task WHERE status NOT IN ('completed', 'failed', 'canceled')"
                )
                return waiting == 0

            wait_for(all_done, timeout=90, interval=0.5, what="every task to finish over the slow link")
            print(f"{len(ids)} tasks over the slow link in {time.monotonic() - started:.1f}s")
            rows = stack.sql("SELECT status, attempts, count(*) FROM task GROUP BY status, attempts")
            assert rows == [("completed", 1, len(ids))], rows
            per_task = stack.sql("SELECT task_id, string_agg(status, ',' ORDER BY id) FROM task_event GROUP BY task_id")
            assert len(per_task) == len(ids)
            assert {trail for _, trail in per_task} == {"pending,running,completed"}, per_task[:5]
            [(lost,)] = stack.sql("SELECT count(*) FROM task_event WHERE detail LIKE '%%worker lost%%'")
            assert lost == 0
            assert all(w.alive() for w in workers), stack.logs()
            # Both workers kept their leases the whole time (one row each, still live).
            [(live,)] = stack.sql("SELECT count(*) FROM worker WHERE expires_at > now()")
            assert live == 2
        finally:
            link.close()
