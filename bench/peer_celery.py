"""Celery peer: the app its worker imports, and the enqueue / pickup clients. Runs in .bench-venvs/celery.

Only the standard library and Celery are imported here: this module is loaded by the Celery virtual
environment, where taskproc is not installed (kombu wants redis-py >= 6.1, arq pins redis < 6).

    celery -A bench.peer_celery worker -P prefork -c 2      (BENCH_CELERY_BROKER / BENCH_CELERY_BACKEND)
    python -m bench.peer_celery enqueue N                     (no result backend: publishing only)
    python -m bench.peer_celery pickup SAMPLES                (prints JSON latencies in seconds)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import UTC, datetime

from celery import Celery

app = Celery(
    "bench_peer",
    broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/3"),
    backend=os.environ.get("BENCH_CELERY_BACKEND") or None,
)
# Celery's defaults otherwise (prefetch multiplier 4, acks on receipt, JSON serialiser, results kept 1 day).
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop")
def noop() -> float:
    """The no-op task; returns when it started, for the pickup measurement."""
    return time.time()


def enqueue(n: int) -> None:
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(producer=producer)
    print(json.dumps({"enqueued": n, "elapsed_s": time.perf_counter() - t0}))


def pickup(samples: int) -> None:
    rng = random.Random(7)
    out = []
    for _ in range(samples):
        time.sleep(rng.uniform(0.05, 0.3))
        sent = time.time()
        result = noop.apply_async()
        started = result.get(timeout=30)
        done = result.date_done
        if not isinstance(done, datetime):
            done = datetime.fromisoformat(str(done))
        if done.tzinfo is None:  # Celery stores UTC
            done = done.replace(tzinfo=UTC)
        done_ts = done.timestamp()
        out.append({"pickup_s": started - sent, "finished_s": done_ts - sent})
    print(json.dumps(out))


if __name__ == "__main__":
    command, count = sys.argv[1], int(sys.argv[2])
    {"enqueue": enqueue, "pickup": pickup}[command](count)
