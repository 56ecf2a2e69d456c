"""Server-side work during a phase, per task: Postgres transactions and statements, Redis commands, CPU."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import redis as redis_sync

from bench.procs import Monitor, cpu_delta
from bench.stack import Servers


class Counters:
    """Server-side work during a phase: Postgres transactions and statements, Redis commands, CPU per role."""

    def __init__(
        self, servers: Servers, monitor: Monitor, database_url: str | None = None, *, statements: bool = False
    ) -> None:
        self.servers = servers
        self.monitor = monitor
        self.database_url = database_url
        self.statements = statements

    def _pg(self) -> dict[str, Any]:
        if self.database_url is None:
            return {}
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
                "FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            out: dict[str, Any] = dict(
                zip(("commits", "rollbacks", "inserted", "updated", "deleted"), row, strict=True)
            )
            if self.statements:
                rows = conn.execute(
                    "SELECT query, calls, total_exec_time FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchall()
                out["statements"] = {q: (c, t) for q, c, t in rows}
        return out

    def _redis(self) -> dict[str, int]:
        with redis_sync.Redis(port=self.servers.redis.port) as r:
            stats = r.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def snapshot(self) -> dict[str, Any]:
        return {"pg": self._pg(), "redis": self._redis(), "cpu": self.monitor.cpu(), "t": time.perf_counter()}

    def per_task(self, before: dict[str, Any], after: dict[str, Any], tasks: int) -> dict[str, Any]:
        n = max(1, tasks)
        pg = {k: round((after["pg"][k] - before["pg"][k]) / n, 2) for k in after["pg"] if k != "statements"}
        redis_calls = {
            k: round((v - before["redis"].get(k, 0)) / n, 2)
            for k, v in after["redis"].items()
            if v - before["redis"].get(k, 0) >= n / 10
        }
        cpu = cpu_delta(before["cpu"], after["cpu"])
        wall = after["t"] - before["t"]
        other = cpu.pop("other", 0.0)
        out: dict[str, Any] = {
            **({"pg_per_task": pg} if pg else {}),
            "redis_commands_per_task": dict(sorted(redis_calls.items(), key=lambda kv: -kv[1])),
            "redis_commands_per_task_total": round(sum(redis_calls.values()), 2),
            "cpu_s": cpu,
            "cpu_ms_per_task": {k: round(v * 1000 / n, 3) for k, v in cpu.items()},
            "wall_s": round(wall, 3),
            # CPU (in cores) used meanwhile by processes that are not part of the benchmark.
            "background_cores": round(max(0.0, other) / wall, 2) if wall > 0 else 0.0,
        }
        if "statements" in after["pg"]:
            stmts = []
            deltas = {
                q: (calls - c0, total - t0)
                for q, (calls, total) in after["pg"]["statements"].items()
                for c0, t0 in [before["pg"].get("statements", {}).get(q, (0, 0.0))]
            }
            spent = sum(t for _, t in deltas.values())
            for q, (calls, total) in deltas.items():
                # By share of the time, not by calls: a statement that takes a batch per call matters as much.
                if calls > 0 and total >= spent / 100:
                    stmts.append(
                        {
                            "query": " ".join(q.split())[:160],
                            "calls_per_task": round(calls / n, 3),
                            "exec_ms_per_task": round(total / n, 4),
                        }
                    )
            out["pg_statements"] = sorted(stmts, key=lambda s: -s["exec_ms_per_task"])
        return out
