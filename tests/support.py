"""Test support: real API and worker processes against the embedded Postgres and Redis."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from taskproc.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
TASKPROC = str(Path(sys.executable).parent / "taskproc")
T = TypeVar("T")

TERMINAL = {"completed", "failed", "canceled"}


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may legitimately fail while a server is coming up
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead: this machine's init reaps orphans slowly)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


@dataclass
class Servers:
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    root: Path
    _db_counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _free_redis_dbs: list[int] = field(default_factory=lambda: list(range(1, 16)))

    def admin_url(self) -> str:
        return self.pg.url_for("postgres")

    def new_database(self) -> str:
        """A fresh, migrated database cloned from the template."""
        name = f"t{next(self._db_counter)}_{os.getpid()}"
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE taskproc_template')
        return name

    def take_redis_db(self) -> int:
        return self._free_redis_dbs.pop(0)

    def give_back_redis_db(self, index: int) -> None:
        import redis

        with redis.Redis.from_url(self.redis.url.rsplit("/", 1)[0] + f"/{index}") as r:
            r.flushdb()
        self._free_redis_dbs.append(index)


class Proc:
    """A real `taskproc <role>` process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.popen is not None
        try:
            code = self.popen.wait(timeout)
        finally:
            if self.popen.poll() is not None:
                self._log.close()
        return code

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Stack:
    """An API and N workers on their own database and Redis db index, so tests can't disturb each other."""

    def __init__(self, servers: Servers, workdir: Path, *, workers: int, env: dict[str, str] | None) -> None:
        self.servers = servers
        self.workdir = workdir
        self.database = servers.new_database()
        self.redis_db = servers.take_redis_db()
        self.database_url = servers.pg.url_for(self.database)
        self.redis_url = servers.redis.url.rsplit("/", 1)[0] + f"/{self.redis_db}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TASKPROC_DATABASE_URL": self.database_url,
            "TASKPROC_REDIS_URL": self.redis_url,
            "TASKPROC_LOG_FORMAT": "text",
            "TASKPROC_WORKER_METRICS_PORT": "0",
            "TASKPROC_RETRY_BASE_S": "0.2",
            "TASKPROC_LEASE_S": "3",
            "TASKPROC_RECONCILE_S": "2",
            "TASKPROC_SHUTDOWN_GRACE_S": "5",
            **(env or {}),
        }
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._names = itertools.count()
        key = (env or {}).get("TASKPROC_API_KEYS", "").split(",")[0].strip()
        # Only for the readiness check: tests of auth use `client` as an anonymous caller.
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, timeout=10.0)
        try:
            self.start_api()
            for _ in range(workers):
                self.start_worker()
            self.wait_ready(workers)
        except BaseException:
            # make_stack never gets this object to close: stop what was started, or it outlives the test.
            print(self.logs())
            self.close()
            raise

    def start_api(self) -> Proc:
        self.api = Proc(
            "api", [TASKPROC, "api", "--host", "127.0.0.1", "--port", str(self.port)], self.env, self.workdir
        ).start()
        return self.api

    def start_worker(self, env: dict[str, str] | None = None, metrics_port: int = 0) -> Proc:
        worker_env = {**self.env, "TASKPROC_WORKER_METRICS_PORT": str(metrics_port), **(env or {})}
        proc = Proc(f"worker{next(self._names)}", [TASKPROC, "worker"], worker_env, self.workdir).start()
        self.workers.append(proc)
        return proc

    def wait_ready(self, workers: int | None = None, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.api is not None
            if not self.api.alive():
                raise AssertionError(f"api exited:\n{self.api.tail()}")
            return self.client.get("/readyz").status_code == 200

        wait_for(ready, timeout=timeout, what="API /readyz")
        if workers:
            wait_for(
                lambda: self.client.get("/api/v1/stats", headers=self._auth).json()["workers"] >= workers,
                timeout=timeout,
                what=f"{workers} live workers",
            )

    # ---- API helpers ----

    def submit(self, type_: str = "add", payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        body = {"type": type_, "payload": payload if payload is not None else {"a": 1, "b": 2}, **fields}
        r = self.client.post("/api/v1/tasks", json=body)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def get(self, task_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, task_id: str, statuses: str | set[str], timeout: float = 30.0) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses
        return wait_for(
            lambda: (t := self.get(task_id))["status"] in wanted and t,
            timeout=timeout,
            what=f"task {task_id} to be {sorted(wanted)}",
        )

    def events(self, task_id: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/api/v1/tasks/{task_id}/events")
        assert r.status_code == 200, r.text
        return list(r.json())

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()

    def close(self) -> None:
        self.client.close()
        for w in self.workers:
            w.stop()
        if self.api is not None:
            self.api.stop()
        self.servers.give_back_redis_db(self.redis_db)
        with psycopg.connect(self.servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def logs(self) -> str:
        parts = []
        for p in [self.api, *self.workers]:
            if p is not None:
                parts.append(f"--- {p.name} ---\n{p.tail()}")
        return "\n".join(parts)


@contextmanager
def make_stack(
    servers: Servers, workdir: Path, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Stack]:
    stack = Stack(servers, workdir, workers=workers, env=env)
    try:
        yield stack
    except BaseException:
        print(stack.logs())  # shown by pytest for the failing test
        raise
    finally:
        stack.close()


@dataclass
class PausePoint:
    """The test's side of a pause point (`taskproc.testhooks`) in a process started with
    `TASKPROC_TEST_PAUSE_DIR=<directory>`: arm it, wait until the process is there, run the competing step,
    release it."""

    directory: Path
    name: str

    def arm(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{self.name}.armed").touch()

    def wait_reached(self, timeout: float = 30.0) -> None:
        wait_for(lambda: (self.directory / f"{self.name}.reached").exists(), timeout=timeout, what=f"{self.name}")

    def release(self) -> None:
        (self.directory / f"{self.name}.armed").unlink(missing_ok=True)
        (self.directory / f"{self.name}.release").touch()


# ---- network faults (tests/integration/test_fault_*.py, bench/soak.py) --------------------------------------
# A worker in its own network namespace reaches Postgres and Redis only through a veth pair, so a test can cut
# that link (as on a node that loses its network) or make it slow and lossy, while the worker process stays alive.
# The servers keep listening on 127.0.0.1 only; a relay (`Relay`) on the host end of the veth forwards to them.


class Relay:
    """A TCP relay from `listen_host`:<port> to `target`, in a thread of this process.

    `delay_s` holds every chunk that comes back from the target for that long before passing it on: added latency
    for kernels without `sch_netem` (e.g. Firecracker guests built with `nomodule`). Chunks keep their order and are
    pipelined, so it is latency, not a bandwidth limit.
    """

    def __init__(self, listen_host: str, target: tuple[str, int], *, delay_s: float = 0.0) -> None:
        import asyncio
        import threading

        self.listen_host = listen_host
        self.target = target
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._writers: set[Any] = set()
        self._tasks: set[Any] = set()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="relay")
        self._thread.start()
        started.wait(10)
        if not self.port:
            raise RuntimeError(f"relay on {listen_host} did not start")

    def _run(self, started: Any) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio
        import contextlib

        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pump(src: Any, dst: Any, delay_s: float) -> None:
            chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def send() -> None:
                while True:
                    due, data = await chunks.get()
                    if not data:
                        break
                    wait = due - self._loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    dst.write(data)
                    await dst.drain()

            sender = asyncio.ensure_future(send())
            try:
                while data := await src.read(65536):
                    chunks.put_nowait((self._loop.time() + delay_s, data))
            except OSError:
                pass
            chunks.put_nowait((0.0, b""))
            with contextlib.suppress(OSError):
                await sender
            dst.close()

        pumps = [
            asyncio.ensure_future(pump(reader, up_writer, 0.0)),
            asyncio.ensure_future(pump(up_reader, writer, self.delay_s)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps)
        finally:
            self._tasks.difference_update(pumps)

    def close(self) -> None:
        """Stop listening and drop every relayed connection (both ends)."""
        import asyncio

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netem_available() -> bool:
    """True if the kernel has the netem queueing discipline (tried on a throwaway veth pair)."""
    name = f"tpq{os.getpid() % 100000}"
    if _ip("link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b", check=False).returncode != 0:
        return False
    try:
        probe = ["tc", "qdisc", "add", "dev", f"{name}a", "root", "netem", "delay", "1ms"]
        return subprocess.run(probe, capture_output=True).returncode == 0
    finally:
        _ip("link", "del", f"{name}a", check=False)


class NetNamespace:
    """A network namespace joined to the host by a veth pair (/30 subnet), removed by `remove()`.

    Processes started with `wrap(argv)` see only the namespace's own loopback and the veth: the host (relays, the
    API) is at `host_ip`. Names and the subnet derive from our pid, so concurrent test sessions do not collide.
    """

    def __init__(self, tag: str = "a") -> None:
        pid = os.getpid()
        self.name = f"tpf{pid}{tag}"
        self.host_if = f"tpf{pid % 1000000}{tag}h"
        self.ns_if = f"tpf{pid % 1000000}{tag}n"
        block = (pid * 7 + ord(tag[0])) % 16000
        base = f"10.231.{block // 64}.{(block % 64) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self.host_ip = f"{prefix}.{last + 1}"
        self.ns_ip = f"{prefix}.{last + 2}"
        self._shaped: list[list[str]] = []
        self.remove()  # leftovers of an earlier run that died with this pid
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self.run("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self.run("ip", "link", "set", self.ns_if, "up")
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> None:
        subprocess.run(self.wrap(list(argv)), check=True, capture_output=True, text=True)

    def cut(self) -> None:
        """Take the link down: packets either way are dropped, TCP connections stay open but nothing arrives."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def shape(self, *, delay_ms: int, loss_pct: float) -> str:
        """Add latency and random loss on the link; returns how ("netem" or "relay delay + iptables loss").

        With netem, the host end's egress is delayed and both ends drop `loss_pct` of their packets. Without it
        (no sch_netem in the kernel), the caller's relays must add the delay (`Relay(delay_s=...)`), and iptables'
        `statistic` match drops packets in both directions inside the namespace.
        """
        if netem_available():
            for dev, where in ((self.host_if, []), (self.ns_if, self.wrap([]))):
                extra = ["delay", f"{delay_ms}ms"] if not where else []
                cmd = [*where, "tc", "qdisc", "add", "dev", dev, "root", "netem", *extra, "loss", f"{loss_pct}%"]
                subprocess.run(cmd, check=True, capture_output=True)
            return "netem"
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            rule = [chain, flag, self.ns_if, "-m", "statistic", "--mode", "random"]
            rule += ["--probability", str(loss_pct / 100), "-j", "DROP"]
            self.run("iptables", "-A", *rule)
        return "relay delay + iptables loss"

    def remove(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)


@dataclass
class SupervisedWorkers:
    """Worker processes of a stack, each replaced by a fresh one by `supervise()` once it died (the test is their
    supervisor, as a Deployment would be), each with a /metrics port of its own."""

    stack: Stack
    live: list[tuple[Proc, int]] = field(default_factory=list)
    deaths: int = 0

    def start(self) -> None:
        port = free_port()
        self.live.append((self.stack.start_worker(metrics_port=port), port))

    def supervise(self) -> None:
        for proc, port in list(self.live):
            if not proc.alive():
                self.deaths += 1
                self.live.remove((proc, port))
                self.start()

    def until_ended(self, task_id: str, others: list[str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for a task (say, one that kills its workers) to end, replacing each worker that dies meanwhile and,
        given `others`, submitting `add` tasks all along (their ids appended to it); returns the task as it ended."""

        def ended() -> dict[str, Any]:  # empty (falsy) until the task ended
            self.supervise()
            if others is not None:
                others.extend(self.stack.submit("add", {"a": len(others), "b": 1})["id"] for _ in range(3))
            task = self.stack.get(task_id)
            return task if task["status"] in {"failed", "completed", "canceled"} else {}

        task = wait_for(ended, timeout=timeout, interval=0.2, what=f"task {task_id} to end")
        self.supervise()
        return task

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` with these labels over the live workers' /metrics."""
        total = 0.0
        for _, port in self.live:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == name and set(labels.items()) <= set(s.labels.items()):
                        total += s.value
        return total
