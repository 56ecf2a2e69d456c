"""Pure pieces of the recovery machinery: in-progress mark ages and capped validation errors."""

from __future__ import annotations

from taskproc import queue
from taskproc.services.tasks import MAX_REPORTED_ERRORS, cap_errors


def test_in_progress_mark_age_is_read_from_its_remaining_ttl() -> None:
    assert queue._taken_ms_ago(-2) is None  # no mark: nobody took the job
    assert queue._taken_ms_ago(queue.IN_PROGRESS_TTL_MS) == 0  # just taken
    assert queue._taken_ms_ago(queue.IN_PROGRESS_TTL_MS - 45_000) == 45_000
    assert queue._taken_ms_ago(-1) == queue.IN_PROGRESS_TTL_MS  # a mark without TTL is not arq's: abandoned


def test_job_state_taken_longer_than() -> None:
    fresh = queue.JobState(recorded=True, queued=True, taken_ms_ago=1_000)
    old = queue.JobState(recorded=True, queued=True, taken_ms_ago=60_000)
    free = queue.JobState(recorded=True, queued=True, taken_ms_ago=None)
    assert not fresh.taken_longer_than(30_000)
    assert old.taken_longer_than(30_000)
    assert not free.taken_longer_than(0)


def test_in_progress_ttl_matches_arq_job_timeout_plus_ten_seconds() -> None:
    assert queue.IN_PROGRESS_TTL_MS == (queue.JOB_TIMEOUT_S + 10) * 1000


def test_validation_errors_are_capped() -> None:
    few = [{"loc": ["body", i], "msg": "bad", "type": "x"} for i in range(3)]
    assert cap_errors(few) == few
    many = [{"loc": ["body", i], "msg": "bad", "type": "x"} for i in range(65_000)]
    capped = cap_errors(many)
    assert len(capped) == MAX_REPORTED_ERRORS + 1
    assert capped[:MAX_REPORTED_ERRORS] == many[:MAX_REPORTED_ERRORS]
    assert capped[-1]["type"] == "too_many_errors"
    assert str(65_000 - MAX_REPORTED_ERRORS) in capped[-1]["msg"]
