"""Exceptions a handler raises to choose what happens to its task, other than the default retry with backoff.

Any other exception fails the attempt and the task is retried after an exponential backoff while
`max_retries` allows (see docs/tasks.md).
"""

from __future__ import annotations

import math

# Longer than any sensible wait, short enough that Postgres's interval arithmetic never overflows.
MAX_RETRY_AFTER_S = 30 * 24 * 3600.0


class PermanentFailure(Exception):  # noqa: N818 - an outcome, named for what it does
    """Fail the task now, without retrying, whatever attempts are left (bad input that will not improve)."""


class RetryAfter(Exception):  # noqa: N818 - an outcome, named for what it does
    """Fail this attempt and retry the task `delay_s` seconds from now instead of after the usual backoff.

    The attempt still counts: with no retries left (`max_retries`) the task fails as for any other error.
    """

    def __init__(self, delay_s: float, message: str | None = None) -> None:
        if not (math.isfinite(delay_s) and 0 <= delay_s <= MAX_RETRY_AFTER_S):
            raise ValueError(f"RetryAfter delay must be within 0..{MAX_RETRY_AFTER_S:g} seconds, not {delay_s!r}")
        self.delay_s = float(delay_s)
        super().__init__(message if message is not None else f"retry requested in {self.delay_s:g}s")
