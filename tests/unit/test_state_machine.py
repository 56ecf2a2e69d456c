"""Pure pieces of the recovery machinery: capped validation errors."""

from __future__ import annotations

from taskproc.api.errors import MAX_REPORTED_ERRORS, cap_errors


def test_validation_errors_are_capped() -> None:
    few = [{"loc": ["body", i], "msg": "bad", "type": "x"} for i in range(3)]
    assert cap_errors(few) == few
    many = [{"loc": ["body", i], "msg": "bad", "type": "x"} for i in range(65_000)]
    capped = cap_errors(many)
    assert len(capped) == MAX_REPORTED_ERRORS + 1
    assert capped[:MAX_REPORTED_ERRORS] == many[:MAX_REPORTED_ERRORS]
    assert capped[-1]["type"] == "too_many_errors"
    assert str(65_000 - MAX_REPORTED_ERRORS) in capped[-1]["msg"]
