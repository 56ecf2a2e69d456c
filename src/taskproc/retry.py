"""Retry with the project's one backoff policy, on tenacity: exponential, capped, jittered, and logged.

The policy: the wait after failed attempt n is drawn from [step/2, step] with step = initial_s * 2**(n-1),
capped at max_s ("equal jitter": half fixed, half random), so processes that failed together spread out while
each one's waits never shrink. Every wait is logged as a warning: `<what> (<exception class>), retrying in 0.4s`.

    async for attempt in retry.retrying("postgres unavailable at startup", on=TRANSIENT, logger=log):
        with attempt:
            await register()

    for attempt in retry.retrying_sync("database not reachable yet", on=OperationalError, give_up_after_s=60):
        with attempt:
            connect()

Without `give_up_after_s` it retries forever (cancel the task to stop it); with it, the last exception is
raised as it is once that many seconds have passed since the first attempt. Exceptions not in `on` are raised
at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

log = logging.getLogger("taskproc")

INITIAL_S = 0.2
MAX_S = 5.0

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


def backoff(*, initial_s: float = INITIAL_S, max_s: float = MAX_S) -> wait_base:
    """The project's wait strategy for tenacity (see the module docstring)."""
    half, cap = initial_s / 2, max_s / 2
    return tenacity.wait_exponential(multiplier=half, max=cap) + tenacity.wait_random_exponential(
        multiplier=half, max=cap
    )


def _options(
    what: str,
    on: ExceptionTypes,
    initial_s: float,
    max_s: float,
    give_up_after_s: float | None,
    logger: logging.Logger | None,
) -> dict[str, Any]:
    logger = logger or log

    def warn(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        logger.warning("%s (%s), retrying in %.1fs", what, type(exc).__name__, state.upcoming_sleep)

    stop: stop_base = tenacity.stop_never if give_up_after_s is None else tenacity.stop_after_delay(give_up_after_s)
    return {
        "retry": tenacity.retry_if_exception_type(on),
        "wait": backoff(initial_s=initial_s, max_s=max_s),
        "stop": stop,
        "before_sleep": warn,
        "reraise": True,
    }


def retrying(
    what: str,
    *,
    on: ExceptionTypes,
    initial_s: float = INITIAL_S,
    max_s: float = MAX_S,
    give_up_after_s: float | None = None,
    logger: logging.Logger | None = None,
) -> tenacity.AsyncRetrying:
    """`async for attempt in retrying(...): with attempt: ...` retries the block on `on` with the policy."""
    return tenacity.AsyncRetrying(**_options(what, on, initial_s, max_s, give_up_after_s, logger))


def retrying_sync(
    what: str,
    *,
    on: ExceptionTypes,
    initial_s: float = INITIAL_S,
    max_s: float = MAX_S,
    give_up_after_s: float | None = None,
    logger: logging.Logger | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """The same for blocking code: `for attempt in retrying_sync(...): with attempt: ...`."""
    options = _options(what, on, initial_s, max_s, give_up_after_s, logger)
    if sleep is not None:
        options["sleep"] = sleep
    return tenacity.Retrying(**options)


class Delays:
    """The same policy for loops that outlive one call (a writer that keeps its queue through an outage, a
    poller that must not stop): `await asyncio.sleep(delays.next())` after a failure, `reset()` after a success.
    The waits come from the same tenacity strategy as `retrying`, so the policy is defined once."""

    def __init__(self, *, initial_s: float = INITIAL_S, max_s: float = MAX_S) -> None:
        self._wait = backoff(initial_s=initial_s, max_s=max_s)
        self._state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})

    def next(self) -> float:
        """The wait after one more failure in a row."""
        wait = float(self._wait(self._state))
        self._state.attempt_number += 1
        return wait

    def reset(self) -> None:
        self._state.attempt_number = 1
