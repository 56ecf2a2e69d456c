"""Contract between the chart and the app: what the rendered pods would run, run here for real.

The chart is rendered with external servers at placeholder URLs (contract-values.yaml). From the rendered API
Deployment, worker Deployment and migration Job we take each container's args, env and probes; secretKeyRef
values are read from the rendered Secret, the placeholder servers are swapped for the session's embedded
Postgres and Redis (same database index), `$(VAR)` references are expanded as the kubelet does, and the exact
argv (the image's entrypoint `taskproc` plus the container args) is started with exactly that environment.
The probes must answer 200 and a task must run end to end. The KEDA triggers must count the keys the worker
really consumes, read in the database the ScaledObject names, by the key's type as KEDA's redis scaler does; a
worker pool's ScaledObject counts its own queues' ready and running sets and nothing of a paused queue."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from .conftest import Helm, container, find, parse_docs

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
CONTRACT_VALUES = HERE / "contract-values.yaml"
TASKPROC = Path(sys.executable).parent / "taskproc"
PLACEHOLDER_DB = "db.placeholder.invalid"
PLACEHOLDER_REDIS = "redis.placeholder.invalid"
API_KEY = "contract-test-key"


# --- kubelet-style $(VAR) expansion -----------------------------------------------------------------------------


def expand(value: str, env: dict[str, str]) -> str:
    """Expand `$(NAME)` from `env` the way the kubelet expands container env, args and command: `$$` is a literal
    `$`, a reference to an undefined name is kept as written, any other `$` is kept."""
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "$" or i + 1 == len(value):
            out.append(ch)
            i += 1
            continue
        nxt = value[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = value.find(")", i + 2)
            if end == -1:
                out.append(value[i:])
                break
            name = value[i + 2 : end]
            out.append(env[name] if name in env else value[i : end + 1])
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def test_expand_like_kubelet() -> None:
    env = {"A": "x", "B": "y$(A)"}
    assert expand("$(A)-$(B)", env) == "x-y$(A)"  # no recursive expansion
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$$", env) == "$"
    assert expand("a$b$", env) == "a$b$"
    assert expand("$(A", env) == "$(A"
    assert expand("postgresql://u:$(A)@h/db", env) == "postgresql://u:x@h/db"


# --- from rendered pod spec to a process environment ------------------------------------------------------------


def secret_data(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    out = {}
    for d in docs:
        if d["kind"] == "Secret":
            for key, value in (d.get("data") or {}).items():
                out[(d["metadata"]["name"], key)] = base64.b64decode(value).decode()
    return out


def container_env(c: dict[str, Any], secrets: dict[tuple[str, str], str], swap: Callable[[str], str]) -> dict[str, str]:
    """The environment the kubelet would give container `c`, in order, with `$(VAR)` expanded against the
    variables defined before each one; secret values pass through `swap` (placeholder servers -> real ones)."""
    env: dict[str, str] = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            assert key in secrets, f"{entry['name']} reads {key}, which the chart does not render"
            env[entry["name"]] = swap(secrets[key])
    return env


@dataclass
class Servers:
    pg_url: str
    redis_url: str

    @property
    def redis_hostport(self) -> str:
        return urlsplit(self.redis_url).netloc.rsplit("@", 1)[-1]

    def swap(self, value: str) -> str:
        """A placeholder URL from the chart's values -> the embedded server's URL, keeping the database index
        (Redis) and database name (Postgres) the chart chose."""
        parts = urlsplit(value)
        if parts.hostname == PLACEHOLDER_DB:
            real = urlsplit(self.pg_url)
            return urlunsplit((real.scheme, real.netloc, parts.path, "", ""))
        if parts.hostname == PLACEHOLDER_REDIS:
            real = urlsplit(self.redis_url)
            return urlunsplit((real.scheme, real.netloc, parts.path, "", ""))
        return value

    def redis_for(self, address: str, database: str) -> redis.Redis:
        host, _, port = address.rpartition(":")
        assert host == PLACEHOLDER_REDIS, f"KEDA reads Redis at {address}, not the server the worker uses"
        real = urlsplit(self.redis_url)
        return redis.Redis(
            host=real.hostname or "127.0.0.1",
            port=real.port or int(port),
            password=real.password,
            db=int(database),
            decode_responses=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], T], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})", pytrace=False)
        time.sleep(0.05)


class Pod:
    """One rendered container run as a local process: argv = image entrypoint + args, env as the kubelet builds it."""

    def __init__(self, name: str, c: dict[str, Any], env: dict[str, str], workdir: Path) -> None:
        assert "command" not in c, f"{name} overrides the image entrypoint: {c['command']}"
        self.name = name
        self.spec = c
        self.argv = [str(TASKPROC), *(expand(a, env) for a in c.get("args", []))]
        tmp = workdir / f"{name}-tmp"  # the pod's only writable path, an emptyDir at /tmp
        tmp.mkdir()
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp), **env}
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Pod:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def port(self, ref: int | str) -> int:
        if isinstance(ref, int):
            return ref
        return int(next(p["containerPort"] for p in self.spec["ports"] if p["name"] == ref))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def check_probes(self, timeout: float = 60) -> list[str]:
        """Every httpGet probe of the container answers 200; returns the URLs probed."""
        urls = []
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = self.spec.get(kind)
            if not probe:
                continue
            assert "httpGet" in probe, f"{self.name} {kind} is not an httpGet probe"
            url = f"http://127.0.0.1:{self.port(probe['httpGet']['port'])}{probe['httpGet']['path']}"

            def ok(url: str = url) -> bool:
                if not self.alive():
                    pytest.fail(f"{self.name} exited:\n{self.output()}", pytrace=False)
                return httpx.get(url, timeout=5).status_code == 200

            poll(ok, timeout=timeout, what=f"{self.name} {kind} {url} -> 200")
            urls.append(url)
        return urls

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@dataclass
class Rendered:
    docs: list[dict[str, Any]]
    api_port: int
    metrics_port: int

    def env_for(self, c: dict[str, Any], servers: Servers) -> dict[str, str]:
        return container_env(c, secret_data(self.docs), servers.swap)


@pytest.fixture(scope="module")
def rendered(helm4: Helm) -> Rendered:
    # free ports instead of 8000/9100, through the chart's own values, so parallel runs don't collide
    api_port, metrics_port = free_port(), free_port()
    proc = helm4.template(
        CONTRACT_VALUES, sets=(f"api.port={api_port}", f"worker.metricsPort={metrics_port}", "api.replicaCount=1")
    )
    return Rendered(parse_docs(proc.stdout), api_port, metrics_port)


@pytest.fixture(scope="module")
def contract_servers(pg_url: str, redis_url: str) -> Servers:
    """The session's embedded Postgres and Redis (fixtures of tests/conftest.py)."""
    return Servers(pg_url, redis_url)


