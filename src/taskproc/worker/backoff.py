"""Retry backoff: exponential with "equal jitter"."""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rand: random.Random | None = None) -> float:
    """Delay before the retry that follows failed attempt number `attempt` (1-based).

    Half of the exponential step is fixed and half is random, so retries of many tasks that failed together
    spread out, while each task's successive delays never shrink: the range for attempt n is
    [step/2, step] with step = base * 2**(n-1), and the next range starts where this one ends.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    step = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    r = (rand or random).random()
    return step / 2 + r * step / 2
