"""The restart schedule of the supervisor: pure functions, no processes."""

import pytest

from taskproc.dev.supervisor import Backoff, backoff_delay


def test_default_schedule_doubles_from_half_a_second_to_a_30s_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("failures", [0, -1])
def test_no_failure_means_no_delay(failures: int) -> None:
    assert backoff_delay(failures) == 0.0


def test_huge_failure_counts_stay_at_the_cap() -> None:
    assert backoff_delay(10_000) == 30.0


def test_custom_parameters() -> None:
    assert [backoff_delay(n, initial=0.1, factor=3.0, cap=1.0) for n in (1, 2, 3, 4)] == pytest.approx(
        [0.1, 0.3, 0.9, 1.0]
    )


def test_backoff_object_matches_the_function() -> None:
    policy = Backoff(initial=0.25, factor=2.0, cap=2.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_quick_exits_count_up_and_a_long_uptime_resets_the_count() -> None:
    policy = Backoff(reset_after=30.0)
    failures = 0
    for _ in range(4):
        failures = policy.failures_after_exit(failures, uptime=0.1)
    assert failures == 4
    assert policy.delay(failures) == 4.0
    # Stayed up for the reset period: the next crash starts the schedule again at 0.5 s.
    failures = policy.failures_after_exit(failures, uptime=30.0)
    assert failures == 1
    assert policy.delay(failures) == 0.5
    assert policy.failures_after_exit(failures, uptime=29.9) == 2
