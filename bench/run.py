"""`python -m bench`: taskproc, bare arq and Celery measured in one run on the same machine.

Starts its own embedded Postgres and Redis in a temporary directory, runs the peers, then taskproc (API and
workers as real processes), then the read-latency test on a large table; prints a markdown report and writes
bench/results/<timestamp>.json and bench/results/latest.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis as redis_sync

from bench import peers, report, scale, taskproc_phases
from bench.counters import Counters
from bench.procs import Monitor
from bench.stack import Servers, TaskprocStack

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

NOTES = [
    "Ratios are what count: every system runs in the same process on the same machine, one after another.",
    "Postgres runs with fsync=off and full_page_writes=off (embedded, fast=True); Redis without persistence. "
    "Both apply to every system alike.",
    "taskproc processes run with TASKPROC_LOG_LEVEL=warning (no per-task log line); the arq and Celery workers "
    "log at WARNING too.",
    "The load generator is this process (a raw asyncio HTTP/1.1 client) on the same 2 cores; its CPU is listed "
    "as bench-client.",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="no-op tasks per throughput run (default 10000; smoke 200)")
    p.add_argument("-w", "--workers", type=int, default=2, help="taskproc worker processes (default 2)")
    p.add_argument("-k", "--clients", type=int, default=32, help="concurrent clients for single POSTs (default 32)")
    p.add_argument("--rate", type=float, default=200.0, help="paced single-POST rate, req/s (default 200)")
    p.add_argument("--submit-seconds", type=float, default=None, help="duration of each submit test (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="tasks per batch POST (default 500; smoke 100)")
    p.add_argument("--pickup-samples", type=int, default=None, help="taskproc pickup samples (default 200)")
    p.add_argument("--peer-pickup-samples", type=int, default=None, help="pickup samples per peer (default 50)")
    p.add_argument("--peers", default=None, help="comma list of arq,celery or 'none' (default arq,celery; smoke arq)")
    p.add_argument("--celery-concurrency", type=int, default=2, help="Celery prefork children (default 2)")
    p.add_argument("--scale-rows", type=int, default=1_000_000, help="task rows for the read test (default 1M)")
    p.add_argument("--scale-requests", type=int, default=200, help="sequential requests per read endpoint")
    p.add_argument("--skip-scale", action="store_true", help="skip the large-table read test")
    p.add_argument("--skip-taskproc", action="store_true", help="measure the peers only")
    p.add_argument("--smoke", action="store_true", help="tiny run (< 60 s): N=200, arq peer only, no scale test")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the first worker for SECONDS during the end-to-end run, and collect pg_stat_statements "
        "(numbers from a profiled run are not reference numbers)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    p.add_argument(
        "--report", type=Path, default=None, metavar="JSON", help="only re-render the report of a results file"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (server and process logs)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for any one drain")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "n": 200 if smoke else 10_000,
        "submit_seconds": 2.0 if smoke else 10.0,
        "batch_size": 100 if smoke else 500,
        "pickup_samples": 10 if smoke else 200,
        "peer_pickup_samples": 5 if smoke else 50,
        "peers": "arq" if smoke else "arq,celery",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if smoke:
        args.skip_scale = True
    args.peer_list = [] if args.peers == "none" else [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(args.peer_list) - {"arq", "celery"}
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    return args


def _versions(servers: Servers) -> dict[str, str]:
    out = {}
    for dist in ("taskproc", "arq", "redis", "fastapi", "uvicorn", "sqlalchemy", "psycopg", "pydantic", "hiredis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    with psycopg.connect(servers.pg.url_for("postgres")) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        out["postgres"] = row[0] if row else "?"
    with redis_sync.Redis(port=servers.redis.port) as r:
        out["redis-server"] = str(r.info("server")["redis_version"])
    return out


def _git() -> dict[str, Any]:
    """Which code was measured: the commit, and a digest of uncommitted changes under src/ if any."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "src")
    out: dict[str, Any] = {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "src_dirty": bool(diff)}
    if diff:
        out["src_diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:12]
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _phase(name: str, results: dict[str, Any], fn: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded and the run goes on with the others."""
    log(f"{name} ...")
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        log(f"{name} FAILED: {exc!r}")
        results.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))[-4000:]
        return None
    log(f"{name} done in {time.perf_counter() - t0:.1f}s")
    return value


def _start_profile(stack: TaskprocStack, seconds: float, out_dir: Path, stamp: str) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists() or not stack.workers:
        log("py-spy not found (pip install py-spy); profiling skipped")
        return None
    target = out_dir / f"profile-worker-{stamp}.txt"
    argv = [py_spy, "record", "--nonblocking", "-r", "200", "-d", str(int(seconds)), "-f", "raw"]
    argv += ["-o", str(target), "--pid", str(stack.workers[0].pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_peers(
    args: argparse.Namespace, servers: Servers, monitor: Monitor, log_dir: Path, results: dict[str, Any]
) -> None:
    """The peers first, while no taskproc process is running."""
    if "arq" in args.peer_list:
        for name in ("arq-defaults", "arq-tuned"):
            res = _phase(
                f"peer {name}: drain {args.n}",
                results,
                lambda name=name: peers.run_arq(  # type: ignore[misc]
                    name,
                    servers,
                    monitor,
                    log_dir,
                    n=args.n,
                    pickup_samples=args.peer_pickup_samples,
                    timeout=args.timeout,
                ),
            )
            if res:
                results["peers"][name] = res
                log(f"  {name}: {res['tasks_per_s']} tasks/s")
    if "celery" in args.peer_list:
        res = _phase(
            f"peer celery: drain {args.n}",
            results,
            lambda: peers.run_celery(
                servers,
                monitor,
                log_dir,
                n=args.n,
                concurrency=args.celery_concurrency,
                pickup_samples=args.peer_pickup_samples,
                timeout=args.timeout,
            ),
        )
        if res:
            results["peers"]["celery"] = res
            log(f"  celery: {res['tasks_per_s']} tasks/s")


def _run_submit_phases(
    args: argparse.Namespace,
    st: TaskprocStack,
    results: dict[str, Any],
    costed: Callable[[Callable[[], Coroutine[Any, Any, dict[str, Any]]]], dict[str, Any]],
) -> None:
    """Single POSTs from concurrent clients (closed loop), then paced at a fixed rate (open loop); no workers."""
    tp = results["taskproc"]
    res = _phase(
        f"taskproc submit: single POST, {args.clients} clients, {args.submit_seconds:g}s",
        results,
        lambda: costed(lambda: taskproc_phases.submit_single(st, clients=args.clients, duration_s=args.submit_seconds)),
    )
    if res:
        tp["submit_single"] = res
        log(f"  {res['throughput_rps']} req/s, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms")
    res = _phase(
        f"taskproc submit: single POST paced at {args.rate:g}/s",
        results,
        lambda: costed(lambda: taskproc_phases.submit_paced(st, rate=args.rate, duration_s=args.submit_seconds)),
    )
    if res:
        tp["submit_paced"] = res
        log(f"  p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, errors {res['errors']}")


def _run_scale(args: argparse.Namespace, st: TaskprocStack, counters: Counters, results: dict[str, Any]) -> None:
    """Load a large task table, then time the reads the dashboard makes against it."""
    load = _phase(
        f"scale: load {args.scale_rows:,} task rows",
        results,
        lambda: scale.load(st.database_url, args.scale_rows, log),
    )
    if load:
        ids = load.pop("_sample_ids")
        before = counters.snapshot()
        lat = _phase(
            "scale: read latency",
            results,
            lambda: _run(scale.measure(st, ids, requests=args.scale_requests)),
        )
        requests = sum(v["count"] for v in (lat or {}).values()) or 1
        results["scale"] = {
            "load": load,
            "latency": lat or {},
            "cost": counters.per_task(before, counters.snapshot(), requests),
            "explain": scale.explain(st.database_url),
        }


# Keys of the limits run: each with max_running 8 and 1000 starts/s, so the limits cost work but never bind.
LIMIT_KEYS = 200


def _run_end_to_end_and_pickup(
    args: argparse.Namespace, st: TaskprocStack, counters: Counters, results: dict[str, Any], stamp: str
) -> None:
    """Batches through the API to running workers (optionally profiled), then the idle pickup latency."""
    tp = results["taskproc"]
    profiler = _start_profile(st, args.profile, args.out, stamp) if args.profile else None
    res = _phase(
        f"taskproc end to end: {args.n} tasks in batches of {args.batch_size}",
        results,
        lambda: _run(
            taskproc_phases.end_to_end(st, counters, n=args.n, batch_size=args.batch_size, timeout=args.timeout)
        ),
    )
    if profiler is not None:
        profiler.wait(args.profile + 30)
        results["profile"] = str(args.out / f"profile-worker-{stamp}.txt")
    if res:
        tp["end_to_end"] = res
        log(f"  {res['tasks_per_s']} tasks/s")

    # The same run with every task under a per-key limit (many keys, limits that never bind): what enforcing them
    # costs, as a ratio to the run above.
    keys = LIMIT_KEYS if not args.smoke else 10

    def limited() -> dict[str, Any]:
        _run(taskproc_phases.put_limits(st, keys=keys, max_running=8, rate_per_s=1000.0))
        out = _run(
            taskproc_phases.end_to_end(
                st, counters, n=args.n, batch_size=args.batch_size, timeout=args.timeout, keys=keys
            )
        )
        return {**out, "keys": keys, "max_running": 8, "rate_per_s": 1000.0}

    res = _phase(f"taskproc end to end with per-key limits: {args.n} tasks over {keys} keys", results, limited)
    if res:
        tp["end_to_end_limited"] = res
        log(f"  {res['tasks_per_s']} tasks/s")

    res = _phase(
        f"taskproc pickup latency: {args.pickup_samples} samples",
        results,
        lambda: _run(taskproc_phases.pickup(st, samples=args.pickup_samples)),
    )
    if res:
        tp["pickup"] = res
        log(f"  p50 {res['pickup']['p50_ms']} ms, p99 {res['pickup']['p99_ms']} ms")


def run_taskproc(
    args: argparse.Namespace,
    stack: TaskprocStack,
    servers: Servers,
    monitor: Monitor,
    results: dict[str, Any],
    stamp: str,
) -> None:
    """Submit, drain, end to end, pickup latency, then the large-table reads; API and workers as processes."""
    stack.migrate()
    if args.profile:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    stack.start_api()
    counters = Counters(servers, monitor, stack.database_url, statements=bool(args.profile))
    tp = results["taskproc"]
    st = stack

    def costed(coro_fn: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
        before = counters.snapshot()
        out = _run(coro_fn())
        out["cost"] = counters.per_task(before, counters.snapshot(), out["count"])
        return out

    _run_submit_phases(args, st, results, costed)

    # The submit tests left tasks behind: let workers run them, so the drain below starts from empty.
    def clear_backlog() -> None:
        st.start_workers(args.workers)
        deadline = time.monotonic() + args.timeout
        while st.stats()["tasks"]["pending"] + st.stats()["tasks"]["running"] > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("backlog from the submit tests did not drain")
            time.sleep(0.2)
        st.stop_workers()

    _phase("taskproc: run the submit tests' backlog", results, clear_backlog)

    res = _phase(
        f"taskproc drain: batch-submit {args.n}, then start {args.workers} workers",
        results,
        lambda: _run(
            taskproc_phases.drain(
                st,
                counters,
                n=args.n,
                workers=args.workers,
                batch_size=1000 if not args.smoke else args.batch_size,
                timeout=args.timeout,
            )
        ),
    )
    if res:
        tp["drain"] = res
        log(f"  batch submit {res['batch_submit']['tasks_per_s']} tasks/s; drain {res['tasks_per_s']} tasks/s")
    if not stack.workers:
        stack.start_workers(args.workers)

    _run_end_to_end_and_pickup(args, st, counters, results, stamp)
    stack.stop_workers()

    if not args.skip_scale:
        _run_scale(args, st, counters, results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        results = json.loads(args.report.read_text())
        results["targets"] = report.targets(results)
        print(report.markdown(results))
        return 0
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="taskproc-bench-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    args.out.mkdir(parents=True, exist_ok=True)
    pg_settings = {"shared_preload_libraries": "pg_stat_statements"} if args.profile else None
    servers = Servers(tmp, pg_settings=pg_settings)
    monitor = Monitor()
    results: dict[str, Any] = {"taskproc": {}, "peers": {}}
    stack: TaskprocStack | None = None
    log(f"work dir {tmp}; N={args.n}, W={args.workers}, K={args.clients}, peers={args.peer_list or 'none'}")
    try:
        servers.start()
        monitor.watch("postgres", servers.pg_pids)
        monitor.watch("redis", servers.redis_pids)
        monitor.start()
        results["meta"] = {
            "started": started.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "versions": _versions(servers),
            "git": _git(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "notes": NOTES,
        }
        results["meta"]["postgres"] = results["meta"]["versions"]["postgres"]
        results["meta"]["redis"] = results["meta"]["versions"]["redis-server"]

        run_peers(args, servers, monitor, log_dir, results)
        if not args.skip_taskproc:
            stack = TaskprocStack(servers, log_dir, monitor)
            run_taskproc(args, stack, servers, monitor, results, stamp)
    except Exception as exc:
        log(f"benchmark aborted: {exc!r}")
        results.setdefault("errors", {})["aborted"] = "".join(traceback.format_exception(exc))[-4000:]
        if stack is not None:
            print(stack.logs(), file=sys.stderr)
    finally:
        if stack is not None:
            stack.stop()
        monitor.stop()
        servers.stop()

    # Postgres is left out: every backend's RSS counts the shared buffers it touched, so a sum means nothing.
    peaks = {role: round(v / report.MB, 1) for role, v in monitor.peak_rss.items() if role != "postgres"}
    results["memory"] = {"api_mb": peaks.get("api"), "worker_mb": peaks.get("worker"), "roles_mb": peaks}
    results["duration_s"] = round(time.perf_counter() - t_start, 1)
    results["targets"] = report.targets(results)
    md = report.markdown(results)
    json_path = args.out / f"{stamp}{'-smoke' if args.smoke else ''}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not args.smoke:
        (args.out / "latest.md").write_text(md)
    print(md)
    log(f"results: {json_path}")
    if args.keep:
        log(f"logs kept in {log_dir}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
