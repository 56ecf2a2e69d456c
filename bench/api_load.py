"""taskproc's single POST against the minimal reference endpoint (bench/minimal_api.py), side by side.

Both run as one uvicorn process each on the same embedded Postgres and Redis, one after the other in
alternating rounds (a shared machine's noise then falls on both alike). Per system and round:

- closed loop: K keep-alive clients for S seconds: requests/s, p50/p99, and the API process's CPU (user +
  system from /proc) per request;
- open loop at a fixed rate (default 200/s) and at half the capacity the closed loop measured, latency from
  each request's scheduled send time (no coordinated omission): p50/p99.

`compare(servers, log_dir)` is what `python -m bench` calls; `python -m bench.api_load` starts its own servers:

    .venv/bin/python -m bench.api_load [--seconds 10] [--clients 32] [--rate 200] [--rounds 2] [--durable]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from taskproc.dev.embedded import free_port

from bench.http import closed_loop, open_loop
from bench.procs import Monitor, Proc, system_busy_s, tree_cpu_s, wait_until
from bench.stack import REDIS_DB, Servers, TaskprocStack

NOOP_BODY = json.dumps({"type": "sleep", "payload": {"duration_ms": 0}}, separators=(",", ":")).encode()
SUBMIT = ("POST", "/api/v1/tasks", NOOP_BODY)
MINIMAL_DB = "minimal_api"
MINIMAL_REDIS_DB = max(REDIS_DB.values()) + 1
TASKPROC_DB = "api_load_taskproc"
TASKPROC_REDIS_DB = MINIMAL_REDIS_DB + 1


def log(msg: str) -> None:
    print(f"[api_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _own_database(servers: Servers, name: str) -> str:
    """A migrated taskproc database of its own on the servers (created if missing): the tasks these tests leave
    behind stay out of the databases the other phases of `python -m bench` measure."""
    from taskproc.config import Settings
    from taskproc.migrate import migrate

    with psycopg.connect(servers.pg.url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {name}")
    url = servers.pg.url.rsplit("/", 1)[0] + f"/{name}"
    migrate(Settings(database_url=url), wait_s=60)
    return url


class MinimalApi:
    """bench/minimal_api.py as a child process, on its own migrated database and Redis db index."""

    def __init__(self, servers: Servers, log_dir: Path) -> None:
        self.servers = servers
        self.log_dir = log_dir
        self.port = free_port()
        self.database_url = ""
        self.redis_url = f"redis://127.0.0.1:{servers.redis.port}/{MINIMAL_REDIS_DB}"
        self.proc: Proc | None = None

    def prepare(self) -> None:
        self.database_url = _own_database(self.servers, MINIMAL_DB)

    def start(self) -> None:
        argv = [sys.executable, "-m", "bench.minimal_api", "--port", str(self.port)]
        argv += ["--database-url", self.database_url, "--redis-url", self.redis_url]
        root = Path(__file__).parents[1]
        self.proc = Proc("minimal-api", argv, {**os.environ, "PYTHONPATH": str(root)}, self.log_dir, cwd=root)
        self.proc.start()
        wait_until(lambda: _ready(self.proc, self.port), timeout=60, what="minimal API /readyz")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _ready(proc: Proc | None, port: int) -> bool:
    assert proc is not None
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
        return bool(r.status == 200)


def _measure(pid: int, servers: Servers, run: Callable[[], Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a load (an awaitable factory): its summary, and the CPU seconds meanwhile of the API process, of
    Postgres and Redis (all their processes), and of the whole machine (`busy`: other people's work too)."""

    def cpu() -> dict[str, float]:
        return {
            "api": tree_cpu_s(pid),
            "postgres": sum(tree_cpu_s(p) for p in servers.pg_pids()),
            "redis": sum(tree_cpu_s(p) for p in servers.redis_pids()),
            "busy": system_busy_s(),
        }

    before = cpu()
    summary = _loop_run(run())
    after = cpu()
    return summary, {k: after[k] - before[k] for k in after}