@pytest.fixture(scope="module")
def redis_db(rendered: Rendered, contract_servers: Servers) -> Iterator[redis.Redis]:
    """The Redis database the chart's worker uses, emptied before and after (it is the session's server)."""
    env = rendered.env_for(container(find(rendered.docs, "Deployment", "-worker"), "worker"), contract_servers)
    client = redis.Redis.from_url(env["TASKPROC_REDIS_URL"], decode_responses=True)
    assert client.connection_pool.connection_kwargs["db"] == 13
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@contextmanager
def running(*pods: Pod) -> Iterator[None]:
    try:
        for pod in pods:
            pod.start()
        yield
    finally:
        for pod in pods:
            pod.stop()


def api_client(port: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)


def test_migration_job_runs(rendered: Rendered, contract_servers: Servers, tmp_path: Path) -> None:
    servers = contract_servers
    job = find(rendered.docs, "Job")
    c = container(job, "migrate")
    hook_secret = find(rendered.docs, "Secret", "-migrate")  # the pre-install hook's own copy of the URL
    assert c["env"][0]["valueFrom"]["secretKeyRef"]["name"] == hook_secret["metadata"]["name"]
    pod = Pod("migrate", c, rendered.env_for(c, servers), tmp_path)
    pod.start()
    assert pod.proc is not None
    try:
        code = pod.proc.wait(timeout=90)
    finally:
        pod.stop()
    assert code == 0, pod.output()
    # the API and worker pods' init container: with the schema at head it lets them start
    for name in ("-api", "-worker"):
        init = find(rendered.docs, "Deployment", name)["spec"]["template"]["spec"]["initContainers"][0]
        assert init["args"][:2] == ["migrate", "--wait-for-schema"]
        waiter = Pod(f"wait{name}", init, rendered.env_for(init, servers), tmp_path)
        waiter.start()
        assert waiter.proc is not None
        try:
            code = waiter.proc.wait(timeout=90)
        finally:
            waiter.stop()
        assert code == 0, waiter.output()


