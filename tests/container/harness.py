"""Run the image the way the rendered chart runs it, with podman: the containers' command, args, env and
securityContext come from `helm template`, values of secretKeyRef/configMapKeyRef from the rendered Secrets and
ConfigMaps, `$(VAR)` expanded as the kubelet does. Containers share the host network (the session's embedded
Postgres and Redis listen on 127.0.0.1); the database and Redis URLs are pointed at those servers."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from support import ROOT, Servers, wait_for

CHART = ROOT / "charts" / "taskproc"
RELEASE = "taskproc"
NAMESPACE = "taskproc"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
IMAGE = os.environ.get("TASKPROC_TEST_IMAGE", f"taskproc:{VERSION}")
# Settings that make recovery observable within a test's deadline; everything else is the chart's default.
FAST_VALUES = (
    "config.lease_s=3",
    "config.reconcile_s=2",
    "config.retry_base_s=0.2",
    "worker.shutdownGraceSeconds=2",
)
_names = itertools.count()

Doc = dict[str, Any]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def require_podman() -> None:
    """A missing podman fails the run (the container tests are part of `make test`, .ci/run installs it)."""
    if shutil.which("podman") is None:
        pytest.fail("podman not found: the image tests need it (.ci/run installs podman)", pytrace=False)


def build_image() -> str:
    """Build (or, with podman's layer cache, confirm) the image from the working tree's Dockerfile."""
    require_podman()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image.sh"), IMAGE],
        capture_output=True,
        text=True,
        env={**os.environ, "ENGINE": "podman"},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"scripts/image.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return IMAGE


def helm() -> str:
    path = ROOT / ".tools" / "bin" / "helm"
    found = str(path) if path.exists() else shutil.which("helm")
    if not found:
        pytest.fail("helm not found; run `make tools`", pytrace=False)
    return found


def render(*sets: str) -> list[Doc]:
    """`helm template` of the chart (default values plus `sets`), as a list of manifests."""
    # The chart refuses to render without an image repository (there is no public image to default to).
    repository, _, tag = IMAGE.rpartition(":")
    args = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def component(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]
    assert len(found) == 1, f"expected one {kind} with component {name}, found {len(found)}"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
    return spec


def _expand(value: str, known: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, others stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else known.get(m[1], m[0]), value
    )


def _ref(docs: Iterable[Doc], kind: str, name: str, key: str) -> str:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            if key in d.get("stringData", {}):
                return str(d["stringData"][key])
            if kind == "Secret" and key in d.get("data", {}):
                return base64.b64decode(d["data"][key]).decode()
            if key in d.get("data", {}):
                return str(d["data"][key])
    raise AssertionError(f"{kind} {name} with key {key} is not in the render")


def resolve_env(docs: list[Doc], container: Doc, *, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the rendered objects."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if ref in source:
                obj = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == source[ref]["name"])
                for key in {**obj.get("data", {}), **obj.get("stringData", {})}:
                    env[source.get("prefix", "") + key] = _ref(docs, kind, obj["metadata"]["name"], key)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
            continue
        src = item["valueFrom"]
        if "secretKeyRef" in src:
            env[item["name"]] = _ref(docs, "Secret", src["secretKeyRef"]["name"], src["secretKeyRef"]["key"])
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[item["name"]] = _ref(docs, "ConfigMap", ref["name"], ref["key"])
        elif "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}.get(path, "")
        else:
            raise AssertionError(f"unsupported env source {src}")
    return env


@dataclass
class Target:
    """Where the containers' Postgres and Redis URLs point: an empty database and a Redis db of the session."""

    servers: Servers
    database: str = ""
    redis_db: int = -1

    def __post_init__(self) -> None:
        self.database = f"c{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.redis_db = self.servers.take_redis_db()

    @property
    def database_url(self) -> str:
        return self.servers.pg.url_for(self.database)

    @property
    def redis_url(self) -> str:
        return self.servers.redis.url.rsplit("/", 1)[0] + f"/{self.redis_db}"

    def point(self, env: dict[str, str]) -> dict[str, str]:
        out = dict(env)
        if "TASKPROC_DATABASE_URL" in out:
            out["TASKPROC_DATABASE_URL"] = self.database_url
        if "TASKPROC_REDIS_URL" in out:
            out["TASKPROC_REDIS_URL"] = self.redis_url
        return out

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.servers.give_back_redis_db(self.redis_db)
        with psycopg.connect(self.servers.admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def security_flags(pod: Doc, container: Doc) -> list[str]:
    """podman flags for the pod's and container's securityContext; what the chart sets must be honoured."""
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    flags = ["--read-only-tmpfs=false"]  # only the chart's volumes are writable, as in a pod
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if "runAsUser" in sc:
        flags += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap.lower()]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def volume_flags(pod: Doc, container: Doc) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    flags = []
    for mount in container.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        assert "emptyDir" in vol, f"only emptyDir volumes are run here, not {vol}"
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
    return flags


@dataclass
class Container:
    """One podman container started from a rendered container spec."""

    name: str
    role: str
    spec: Doc
    env: dict[str, str]
    grace_s: int
    started: list[str] = field(default_factory=list)

    def logs(self) -> str:
        out = podman("logs", "--tail", "60", self.name, check=False)
        return out.stdout + out.stderr

    def state(self) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.name, check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def exit_code(self) -> int | None:
        st = self.state()
        return (
            None
            if not st or st.get("Running") or st.get("Status") in ("created", "configured")
            else int(st["ExitCode"])
        )

    def wait_exit(self, timeout: float) -> int:
        return wait_for(
            lambda: (code := self.exit_code()) is not None and (code,), timeout=timeout, what=f"{self.name} to exit"
        )[0]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for p in self.spec.get("ports", []):
            if p.get("name") == name_or_number:
                return int(p["containerPort"])
        raise AssertionError(f"{self.role} has no port named {name_or_number}")

    def url(self, port: str | int) -> str:
        return f"http://127.0.0.1:{self.port(port)}"

    def probe(self, kind: str = "readinessProbe") -> bool:
        """The container's rendered httpGet probe, run from the host (host network)."""
        http = self.spec[kind]["httpGet"]
        try:
            resp = httpx.get(
                self.url(http["port"]) + http["path"], timeout=float(self.spec[kind].get("timeoutSeconds", 1))
            )
        except httpx.HTTPError:
            return False
        return 200 <= resp.status_code < 400

    def kill(self, sig: str = "KILL") -> None:
        podman("kill", "--signal", sig, self.name)

    def stop(self) -> subprocess.CompletedProcess[str]:
        """`podman stop` as the kubelet stops a pod: SIGTERM, SIGKILL after the pod's grace period."""
        return podman("stop", "--time", str(self.grace_s), self.name, timeout=self.grace_s + 60)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


class Runner:
    """Starts containers from rendered manifests and removes them all at the end."""

    def __init__(self, docs: list[Doc], target: Target, image: str) -> None:
        self.docs = docs
        self.target = target
        self.image = image
        self.containers: list[Container] = []

    def start(self, workload: Doc, container_name: str | None = None, *, init: int | None = None) -> Container:
        pod = pod_spec(workload)
        specs = pod.get("initContainers", []) if init is not None else pod["containers"]
        spec = (
            specs[init]
            if init is not None
            else next(c for c in specs if container_name is None or c["name"] == container_name)
        )
        role = f"{workload['metadata']['name']}-{spec['name']}"
        name = f"tp{os.getpid()}-{next(_names)}-{role}"
        env = self.target.point(resolve_env(self.docs, spec, pod_name=name))
        grace = int(pod.get("terminationGracePeriodSeconds", 30))
        argv = ["run", "--detach", "--name", name, "--network", "host", "--stop-timeout", str(grace)]
        argv += security_flags(pod, spec) + volume_flags(pod, spec)
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if "command" in spec:
            argv += ["--entrypoint", json.dumps(spec["command"])]
        argv.append(self.image)
        argv += [_expand(a, env) for a in spec.get("args", [])]
        for port in spec.get("ports", []):
            wait_for(
                lambda n=int(port["containerPort"]): port_free(n),
                timeout=15,
                what=f"host port {port['containerPort']} to be free for {role} (host network)",
            )
        podman(*argv)
        c = Container(name=name, role=role, spec=spec, env=env, grace_s=grace)
        self.containers.append(c)
        return c

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ---\n{c.logs()}" for c in self.containers)

    def close(self) -> None:
        for c in self.containers:
            c.remove()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def api_client(api: Container) -> httpx.Client:
    return httpx.Client(base_url=api.url("http"), timeout=10.0)


def submit(client: httpx.Client, type_: str = "add", payload: dict[str, Any] | None = None) -> str:
    resp = client.post("/api/v1/tasks", json={"type": type_, "payload": payload or {"a": 1, "b": 2}})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def wait_status(client: httpx.Client, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = client.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] in {"completed", "failed", "canceled"} - {status}:
            raise AssertionError(f"task ended {task['status']}: {task}")
        return task if task["status"] == status else None

    return wait_for(check, timeout=timeout, interval=0.2, what=f"task {task_id} {status}")


def iter_hooks(docs: list[Doc], event: str) -> Iterator[Doc]:
    """Hook resources of `event` in Helm's order: weight, then kind, then name."""
    hooks = [
        d
        for d in docs
        if event in [h.strip() for h in d["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")]
    ]
    yield from sorted(
        hooks,
        key=lambda d: (
            int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
            d["kind"],
            d["metadata"]["name"],
        ),
    )
