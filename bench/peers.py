"""The peers on the same Redis: bare arq (defaults and tuned) and Celery (prefork), draining N no-op jobs.

Every peer is measured the same way as taskproc's drain: N jobs are queued while no worker runs, then the
worker starts; the rate is (jobs - 1) / (last completion - first completion), with the completion times the
system itself records (arq's JobResult.finish_time, Celery's date_done, taskproc's finished_at). The time from
launching the worker process to the last completion is reported too.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_sync
from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import deserialize_result

from bench.counters import Counters
from bench.http import summarize_ms
from bench.procs import Monitor, Proc, wait_until
from bench.stack import Servers

ROOT = Path(__file__).resolve().parents[1]
CELERY_VENV = ROOT / ".bench-venvs" / "celery"
CELERY_REQUIREMENTS = ["celery[redis]>=5.4", "redis>=6.1"]

ARQ_CONFIGS = {
    "arq-defaults": {"max_jobs": 10, "poll_delay": 0.5},
    "arq-tuned": {"max_jobs": 100, "poll_delay": 0.01},
}


def _flush(url: str) -> None:
    with redis_sync.Redis.from_url(url) as r:
        r.flushdb()


# ---- arq ----------------------------------------------------------------------------------------------


async def _arq_enqueue(url: str, n: int) -> tuple[list[str], float]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    ids: list[str] = []
    t0 = time.perf_counter()
    try:
        for start in range(0, n, 200):
            jobs = await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(min(200, n - start))))
            ids.extend(j.job_id for j in jobs if j is not None)
    finally:
        await pool.aclose()
    return ids, time.perf_counter() - t0


async def _arq_results(url: str, ids: list[str]) -> list[Any]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    out = []
    try:
        for start in range(0, len(ids), 2000):
            raw = await pool.mget([f"arq:result:{i}" for i in ids[start : start + 2000]])
            out.extend(deserialize_result(r) for r in raw if r is not None)
    finally:
        await pool.aclose()
    return out


async def _arq_pickup(url: str, samples: int) -> dict[str, Any]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    rng = random.Random(7)
    pick: list[float] = []
    total: list[float] = []
    try:
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            job = await pool.enqueue_job("noop")
            assert job is not None
            await job.result(timeout=30, poll_delay=0.002)
            info = await job.result_info()
            assert info is not None
            pick.append((info.start_time - info.enqueue_time).total_seconds())
            total.append((info.finish_time - info.enqueue_time).total_seconds())
    finally:
        await pool.aclose()
    return {"pickup": summarize_ms(pick), "submit_to_finished": summarize_ms(total)}


def run_arq(
    name: str, servers: Servers, monitor: Monitor, log_dir: Path, *, n: int, pickup_samples: int, timeout: float
) -> dict[str, Any]:
    cfg = ARQ_CONFIGS[name]
    url = servers.redis_url(name)
    _flush(url)
    ids, enqueue_s = asyncio.run(_arq_enqueue(url, n))
    argv = [
        sys.executable,
        "-m",
        "bench.peer_arq",
        "--redis-url",
        url,
        "--max-jobs",
        str(cfg["max_jobs"]),
        "--poll-delay",
        str(cfg["poll_delay"]),
    ]
    proc = Proc(name, argv, dict(os.environ), log_dir, cwd=ROOT)
    monitor.watch(name, lambda: [proc.pid] if proc.alive() else [])
    counters = Counters(servers, monitor)
    before = counters.snapshot()
    launch = time.time()
    proc.start()
    try:
        with redis_sync.Redis.from_url(url) as r:

            def drained() -> bool:
                if not proc.alive():
                    raise RuntimeError(f"{name} worker exited:\n{proc.tail()}")
                return r.zcard("arq:queue") == 0

            wait_until(drained, timeout=timeout, what=f"{name} to drain {n} jobs", interval=0.1)
        after = counters.snapshot()
        results = asyncio.run(_arq_results(url, ids))
        finished = sorted(res.finish_time.timestamp() for res in results)
        ok = sum(1 for res in results if res.success)
        span = finished[-1] - finished[0]
        out: dict[str, Any] = {
            "config": cfg,
            "tasks": n,
            "completed": ok,
            "enqueue_s": round(enqueue_s, 3),
            "drain_s": round(span, 3),
            "tasks_per_s": round((len(finished) - 1) / span, 1) if span > 0 else 0.0,
            "launch_to_last_s": round(finished[-1] - launch, 3),
            "tasks_per_s_incl_startup": round(len(finished) / (finished[-1] - launch), 1),
            "cost": counters.per_task(before, after, len(finished)),
        }
        if pickup_samples:
            out["latency"] = asyncio.run(_arq_pickup(url, pickup_samples))
        return out
    finally:
        proc.stop()
        monitor.watch(name, lambda: [])
        _flush(url)


# ---- Celery --------------------------------------------------------------------------------------------


def _celery_python() -> Path:
    return CELERY_VENV / "bin" / "python"


def ensure_celery_venv(log: Any = print) -> dict[str, str]:
    """Create .bench-venvs/celery on first use (Celery and redis-py >= 6.1 clash with arq's redis pin)."""
    marker = CELERY_VENV / ".bench-installed"
    if not marker.exists():
        log(f"creating {CELERY_VENV} (python -m venv + pip install {' '.join(CELERY_REQUIREMENTS)}) ...")
        CELERY_VENV.parent.mkdir(parents=True, exist_ok=True)
        # Keep the directory out of git without touching the repository's .gitignore.
        (CELERY_VENV.parent / ".gitignore").write_text("*\n")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CELERY_VENV)], check=True)
        subprocess.run(
            [
                str(_celery_python()),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *CELERY_REQUIREMENTS,
            ],
            check=True,
        )
        marker.write_text("ok\n")
    versions = subprocess.run(
        [
            str(_celery_python()),
            "-c",
            "import json, celery, kombu, redis; print(json.dumps({'celery': celery.__version__, "
            "'kombu': kombu.__version__, 'redis-py': redis.__version__}))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(versions.stdout))


def _celery_env(servers: Servers, *, backend: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PYTHONPATH=str(ROOT),
        BENCH_CELERY_BROKER=servers.redis_url("celery-broker"),
        BENCH_CELERY_BACKEND=servers.redis_url("celery-backend") if backend else "",
    )
    return env


def _celery_finish_times(url: str) -> tuple[list[float], int]:
    times: list[float] = []
    ok = 0
    with redis_sync.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match="celery-task-meta-*", count=5000))
        for start in range(0, len(keys), 2000):
            for raw in r.mget(keys[start : start + 2000]):
                if raw is None:
                    continue
                meta = json.loads(raw)
                ok += meta.get("status") == "SUCCESS"
                done = datetime.fromisoformat(meta["date_done"])
                if done.tzinfo is None:  # Celery stores UTC
                    done = done.replace(tzinfo=UTC)
                times.append(done.timestamp())
    return sorted(times), ok


