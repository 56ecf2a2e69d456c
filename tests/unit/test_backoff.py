"""Retry backoff of failed attempts: exponential, capped, with equal jitter."""

from __future__ import annotations

import random

import pytest

from taskproc.worker.backoff import backoff_s


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (6, 16.0, 32.0)])
def test_range_doubles_per_attempt(attempt: int, low: float, high: float) -> None:
    assert backoff_s(attempt, base_s=1.0, cap_s=300.0, rand=Fixed(0.0)) == low
    assert backoff_s(attempt, base_s=1.0, cap_s=300.0, rand=Fixed(0.999999)) == pytest.approx(high, rel=1e-5)


def test_ranges_of_successive_attempts_do_not_overlap_below_the_cap() -> None:
    """The shortest delay of attempt n+1 is at least the longest of attempt n (until the cap is reached)."""
    for n in range(1, 8):  # base 0.2, cap 60: the step reaches the cap at attempt 10
        longest = backoff_s(n, base_s=0.2, cap_s=60.0, rand=Fixed(0.999999))
        shortest_next = backoff_s(n + 1, base_s=0.2, cap_s=60.0, rand=Fixed(0.0))
        assert shortest_next >= longest


def test_capped_and_safe_for_huge_attempt_numbers() -> None:
    for attempt in (20, 1000, 10**9):
        d = backoff_s(attempt, base_s=1.0, cap_s=300.0)
        assert 150.0 <= d <= 300.0


def test_jitter_spreads_retries_of_tasks_that_failed_together() -> None:
    rng = random.Random(1)
    delays = {round(backoff_s(3, base_s=1.0, cap_s=300.0, rand=rng), 3) for _ in range(100)}
    assert len(delays) > 50


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_s(0, base_s=1.0, cap_s=10.0)
