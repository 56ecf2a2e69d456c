"""The one table from the domain's errors to HTTP answers (api/errors.py), and the domain errors themselves."""

from __future__ import annotations

import inspect

import pytest

from taskproc import errors
from taskproc.api.errors import ERRORS, OUTCOMES, http_error, outcome_of, problem_items, status_of
from taskproc.errors import InvalidInputError, NotFoundError, Problem, TaskprocError, UnauthorizedError


def _error_classes() -> list[type[TaskprocError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TaskprocError) and cls.__module__ == errors.__name__
    ]


def test_every_error_class_is_in_the_table_and_carries_nothing_of_http() -> None:
    for cls in _error_classes():
        assert cls in ERRORS, f"{cls.__name__} has no entry in api/errors.py ERRORS"
        for attr in ("status_code", "headers", "loc"):
            assert not hasattr(cls, attr), f"{cls.__name__}.{attr}: the domain knows no HTTP"


def test_statuses_headers_and_bodies() -> None:
    assert http_error(NotFoundError("task x not found")) == (404, {}, "task x not found")
    status, headers, detail = http_error(UnauthorizedError())
    assert (status, headers) == (401, {"WWW-Authenticate": 'Bearer realm="taskproc"'})
    assert detail == "A valid API key is required."
    status, _, detail = http_error(InvalidInputError(field=("cursor",), msg="invalid cursor", type="invalid_cursor"))
    assert status == 422
    assert detail == [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "invalid_cursor"}]

    class UnmappedError(TaskprocError):
        """Some error nobody mapped."""

    assert http_error(UnmappedError())[0] == 500, "a subclass answers as its nearest mapped ancestor"
    assert status_of(ValueError()) == 500


def test_problems_are_capped_when_rendered() -> None:
    exc = InvalidInputError(Problem(field=("tasks", i, "type"), msg="bad", type="x") for i in range(500))
    assert len(exc.problems) == 500
    items = problem_items(exc.problems)
    assert len(items) == 101 and items[-1]["type"] == "too_many_errors"
    assert items[0]["loc"] == ["body", "tasks", 0, "type"]


def test_invalid_input_needs_a_problem() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        InvalidInputError()


def test_outcomes_of_statuses() -> None:
    assert [outcome_of(s) for s in (200, 201, 204, 307)] == ["ok"] * 4
    assert outcome_of(500) == "error" and outcome_of(400) == "error"
    assert {outcome_of(s) for s in OUTCOMES} == {"unauthorized", "not_found", "conflict", "invalid", "unavailable"}


def test_the_operations_metric_names_every_outcome_it_can_take() -> None:
    from taskproc import metrics
    from taskproc.api.routing import ABANDONED

    [family] = metrics.API_OPERATIONS.collect()
    for outcome in {*OUTCOMES.values(), "ok", "error", ABANDONED}:
        assert outcome in family.documentation, f"help text of {family.name} does not name {outcome!r}"
