"""Soak test (not part of CI): drive many tasks through `taskproc up` while killing workers and Redis.

    .venv/bin/python -m bench.soak --tasks 20000 --workers 4

It starts `taskproc up` in a temporary data directory (embedded Postgres and Redis), submits `--tasks` sleep
tasks (short random durations, some failing at random and retried), and meanwhile:
  - SIGKILLs a random worker process every `--kill-every` seconds (the supervisor restarts it),
  - every `--redis-every` seconds either SIGKILLs redis-server (the supervisor restarts it from its append-only
    file, losing up to the last second of writes) or empties it with FLUSHALL, alternately,
  - every `--pg-every` seconds (0 = never) SIGKILLs the Postgres postmaster and its backends (the supervisor
    restarts it; crash recovery replays the WAL),
  - with `--partitioned-workers N` (root only), runs N more workers in their own network namespace, reaching
    Postgres and Redis over a veth pair (tests/support.py `NetNamespace`, `Relay`), and every `--partition-every`
    seconds takes that link down for `--partition-s` seconds: the cut-off workers live on with their tasks, which
    are re-run elsewhere once their lease lapses, and their late results must be refused.
At the end it waits for every task to reach a terminal state, stops the stack, and prints:
  submitted  tasks the API acknowledged (201, or 200 for a resubmitted idempotency key)
  completed / failed / canceled
  lost       acknowledged but missing from Postgres or not terminal by the deadline (must be 0)
  recorded twice   tasks with more than one terminal event in task_event (must be 0)
plus how many tasks ran more than once (at-least-once: expected after worker kills) and the throughput.
Exit status 0 only when lost == 0 and recorded twice == 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (`python bench/soak.py`), bench/ itself would come first on sys.path and its http.py would
# shadow the standard library's http package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import contextlib
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import redis

from taskproc.dev.embedded import free_port

# The network namespace helpers live with the tests that use them, in tests/support.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import NetNamespace, Relay

TASKPROC = str(Path(sys.executable).parent / "taskproc")
TERMINAL = ("completed", "failed", "canceled")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def children(pid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmd
    return out


class Partition:
    """Extra workers in a network namespace, and the link to them that chaos cuts and heals."""

    def __init__(self, workers: int, pg_url: str, redis_url: str, env: dict[str, str], log_dir: Path) -> None:
        self.ns = NetNamespace("s")
        self.relays: list[Relay] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cut = False
        try:
            urls = {}
            for name, url in (("TASKPROC_DATABASE_URL", pg_url), ("TASKPROC_REDIS_URL", redis_url)):
                parts = urlsplit(url)
                assert parts.port is not None
                relay = Relay(self.ns.host_ip, ("127.0.0.1", parts.port))
                self.relays.append(relay)
                auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
                urls[name] = urlunsplit(parts._replace(netloc=f"{auth}{self.ns.host_ip}:{relay.port}"))
            for i in range(workers):
                with (log_dir / f"partitioned-worker-{i}.log").open("ab") as out:
                    argv = self.ns.wrap([TASKPROC, "worker"])
                    self.procs.append(subprocess.Popen(argv, env={**env, **urls}, stdout=out, stderr=subprocess.STDOUT))
        except BaseException:
            self.close()
            raise

    def toggle(self) -> None:
        if self.cut:
            self.ns.heal()
        else:
            self.ns.cut()
        self.cut = not self.cut

    def close(self) -> None:
        if self.cut:
            self.ns.heal()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for relay in self.relays:
            relay.close()
        self.ns.remove()


class Chaos(threading.Thread):
    def __init__(
        self,
        up_pid: int,
        data_dir: Path,
        redis_url: str,
        args: argparse.Namespace,
        partition: Partition | None,
    ) -> None:
        super().__init__(daemon=True)
        self.up_pid = up_pid
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.kill_every = args.kill_every
        self.redis_every = args.redis_every
        self.pg_every = args.pg_every
        self.partition = partition
        self.partition_every = args.partition_every
        self.partition_s = args.partition_s
        self.stop = threading.Event()
        self.worker_kills = 0
        self.redis_kills = 0
        self.redis_flushes = 0
        self.pg_kills = 0
        self.partitions = 0

    def kill_postgres(self) -> None:
        try:
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError) as exc:
            log(f"chaos: could not read the postmaster pid: {exc}")
            return
        # The whole server at once, as an OOM kill of the container would.
        for victim in [pid, *children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self.pg_kills += 1
        log(f"chaos: SIGKILL postgres {pid} and its backends")

    def run(self) -> None:
        rng = random.Random(42)
        next_kill = time.monotonic() + self.kill_every
        next_redis = time.monotonic() + self.redis_every
        next_pg = time.monotonic() + self.pg_every
        next_partition = time.monotonic() + self.partition_every
        while not self.stop.wait(0.2):
            now = time.monotonic()
            if self.pg_every > 0 and now >= next_pg:
                next_pg = now + self.pg_every * rng.uniform(0.5, 1.5)
                self.kill_postgres()
            if self.partition is not None and self.partition_every > 0 and now >= next_partition:
                self.partition.toggle()
                if self.partition.cut:
                    self.partitions += 1
                    next_partition = now + self.partition_s
                    log(f"chaos: link to {len(self.partition.procs)} partitioned workers cut")
                else:
                    next_partition = now + self.partition_every
                    log("chaos: link to the partitioned workers back")
            if self.kill_every > 0 and now >= next_kill:
                next_kill = now + self.kill_every * rng.uniform(0.5, 1.5)
                self.kill_worker(rng)
            if self.redis_every > 0 and now >= next_redis:
                next_redis = now + self.redis_every
                self.hit_redis()

    def kill_worker(self, rng: random.Random) -> None:
        workers = [p for p, cmd in children(self.up_pid).items() if cmd.endswith("taskproc worker")]
        if workers:
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                self.worker_kills += 1
                log(f"chaos: SIGKILL worker {victim}")

    def hit_redis(self) -> None:
        """Kill redis-server and flush it in turn."""
        if (self.redis_kills + self.redis_flushes) % 2 == 0:
            try:
                pid = int((self.data_dir / "redis" / "redis.pid").read_text().strip())
                os.kill(pid, signal.SIGKILL)
                self.redis_kills += 1
                log(f"chaos: SIGKILL redis-server {pid}")
            except (OSError, ValueError) as exc:
                log(f"chaos: could not kill redis: {exc}")
        else:
            try:
                with redis.Redis.from_url(self.redis_url, socket_timeout=5) as r:
                    r.flushall()
                self.redis_flushes += 1
                log("chaos: FLUSHALL on redis")
            except redis.RedisError as exc:
                log(f"chaos: could not flush redis: {exc}")


def submit_all(client: httpx.Client, args: argparse.Namespace, run_id: str, submitted: set[str]) -> None:
    rng = random.Random(7)
    batch_size = 500
    for start in range(0, args.tasks, batch_size):
        n = min(batch_size, args.tasks - start)
        tasks = [
            {
                "type": "sleep",
                "payload": {"duration_ms": rng.randint(0, args.max_ms), "fail_rate": args.fail_rate},
                "max_retries": args.max_retries,
                "idempotency_key": f"{run_id}-{start + i}",
            }
            for i in range(n)
        ]
        # Resubmitting the same batch is safe: idempotency keys return the existing tasks.
        while True:
            try:
                r = client.post("/api/v1/tasks/batch", json={"tasks": tasks})
            except httpx.HTTPError as exc:
                log(f"submit: {type(exc).__name__}, retrying")
                time.sleep(0.5)
                continue
            if r.status_code == 201:
                submitted.update(item["id"] for item in r.json()["items"])
                break
            log(f"submit: HTTP {r.status_code} {r.text[:200]}, retrying")
            time.sleep(0.5)
        if args.submit_rate:
            time.sleep(n / args.submit_rate)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-ms", type=int, default=100, help="sleep durations are uniform in [0, max-ms]")
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--submit-rate", type=float, default=0, help="tasks/s while submitting (0 = flat out)")
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--redis-every", type=float, default=30.0, help="seconds between Redis kills/flushes")
    parser.add_argument("--pg-every", type=float, default=0.0, help="seconds between Postgres SIGKILLs (0 = never)")
    parser.add_argument(
        "--partitioned-workers", type=int, default=0, help="extra workers in a network namespace (needs root)"
    )
    parser.add_argument("--partition-every", type=float, default=20.0, help="seconds between link cuts")
    parser.add_argument("--partition-s", type=float, default=12.0, help="how long each cut lasts")
    parser.add_argument("--lease", type=float, default=5.0, help="TASKPROC_LEASE_S for the run")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds to wait for every task to finish")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary directory")
    return parser.parse_args()


def wait_ready(client: httpx.Client, up: subprocess.Popen[bytes], up_log: Path) -> bool:
    """Whether `taskproc up` answers /readyz within three minutes (False once it exits or the time is up)."""
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/readyz").status_code == 200:
                return True
        if up.poll() is not None or time.monotonic() > deadline:
            log(f"taskproc up did not become ready; see {up_log}")
            return False
        time.sleep(0.5)


def wait_finished(client: httpx.Client, args: argparse.Namespace, chaos: Chaos) -> None:
    """Until no task is pending, running or retrying (or --deadline); chaos stops for the last tenth."""
    deadline = time.monotonic() + args.deadline
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            counts = client.get("/api/v1/stats").json()["tasks"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(1)
            continue
        if counts != last:
            log(f"progress: {counts}")
            last = counts
        if counts["pending"] + counts["running"] + counts["retrying"] == 0:
            break
        if counts["completed"] + counts["failed"] >= 0.9 * args.tasks and chaos.is_alive():
            chaos.stop.set()  # let the tail finish without new chaos, so the run ends
            log("chaos stopped for the tail of the run")
        time.sleep(2)


def stop_up(up: subprocess.Popen[bytes]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def main() -> int:
    args = parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="taskproc-soak-"))
    port = free_port()
    env = {
        **os.environ,
        "TASKPROC_LEASE_S": str(args.lease),
        "TASKPROC_RECONCILE_S": "3",
        "TASKPROC_SHUTDOWN_GRACE_S": "5",
        "TASKPROC_RETRY_BASE_S": "0.2",
        "TASKPROC_RETRY_MAX_S": "5",
        "TASKPROC_WORKER_METRICS_PORT": "0",
        "TASKPROC_LOG_LEVEL": "warning",
    }
    for name in ("TASKPROC_DATABASE_URL", "TASKPROC_REDIS_URL", "TASKPROC_API_KEYS", "TASKPROC_API_KEYS_FILE"):
        env.pop(name, None)
    up_log = data_dir / "up.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [TASKPROC, "up", "--port", str(port), "--workers", str(args.workers), "--data-dir", str(data_dir)]
    log(f"starting taskproc up ({args.workers} workers), data in {data_dir}, log in {up_log}")
    with up_log.open("ab") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    chaos: Chaos | None = None
    partition: Partition | None = None
    submitted: set[str] = set()
    try:
        if not wait_ready(client, up, up_log):
            return 2
        pg_url = f"postgresql://postgres@127.0.0.1:{(data_dir / 'postgres.port').read_text().strip()}/taskproc"
        redis_url = f"redis://127.0.0.1:{(data_dir / 'redis.port').read_text().strip()}/0"

        if args.partitioned_workers:
            partition = Partition(args.partitioned_workers, pg_url, redis_url, env, data_dir)
            log(f"{args.partitioned_workers} partitioned workers in netns {partition.ns.name}")
        chaos = Chaos(up.pid, data_dir, redis_url, args, partition)
        chaos.start()
        run_id = uuid.uuid4().hex[:8]
        t0 = time.monotonic()
        submit_all(client, args, run_id, submitted)
        log(f"submitted {len(submitted)} tasks in {time.monotonic() - t0:.1f}s")

        wait_finished(client, args, chaos)
        elapsed = time.monotonic() - t0
        chaos.stop.set()
        island = [proc.pid for proc in partition.procs] if partition is not None else []
        return report(pg_url, submitted, chaos, elapsed, args, island)
    finally:
        if chaos is not None:
            chaos.stop.set()
            chaos.join(10)
        if partition is not None:
            partition.close()
        client.close()
        stop_up(up)


def report(
    pg_url: str, submitted: set[str], chaos: Chaos, elapsed: float, args: argparse.Namespace, island: list[int]
) -> int:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id::text, status, attempts FROM task").fetchall()
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM task_event WHERE status IN ('completed', 'failed', "
            "'canceled') GROUP BY task_id HAVING count(*) > 1) t"
        ).fetchone()
        reran = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM task_event WHERE status = 'running' GROUP BY task_id "
            "HAVING count(*) > 1) t"
        ).fetchone()
        lost_attempts = conn.execute(
            "SELECT count(*) FROM task_event WHERE detail LIKE 'worker lost%%' OR detail LIKE 'requeued%%' "
            "OR detail LIKE 're-enqueued%%'"
        ).fetchone()
        # Tasks a partitioned worker started and another worker then ran again (its try was taken over).
        taken_over = conn.execute(
            "SELECT count(DISTINCT a.task_id) FROM task_event a JOIN task_event b ON b.task_id = a.task_id "
            "AND b.id > a.id AND b.status = 'running' WHERE a.status = 'running' AND a.detail ~ %s",
            ("-(" + "|".join(map(str, island or [0])) + ")-",),
        ).fetchone()
    status = {r[0]: r[1] for r in rows}
    by_status = {s: sum(1 for v in status.values() if v == s) for s in ("completed", "failed", "canceled")}
    missing = [i for i in submitted if i not in status]
    unfinished = [i for i in submitted if i in status and status[i] not in TERMINAL]
    lost = len(missing) + len(unfinished)
    recorded_twice = twice[0] if twice else 0
    print()
    print(f"soak: {args.tasks} tasks, {args.workers} workers, sleep 0-{args.max_ms} ms, fail_rate {args.fail_rate}")
    print(
        f"chaos: {chaos.worker_kills} worker SIGKILLs, {chaos.redis_kills} redis SIGKILLs, "
        f"{chaos.redis_flushes} redis FLUSHALLs, {chaos.pg_kills} postgres SIGKILLs, "
        f"{chaos.partitions} partitions of {args.partitioned_workers} workers"
    )
    print(f"submitted        {len(submitted)}")
    print(f"completed        {by_status['completed']}")
    print(f"failed           {by_status['failed']}  (fail_rate {args.fail_rate}, max_retries {args.max_retries})")
    print(f"canceled         {by_status['canceled']}")
    print(f"lost             {lost}  (missing {len(missing)}, not finished {len(unfinished)})")
    print(f"recorded twice   {recorded_twice}")
    print(f"ran more than once (at-least-once after a crash or a retry): {reran[0] if reran else 0}")
    print(f"tries recovered (lost worker, orphaned claim, abandoned job): {lost_attempts[0] if lost_attempts else 0}")
    if island:
        print(f"started on a partitioned worker, then run again: {taken_over[0] if taken_over else 0} tasks")
    print(f"elapsed          {elapsed:.1f}s  ({len(submitted) / elapsed:.0f} tasks/s end to end)")
    return 0 if lost == 0 and recorded_twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
