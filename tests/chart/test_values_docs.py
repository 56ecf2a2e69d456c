"""values.yaml has a comment on every key, and those comments are the only place the chart values are described:
values.schema.json's descriptions and the values tables (chart README, docs/install.md) are generated from them by
scripts/values_docs.py (`make values-docs`) and must equal what it generates now. The schema describes every key
and rejects unknown ones."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .conftest import CHART, ROOT

KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*):")


def _values_docs() -> ModuleType:
    """scripts/values_docs.py, the generator `make values-docs` runs (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("values_docs", ROOT / "scripts" / "values_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("values_docs", module)
    spec.loader.exec_module(module)
    return module


values_docs = _values_docs()


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
    """The values table: every leaf key of values.yaml with its default and (generated) schema description."""
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    schema = values_docs.with_descriptions(_schema(), values_docs.comments(values_text))
    return values_docs.values_table(yaml.safe_load(values_text), schema)  # type: ignore[no-any-return]


@pytest.mark.parametrize("readme", [CHART / "README.md", ROOT / "docs" / "install.md"], ids=["chart", "docs"])
def test_readme_values_table_is_current(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"<!-- values-table:start[^>]*-->\n(.*?)<!-- values-table:end -->", text, flags=re.DOTALL)
    assert m, f"{readme} lost its values-table markers"
    expected = values_table()
    assert m.group(1) == expected, f"{readme} values table is out of date: run make values-docs. It should be:\n" + (
        expected
    )


def test_schema_descriptions_are_the_values_comments() -> None:
    """Every values.yaml key's schema description is its comment, and nothing else the generator writes is stale."""
    generated = values_docs.generate()
    assert not generated.stale(), (
        f"stale: {[str(p.relative_to(ROOT)) for p in generated.stale()]}: run make values-docs"
    )
    schema = _schema()
    documented = values_docs.comments((CHART / "values.yaml").read_text(encoding="utf-8"))
    differ = {
        path: (node.get("description"), text)
        for path, text in documented.items()
        if (node := values_docs.schema_node(schema, path)) is not None and node.get("description") != text
    }
    assert not differ, f"schema descriptions differ from the values.yaml comments (run make values-docs): {differ}"


def test_every_values_key_has_a_schema_entry_that_takes_its_comment() -> None:
    """A values.yaml key whose comment would not reach the schema is a key documented nowhere but the YAML."""
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    schema = _schema()
    lost = []
    for path in _paths(yaml.safe_load(values_text)):
        if values_docs.schema_node(schema, path) is None and not _in_free_form_map(schema, path):
            lost.append(path)
    assert not lost, lost


def _in_free_form_map(schema: dict[str, Any], path: str) -> bool:
    parent = values_docs.schema_node(schema, path.rsplit(".", 1)[0]) if "." in path else None
    return parent is not None and "properties" not in parent


def test_comments_are_read_from_the_lines_above_a_key_or_after_its_value() -> None:
    text = """# A header, cut off from the first key by a blank line.

# First line of a
# two-line comment.
top:
  # Nested key.
  inner: 1
  same_line: 2  # after the value
  # Above a block mapping.
  block:
    leaf: x
plain: 3
"""
    assert values_docs.comments(text) == {
        "top": "First line of a two-line comment.",
        "top.inner": "Nested key.",
        "top.same_line": "after the value",
        "top.block": "Above a block mapping.",
    }


def test_values_docs_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scripts/values_docs.py --check` exits 1 while a generated file differs, and 0 once it is regenerated."""
    for name in ("values.yaml", "values.schema.json", "README.md"):
        (tmp_path / name).write_text((CHART / name).read_text(encoding="utf-8"), encoding="utf-8")
    docs_page = tmp_path / "install.md"
    docs_page.write_text((ROOT / "docs" / "install.md").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(values_docs, "ROOT", tmp_path)
    monkeypatch.setattr(values_docs, "VALUES", tmp_path / "values.yaml")
    monkeypatch.setattr(values_docs, "SCHEMA", tmp_path / "values.schema.json")
    monkeypatch.setattr(values_docs, "TABLE_DOCS", (tmp_path / "README.md", docs_page))
    assert values_docs.main(["--check"]) == 0
    values = tmp_path / "values.yaml"
    text = values.read_text(encoding="utf-8")
    assert "\n  # Number of API pods.\n  replicaCount: 2\n" in text
    values.write_text(text.replace("# Number of API pods.", "# How many API pods run."), encoding="utf-8")
    assert values_docs.main(["--check"]) == 1
    assert values_docs.main([]) == 0
    assert values_docs.main(["--check"]) == 0
    schema = json.loads((tmp_path / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["api"]["properties"]["replicaCount"]["description"] == "How many API pods run."
    assert "| `api.replicaCount` | `2` | How many API pods run. |" in docs_page.read_text(encoding="utf-8")
