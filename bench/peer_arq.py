"""A bare arq worker with one no-op coroutine, the baseline taskproc is compared with.

    python -m bench.peer_arq --redis-url redis://127.0.0.1:6379/1 [--max-jobs 10] [--poll-delay 0.5]

Everything else is arq's default (keep_result 3600 s, pickle serialiser, queue_read_limit max(5*max_jobs, 100)).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker


async def noop(ctx: dict[str, Any]) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--poll-delay", type=float, default=0.5)
    args = parser.parse_args()
    # The same level as the taskproc processes get in the benchmark (arq logs every job at INFO).
    logging.basicConfig(level=logging.WARNING)
    worker = Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        handle_signals=True,
    )
    worker.run()


if __name__ == "__main__":
    main()
