"""values.yaml has a comment on every key; values.schema.json describes every key and rejects unknown ones;
the chart README's values table lists every key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART

KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):")


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _paths(values: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(values, dict):
        for k, v in values.items():
            path = f"{prefix}.{k}" if prefix else k
            out.append(path)
            out += _paths(v, path)
    return out


def test_every_values_key_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m:
            continue
        before = lines[i - 1].strip() if i else ""
        if not before.startswith("#") and " # " not in line:
            missing.append(f"line {i + 1}: {line.strip()}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


def test_schema_describes_every_key_and_rejects_unknown_ones() -> None:
    schema = _schema()
    problems = []

    def walk(node: dict[str, Any], path: str) -> None:
        if path and not node.get("description"):
            problems.append(f"{path}: no description")
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{path or '<root>'}: additionalProperties is not false")
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)

    walk(schema, "")
    assert not problems, "\n".join(problems)


def test_schema_covers_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = _schema()

    def lookup(path: str) -> dict[str, Any] | None:
        node: dict[str, Any] | None = schema
        for part in path.split("."):
            if node is None:
                return None
            props = node.get("properties")
            if props is None:
                # a free-form map (labels, annotations, nodeSelector ...) or a Kubernetes object
                return node if node.get("additionalProperties") is not False else None
            node = props.get(part)
        return node

    missing = [p for p in _paths(values) if lookup(p) is None]
    assert not missing, f"values without a schema entry: {missing}"


def values_table() -> str:
    """The README's values table: every leaf key of values.yaml with its default and schema description."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    rows = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node and node.get("additionalProperties") is False and not path.endswith("resources"):
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)
            return
        found, default = _lookup_value(values, path)
        if not found:
            return  # a Kubernetes field the schema allows but values.yaml does not set
        shown = json.dumps(default)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        shown = shown.replace("|", "\\|")
        description = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{path}` | `{shown}` | {description} |")

    walk(_schema(), "")
    return "| Key | Default | Description |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


def _lookup_value(values: Any, path: str) -> tuple[bool, Any]:
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@pytest.mark.parametrize("readme", [CHART / "README.md", CHART.parents[1] / "README.md"], ids=["chart", "project"])
def test_readme_values_table_is_current(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"<!-- values-table:start[^>]*-->\n(.*?)<!-- values-table:end -->", text, flags=re.DOTALL)
    assert m, f"{readme} lost its values-table markers"
    expected = values_table()
    assert m.group(1) == expected, f"{readme} values table is out of date; replace it with:\n" + expected