def test_api_and_worker_run_a_task(
    rendered: Rendered, contract_servers: Servers, redis_db: redis.Redis, tmp_path: Path
) -> None:
    servers = contract_servers
    api_c = container(find(rendered.docs, "Deployment", "-api"), "api")
    worker_c = container(find(rendered.docs, "Deployment", "-worker"), "worker")
    api = Pod("api", api_c, rendered.env_for(api_c, servers), tmp_path)
    worker = Pod("worker", worker_c, rendered.env_for(worker_c, servers), tmp_path)
    assert api.argv[1:] == ["api", "--host", "0.0.0.0", "--port", str(rendered.api_port)]
    assert worker.argv[1:] == ["worker"]
    for pod in (api, worker):
        assert pod.env["TASKPROC_DATABASE_URL"].startswith("postgresql://")
        assert pod.env["TASKPROC_REDIS_URL"].endswith("/13")
        assert pod.env["TASKPROC_API_KEYS"] == API_KEY
        assert "$(" not in "".join(pod.env.values())
    assert worker.env["TASKPROC_WORKER_METRICS_PORT"] == str(rendered.metrics_port)
    with running(api, worker):
        probed = api.check_probes() + worker.check_probes()
        assert {u.rsplit("/", 1)[1] for u in probed} == {"healthz", "readyz"}
        with api_client(rendered.api_port) as client:
            unauth = httpx.post(
                f"http://127.0.0.1:{rendered.api_port}/api/v1/tasks", json={"type": "add", "payload": {}}
            )
            assert unauth.status_code == 401, "the chart's API key must be enforced"
            resp = client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": 20, "b": 22}})
            assert resp.status_code == 201, resp.text
            task_id = resp.json()["id"]

            def completed() -> dict[str, Any] | None:
                task: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
                assert task["status"] not in ("failed", "canceled"), task
                return task if task["status"] == "completed" else None

            task = poll(completed, timeout=60, what=f"task {task_id} to complete")
            assert task["result"] == {"sum": 42}
        # what the ServiceMonitors scrape: /metrics on the ports they name
        for pod, port_name in ((api, "http"), (worker, "metrics")):
            resp = httpx.get(f"http://127.0.0.1:{pod.port(port_name)}/metrics", timeout=5)
            assert resp.status_code == 200
            assert "taskproc_" in resp.text
    assert worker.proc is not None
    assert worker.proc.returncode == 0, f"worker did not shut down cleanly on SIGTERM:\n{worker.output()}"


def keda_count(client: redis.Redis, key: str) -> tuple[str, int]:
    """What KEDA's redis scaler reads for `listName`: the key's length by its type."""
    kind = client.type(key)
    if kind == "zset":
        return kind, int(client.zcard(key))
    if kind == "list":
        return kind, int(client.llen(key))
    if kind == "set":
        return kind, int(client.scard(key))
    if kind == "stream":
        return kind, int(client.xlen(key))
    return kind, 0


