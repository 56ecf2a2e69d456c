"""taskproc.retry: the project's backoff policy on tenacity, driven with a recording sleep instead of waiting."""

from __future__ import annotations

import logging

import pytest
import tenacity

from taskproc import retry


def test_waits_grow_within_equal_jitter_bounds_and_are_capped() -> None:
    wait = retry.backoff(initial_s=0.2, max_s=5.0)
    r = tenacity.Retrying()
    for attempt in range(1, 12):
        state = tenacity.RetryCallState(r, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        step = min(5.0, 0.2 * 2 ** (attempt - 1))
        draws = [wait(state) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws), (attempt, min(draws), max(draws))
        assert max(draws) - min(draws) > step / 10, "jittered, not fixed"


def test_retries_the_named_errors_logging_each_wait(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("down")
        return "up"

    with caplog.at_level(logging.WARNING, logger="taskproc"):
        for attempt in retry.retrying_sync("service unavailable", on=ConnectionError, sleep=slept.append):
            with attempt:
                result = flaky()
    assert (result, calls, len(slept)) == ("up", 4, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert warnings[0].startswith("service unavailable (ConnectionError), retrying in 0.")


def _run(attempts: tenacity.Retrying, exc: BaseException) -> None:
    for attempt in attempts:
        with attempt:
            raise exc


def test_other_errors_are_raised_at_once() -> None:
    slept: list[float] = []
    with pytest.raises(KeyError):
        _run(retry.retrying_sync("x", on=ConnectionError, sleep=slept.append), KeyError("not transient"))
    assert slept == []


def test_gives_up_after_the_deadline_with_the_last_error_itself() -> None:
    attempts = retry.retrying_sync("x", on=ConnectionError, give_up_after_s=0.0, sleep=lambda s: None)
    with pytest.raises(ConnectionError, match="still down"):
        _run(attempts, ConnectionError("still down"))


async def test_async_form() -> None:
    calls = 0
    async for attempt in retry.retrying("x", on=OSError, initial_s=0.001, max_s=0.002):
        with attempt:
            calls += 1
            if calls < 3:
                raise OSError("flaky")
    assert calls == 3


def test_delays_follow_the_policy_grow_to_the_cap_and_reset() -> None:
    delays = retry.Delays(initial_s=0.2, max_s=2.0)
    waits = [delays.next() for _ in range(8)]
    steps = [min(2.0, 0.2 * 2**n) for n in range(8)]
    for wait, step in zip(waits, steps, strict=True):
        assert step / 2 <= wait <= step, (wait, step)
    delays.reset()
    assert 0.1 <= delays.next() <= 0.2