def _loop_run(coro: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        res = asyncio.run(coro)
    else:
        res = uvloop.run(coro)
    summary: dict[str, Any] = res.summary()
    return summary


def _costs(summary: dict[str, Any], cpu: dict[str, float]) -> dict[str, Any]:
    ok = summary["count"]
    out: dict[str, Any] = {"machine_busy_s": round(cpu["busy"], 2), "api_cpu_s": round(cpu["api"], 3)}
    for role in ("api", "postgres", "redis"):
        out[f"{role}_cpu_ms_per_request"] = round(cpu[role] * 1000 / ok, 3) if ok else None
    return out


def _one_system(
    port: int, pid: int, servers: Servers, *, clients: int, rate: float, seconds: float, profile: Path | None
) -> dict[str, Any]:
    spy = _py_spy(pid, profile, seconds) if profile is not None else None
    closed, cpu = _measure(
        pid, servers, lambda: closed_loop("127.0.0.1", port, lambda: SUBMIT, clients=clients, duration_s=seconds)
    )
    if spy is not None:
        spy.wait(30)
    out: dict[str, Any] = {"closed": {**closed, "clients": clients, **_costs(closed, cpu)}}
    for name, r in (("paced", rate), ("paced_half_capacity", max(10.0, closed["throughput_rps"] / 2))):
        paced, cpu = _measure(
            pid, servers, functools.partial(open_loop, "127.0.0.1", port, lambda: SUBMIT, rate=r, duration_s=seconds)
        )
        out[name] = {**paced, "rate_rps": round(r, 1), **_costs(paced, cpu)}
    return out


def _py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (on PATH or next to this Python) sampling the API process during the closed loop."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250"]
    argv += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _median(rounds: list[dict[str, Any]], phase: str, key: str) -> float | None:
    values = [r[phase][key] for r in rounds if r[phase].get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def compare(
    servers: Servers,
    log_dir: Path,
    *,
    clients: int = 32,
    rate: float = 200.0,
    seconds: float = 10.0,
    rounds: int = 2,
    env: dict[str, str] | None = None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """taskproc's API and the minimal endpoint, `rounds` alternating rounds each (no workers run: both only
    submit), each on a database and Redis db index of its own. Returns every round's figures, the medians, and
    the ratios taskproc / minimal."""
    monitor = Monitor()
    stack = TaskprocStack(servers, log_dir, monitor)
    stack.database_url = _own_database(servers, TASKPROC_DB)
    stack.env["TASKPROC_DATABASE_URL"] = stack.database_url
    stack.env["TASKPROC_REDIS_URL"] = f"redis://127.0.0.1:{servers.redis.port}/{TASKPROC_REDIS_DB}"
    if env:
        stack.env.update(env)
    minimal = MinimalApi(servers, log_dir)
    minimal.prepare()
    stack.start_api()
    minimal.start()
    results: dict[str, list[dict[str, Any]]] = {"taskproc": [], "minimal": []}
    try:
        for i in range(rounds):
            for name, port, pid in (("minimal", minimal.port, minimal.pid), ("taskproc", stack.port, _api_pid(stack))):
                log(f"round {i + 1}/{rounds}: {name}")
                profile = profile_dir / f"{name}-{i + 1}.txt" if profile_dir is not None else None
                res = _one_system(port, pid, servers, clients=clients, rate=rate, seconds=seconds, profile=profile)
                log(
                    f"  {name}: {res['closed']['throughput_rps']} req/s, "
                    f"{res['closed']['api_cpu_ms_per_request']} ms CPU/req, "
                    f"p99 at {rate:g}/s {res['paced']['p99_ms']} ms, "
                    f"p99 at {res['paced_half_capacity']['rate_rps']}/s {res['paced_half_capacity']['p99_ms']} ms"
                )
                results[name].append(res)
    finally:
        minimal.stop()
        stack.stop()
    summary: dict[str, dict[str, float | None]] = {}
    for name, rs in results.items():
        summary[name] = {
            "requests_per_s": _median(rs, "closed", "throughput_rps"),
            "api_cpu_ms_per_request": _median(rs, "closed", "api_cpu_ms_per_request"),
            "postgres_cpu_ms_per_request": _median(rs, "closed", "postgres_cpu_ms_per_request"),
            "redis_cpu_ms_per_request": _median(rs, "closed", "redis_cpu_ms_per_request"),
            "closed_p99_ms": _median(rs, "closed", "p99_ms"),
            f"p99_ms_at_{rate:g}_rps": _median(rs, "paced", "p99_ms"),
            "p99_ms_at_half_capacity": _median(rs, "paced_half_capacity", "p99_ms"),
            "errors": sum(r[p]["errors"] for r in rs for p in ("closed", "paced", "paced_half_capacity")),
        }
    t, m = summary["taskproc"], summary["minimal"]
    ratios = {
        "cpu_per_request": _ratio(t["api_cpu_ms_per_request"], m["api_cpu_ms_per_request"]),
        "requests_per_s": _ratio(t["requests_per_s"], m["requests_per_s"]),
    }
    return {
        "clients": clients,
        "rate_rps": rate,
        "seconds": seconds,
        "rounds": results,
        "summary": summary,
        "ratio_taskproc_over_minimal": ratios,
    }


def _api_pid(stack: TaskprocStack) -> int:
    assert stack.api is not None
    return stack.api.pid


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown table (medians over the rounds)."""
    rate = result["rate_rps"]
    lines = [
        f"Single POST /api/v1/tasks, one uvicorn process each, {result['clients']} clients closed loop, "
        f"{result['seconds']:g} s per phase, median of {len(result['rounds']['taskproc'])} alternating rounds",
        "",
        f"| system | requests/s | API CPU ms/request | Postgres CPU ms/request | p99 closed loop | p99 at {rate:g}/s "
        "| p99 at half capacity | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("taskproc", "minimal"):
        s = result["summary"][name]
        lines.append(
            f"| {name} | {s['requests_per_s']} | {s['api_cpu_ms_per_request']} | {s['postgres_cpu_ms_per_request']} "
            f"| {s['closed_p99_ms']} ms "
            f"| {s[f'p99_ms_at_{rate:g}_rps']} ms | {s['p99_ms_at_half_capacity']} ms | {s['errors']} |"
        )
    r = result["ratio_taskproc_over_minimal"]
    lines += ["", f"taskproc / minimal: CPU per request {r['cpu_per_request']}x, requests/s {r['requests_per_s']}x"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="taskproc's single POST vs the minimal FastAPI endpoint")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--durable", action="store_true", help="Postgres with fsync, full_page_writes, synchronous_commit")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--profile", type=Path, help="py-spy raw stacks of each API's closed loop into this directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (server and process logs)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="taskproc-api-load-"))
    pg_settings = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"} if args.durable else None
    servers = Servers(root, pg_settings=pg_settings)
    log_dir = root / "logs"
    log_dir.mkdir()
    servers.start()
    try:
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        result = compare(
            servers,
            log_dir,
            clients=args.clients,
            rate=args.rate,
            seconds=args.seconds,
            rounds=args.rounds,
            profile_dir=args.profile,
        )
    finally:
        servers.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))


if __name__ == "__main__":
    main()