def test_keda_triggers_count_what_the_worker_consumes(
    rendered: Rendered, contract_servers: Servers, redis_db: redis.Redis, tmp_path: Path
) -> None:
    servers = contract_servers
    redis_db.flushdb()
    triggers = find(rendered.docs, "ScaledObject", "-worker")["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    worker_env = rendered.env_for(container(find(rendered.docs, "Deployment", "-worker"), "worker"), servers)
    worker_db = urlsplit(worker_env["TASKPROC_REDIS_URL"]).path.lstrip("/")
    for t in triggers:
        assert t["metadata"]["databaseIndex"] == worker_db, "KEDA must read the worker's Redis database"

    api_c = container(find(rendered.docs, "Deployment", "-api"), "api")
    worker_c = container(find(rendered.docs, "Deployment", "-worker"), "worker")
    api = Pod("api", api_c, rendered.env_for(api_c, servers), tmp_path)
    worker = Pod("worker", worker_c, rendered.env_for(worker_c, servers), tmp_path)
    ready: list[str] = []
    with running(api), api_client(rendered.api_port) as client:
        api.check_probes()
        # Taken by the worker and still running when the counts are read: it must count as backlog too.
        busy = client.post("/api/v1/tasks", json={"type": "sleep", "payload": {"duration_ms": 60_000}}).json()["id"]
        with running(worker):
            poll(
                lambda: client.get(f"/api/v1/tasks/{busy}").json()["status"] == "running" or None,
                timeout=60,
                what="the worker to take the long task",
            )
            worker.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # no new task is taken now
            try:
                ready = [
                    client.post("/api/v1/tasks", json={"type": "add", "payload": {"a": i, "b": 1}}).json()["id"]
                    for i in range(3)
                ]
                delayed = client.post(
                    "/api/v1/tasks", json={"type": "add", "payload": {"a": 1, "b": 1}, "delay_s": 60}
                ).json()["id"]
                counts = {}
                expected = {"ready": ready, "running": [busy]}
                for t in triggers:
                    conn = servers.redis_for(t["metadata"]["address"], t["metadata"]["databaseIndex"])
                    with conn:
                        counts[t["name"]] = keda_count(conn, t["metadata"]["listName"])
                        members = " ".join(conn.zrange(t["metadata"]["listName"], 0, -1))
                    for task_id in expected[t["name"]]:
                        assert task_id in members, f"{t['name']}: {task_id} is not in {t['metadata']['listName']}"
                    assert delayed not in members, "a delayed task must not keep workers up"
            finally:
                worker.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                client.post(f"/api/v1/tasks/{busy}/cancel")
                poll(
                    lambda: client.get(f"/api/v1/tasks/{busy}").json()["status"] == "canceled" or None,
                    timeout=30,
                    what="the long task to be canceled",
                )
    assert counts == {"ready": ("zset", 3), "running": ("zset", 1)}, counts
    # KEDA's composite metric: the scalingModifiers formula over the named triggers' values
    mod = find(rendered.docs, "ScaledObject", "-worker")["spec"]["advanced"]["scalingModifiers"]
    value = eval(mod["formula"], {"__builtins__": {}}, {k: n for k, (_kind, n) in counts.items()})
    assert value == 4, "ready + running"
    assert value > float(mod["activationTarget"]), "the backlog would not activate the workers"


# --- worker pools: each ScaledObject counts exactly its queues' ready + running jobs -------------------------------

POOL_SETS = (
    "worker.pools[0].name=fast",
    "worker.pools[0].queues={default}",
    "worker.pools[1].name=reports",
    "worker.pools[1].queues={reports,exports}",
)


@pytest.fixture(scope="module")
def rendered_pools(helm4: Helm) -> list[dict[str, Any]]:
    return parse_docs(helm4.template(CONTRACT_VALUES, sets=POOL_SETS).stdout)


def pool_metric(client_for: Callable[[str, str], redis.Redis], scaled_object: dict[str, Any]) -> float:
    """KEDA's composite metric for one ScaledObject: its formula over what each trigger's key holds."""
    values = {}
    for t in scaled_object["spec"]["triggers"]:
        with client_for(t["metadata"]["address"], t["metadata"]["databaseIndex"]) as conn:
            values[t["name"]] = keda_count(conn, t["metadata"]["listName"])[1]
    formula = scaled_object["spec"]["advanced"]["scalingModifiers"]["formula"]
    return float(eval(formula, {"__builtins__": {}}, values))


def test_pool_triggers_count_their_queues_ready_and_running_only(
    rendered_pools: list[dict[str, Any]], contract_servers: Servers, redis_db: redis.Redis
) -> None:
    from taskproc.config import Settings
    from taskproc.queue import queue_running_key, ready_key

    docs = rendered_pools
    servers = contract_servers
    redis_db.flushdb()
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    reports, fast = scaled["taskproc-worker-reports"], scaled["taskproc-worker-fast"]
    # the queues the pool's worker takes from, as the app reads its env, are the ones whose keys KEDA reads
    worker_c = container(find(docs, "Deployment", "-worker-reports"), "worker")
    env = container_env(worker_c, secret_data(docs), servers.swap)
    queues = Settings.model_validate({"worker_queues": env["TASKPROC_WORKER_QUEUES"]}).worker_queues
    assert set(queues) == {"reports", "exports"}
    keys = {t["metadata"]["listName"] for t in reports["spec"]["triggers"]}
    assert keys == {ready_key(q) for q in queues} | {queue_running_key(q) for q in queues}
    worker_db = urlsplit(env["TASKPROC_REDIS_URL"]).path.lstrip("/")
    assert {t["metadata"]["databaseIndex"] for t in reports["spec"]["triggers"]} == {worker_db}

    def jobs(key: str, n: int) -> None:
        redis_db.zadd(key, {f"{key}#{i}": i for i in range(n)})

    # the pool's own work
    jobs("taskproc:queue:reports", 3)
    jobs("taskproc:running:reports", 1)
    jobs("taskproc:queue:exports", 2)
    jobs("taskproc:running:exports", 2)
    # work the pool must not scale for: a paused queue's jobs, other queues, deferred jobs
    jobs("taskproc:paused:reports", 5)
    jobs("taskproc:deferred:reports", 4)
    jobs("arq:queue", 6)
    jobs("taskproc:running:default", 1)
    jobs("taskproc:queue:video", 7)
    jobs("taskproc:running:video", 2)
    jobs("taskproc:running", 1 + 2 + 1 + 2)  # every queue's running jobs
    assert pool_metric(servers.redis_for, reports) == 3 + 1 + 2 + 2
    assert pool_metric(servers.redis_for, fast) == 6 + 1
    activation = float(reports["spec"]["advanced"]["scalingModifiers"]["activationTarget"])

    # pausing reports moves its ready jobs to taskproc:paused:reports: they no longer count, running ones still do
    for member in redis_db.zrange("taskproc:queue:reports", 0, -1):
        redis_db.zadd("taskproc:paused:reports", {member: 0})
        redis_db.zrem("taskproc:queue:reports", member)
    assert pool_metric(servers.redis_for, reports) == 1 + 2 + 2
    # both queues paused and nothing running: the pool is not activated from zero
    for member in redis_db.zrange("taskproc:queue:exports", 0, -1):
        redis_db.zadd("taskproc:paused:exports", {member: 0})
        redis_db.zrem("taskproc:queue:exports", member)
    redis_db.delete("taskproc:running:reports", "taskproc:running:exports")
    assert pool_metric(servers.redis_for, reports) == 0
    assert not pool_metric(servers.redis_for, reports) > activation
    assert pool_metric(servers.redis_for, fast) == 6 + 1, "the other pool is untouched"
    redis_db.flushdb()


@pytest.fixture(scope="module")
def rendered_pools_ports(helm4: Helm) -> Rendered:
    api_port, metrics_port = free_port(), free_port()
    sets = (*POOL_SETS, f"api.port={api_port}", f"worker.metricsPort={metrics_port}", "api.replicaCount=1")
    return Rendered(parse_docs(helm4.template(CONTRACT_VALUES, sets=sets).stdout), api_port, metrics_port)


def test_a_pool_worker_takes_only_its_queues_and_its_scaled_object_counts_them(
    rendered_pools_ports: Rendered, contract_servers: Servers, redis_db: redis.Redis, tmp_path: Path
) -> None:
    """The rendered `reports` pool's worker, run as its Deployment says, against the real API: it takes only its
    queues, and its ScaledObject's formula over the keys the worker and the API write counts exactly its queues'
    ready and running tasks, nothing of another queue, and nothing of its queue once that is paused."""
    rendered, servers = rendered_pools_ports, contract_servers
    redis_db.flushdb()
    docs = rendered.docs
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}["taskproc-worker-reports"]
    api_c = container(find(docs, "Deployment", "-api"), "api")
    worker_c = container(find(docs, "Deployment", "-worker-reports"), "worker")
    api = Pod("api", api_c, rendered.env_for(api_c, servers), tmp_path)
    worker = Pod("worker", worker_c, rendered.env_for(worker_c, servers), tmp_path)

    def submit(client: httpx.Client, queue: str, **body: Any) -> str:
        resp = client.post("/api/v1/tasks", json={"type": "sleep", "queue": queue, **body})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    with running(api), api_client(rendered.api_port) as client:
        api.check_probes()
        with running(worker):
            busy = submit(client, "reports", payload={"duration_ms": 60_000})
            poll(
                lambda: client.get(f"/api/v1/tasks/{busy}").json()["status"] == "running" or None,
                timeout=60,
                what="the pool's worker to take its queue's task",
            )
            worker.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]  # no new task is taken now
            try:
                for _ in range(2):
                    submit(client, "reports", payload={"duration_ms": 0})
                for _ in range(3):
                    submit(client, "exports", payload={"duration_ms": 0})
                for q in ("video", "default"):
                    submit(client, q, payload={"duration_ms": 0})
                submit(client, "exports", payload={"duration_ms": 0}, delay_s=600)
                assert pool_metric(servers.redis_for, scaled) == 1 + 2 + 3, "running + ready of reports and exports"
                assert client.post("/api/v1/queues/exports/pause").status_code == 200
                assert pool_metric(servers.redis_for, scaled) == 1 + 2, "a paused queue does not scale the pool"
                assert client.post("/api/v1/queues/exports/resume").status_code == 200
                assert pool_metric(servers.redis_for, scaled) == 1 + 2 + 3
            finally:
                worker.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            poll(
                lambda: (
                    client.get("/api/v1/stats", params={"queue": "exports"}).json()["tasks"]["completed"] == 3 or None
                ),
                timeout=60,
                what="the pool's worker to run the exports tasks",
            )
            client.post(f"/api/v1/tasks/{busy}/cancel")
            poll(
                lambda: client.get(f"/api/v1/tasks/{busy}").json()["status"] == "canceled" or None,
                timeout=30,
                what="the long task to be canceled",
            )
            assert pool_metric(servers.redis_for, scaled) == 0, "the pool's work is done"
            video = client.get("/api/v1/stats", params={"queue": "video"}).json()["tasks"]
            assert video["pending"] == 1 and video["completed"] == 0, "not the pool's queue: left alone"
    redis_db.flushdb()
