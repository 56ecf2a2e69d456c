"""Cursor encoding and queue score arithmetic, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from taskproc import queue
from taskproc.errors import InvalidInputError
from taskproc.models import Priority
from taskproc.services.tasks import decode_cursor, encode_cursor


def test_cursor_round_trip() -> None:
    at = datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC)
    tid = uuid.uuid4()
    assert decode_cursor(encode_cursor(at, tid)) == (at, tid)


# A fixed time and id: a test id that changes between collections breaks pytest-xdist's workers.
TRUNCATED = encode_cursor(datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC), uuid.UUID(int=1))[:-3]


@pytest.mark.parametrize("bad", ["", "!!", "bm90IGEgY3Vyc29y", TRUNCATED])
def test_bad_cursor_is_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        decode_cursor(bad)


def test_scores_order_priority_then_time() -> None:
    now = queue.now_ms()
    later = now + int(timedelta(days=3650).total_seconds() * 1000)
    scores = {
        ("high", "late"): later + queue.BAND[Priority.high],
        ("normal", "early"): now + queue.BAND[Priority.normal],
        ("normal", "late"): later + queue.BAND[Priority.normal],
        ("low", "early"): now + queue.BAND[Priority.low],
    }
    ordered = sorted(scores, key=scores.__getitem__)
    assert ordered == [("high", "late"), ("normal", "early"), ("normal", "late"), ("low", "early")]
    for (prio, _), score in scores.items():
        assert queue.priority_of_score(score) is Priority(prio)
        # Every ready entry is due for arq (score <= now) whatever its priority.
        assert score <= later


def test_job_id_round_trip() -> None:
    tid = uuid.uuid4()
    assert queue.parse_job_id(queue.job_id(tid, 7)) == (tid, 7)


def test_json_job_serializer_round_trip() -> None:
    data = {"f": "run_task", "a": [], "k": {"task_id": "x", "generation": 2}, "t": None, "et": 1}
    assert queue.json_deserializer(queue.json_serializer(data)) == data
    with pytest.raises(ValueError, match="not an object"):
        queue.json_deserializer(b"[1]")
