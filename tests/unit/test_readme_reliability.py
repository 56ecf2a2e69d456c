"""The reliability tables of docs/reliability.md name tests that exist: every `test_x.py` and `test_x.py::name`
they cite."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELIABILITY_PAGE = ROOT / "docs" / "reliability.md"


def reliability_section() -> str:
    # The whole page is the reliability section (it was the README's "## Reliability" before docs/ existed).
    return RELIABILITY_PAGE.read_text(encoding="utf-8")


def test_every_cited_test_exists() -> None:
    section = reliability_section()
    assert len(re.findall(r"`test_\w+\.py", section)) >= 20
    missing = []
    last_file = None
    for token in re.findall(r"`(test_\w+\.py)?(?:::(\w+))?`", section):
        file, name = token
        if file:
            last_file = file
        if not file and not name:
            continue
        path = ROOT / "tests" / "integration" / (file or last_file or "")
        if not path.is_file():
            missing.append(file)
            continue
        if name and not re.search(rf"def {name}\(", path.read_text(encoding="utf-8")):
            missing.append(f"{path.name}::{name}")
    assert not missing, missing