def run_celery(
    servers: Servers,
    monitor: Monitor,
    log_dir: Path,
    *,
    n: int,
    concurrency: int,
    pickup_samples: int,
    timeout: float,
) -> dict[str, Any]:
    versions = ensure_celery_venv()
    broker, backend = servers.redis_url("celery-broker"), servers.redis_url("celery-backend")
    _flush(broker)
    _flush(backend)
    enq = subprocess.run(
        [str(_celery_python()), "-m", "bench.peer_celery", "enqueue", str(n)],
        env=_celery_env(servers, backend=False),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    enqueue_s = json.loads(enq.stdout.strip().splitlines()[-1])["elapsed_s"]
    argv = [
        str(CELERY_VENV / "bin" / "celery"),
        "-A",
        "bench.peer_celery",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "--loglevel=WARNING",
        "-n",
        "bench@%h",
    ]
    proc = Proc("celery", argv, _celery_env(servers, backend=True), log_dir, cwd=ROOT)
    monitor.watch("celery", lambda: [proc.pid] if proc.alive() else [])
    counters = Counters(servers, monitor)
    before = counters.snapshot()
    launch = time.time()
    proc.start()
    try:
        with redis_sync.Redis.from_url(backend) as r:

            def drained() -> bool:
                if not proc.alive():
                    raise RuntimeError(f"celery worker exited:\n{proc.tail()}")
                return bool(r.dbsize() >= n)

            wait_until(drained, timeout=timeout, what=f"celery to drain {n} tasks", interval=0.1)
        after = counters.snapshot()
        finished, ok = _celery_finish_times(backend)
        span = finished[-1] - finished[0]
        out: dict[str, Any] = {
            "config": {"pool": "prefork", "concurrency": concurrency, **versions},
            "tasks": n,
            "completed": ok,
            "enqueue_s": round(enqueue_s, 3),
            "drain_s": round(span, 3),
            "tasks_per_s": round((len(finished) - 1) / span, 1) if span > 0 else 0.0,
            "launch_to_last_s": round(finished[-1] - launch, 3),
            "tasks_per_s_incl_startup": round(len(finished) / (finished[-1] - launch), 1),
            "cost": counters.per_task(before, after, len(finished)),
        }
        if pickup_samples:
            res = subprocess.run(
                [str(_celery_python()), "-m", "bench.peer_celery", "pickup", str(pickup_samples)],
                env=_celery_env(servers, backend=True),
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            samples = json.loads(res.stdout.strip().splitlines()[-1])
            out["latency"] = {
                "pickup": summarize_ms([s["pickup_s"] for s in samples]),
                "submit_to_finished": summarize_ms([s["finished_s"] for s in samples]),
            }
        return out
    finally:
        proc.stop(timeout=30)
        monitor.watch("celery", lambda: [])
        _flush(broker)
        _flush(backend)
