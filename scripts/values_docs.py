"""Chart values documented once: the comments of charts/taskproc/values.yaml are the source.

From them this script writes the `description` of every matching key in values.schema.json and the values table
between the `values-table` markers of charts/taskproc/README.md and docs/install.md. `make values-docs` runs it;
`--check` only reports what is stale (tests/chart/test_values_docs.py makes the same comparison in memory).

A key's comment is the block of `#` lines right above it (or a `#` comment after its value on the same line),
joined into one line. Schema keys that values.yaml does not set (Kubernetes fields the chart passes through,
`global`) keep the description written in the schema: they have no line in values.yaml to carry one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "taskproc"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
TABLE_DOCS = (CHART / "README.md", ROOT / "docs" / "install.md")
MARKERS = re.compile(r"(<!-- values-table:start[^>]*-->\n)(.*?)(<!-- values-table:end -->)", flags=re.DOTALL)
REGENERATE = "run `make values-docs`"


def comments(values_text: str) -> dict[str, str]:
    """Dotted key path -> its comment, for every key of values.yaml's mappings that has one."""
    lines = values_text.splitlines()
    out: dict[str, str] = {}

    def above(line_no: int) -> list[str]:
        block: list[str] = []
        i = line_no - 1
        while i >= 0 and lines[i].lstrip().startswith("#"):
            block.insert(0, lines[i].lstrip()[1:].strip())
            i -= 1
        return block

    def trailing(value: yaml.Node, key_line: int) -> str:
        # Only a value that ends on the key's own line can have a comment after it there.
        if value.end_mark.line != key_line:
            return ""
        rest = lines[key_line][value.end_mark.column :].strip()
        return rest[1:].strip() if rest.startswith("#") else ""

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            text = " ".join(
                part for part in [*above(key.start_mark.line), trailing(value, key.start_mark.line)] if part
            )
            if text:
                out[path] = text
            walk(value, path)

    root = yaml.compose(values_text)
    if root is not None:
        walk(root, "")
    return out


def schema_node(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The schema of a dotted key, or None where the schema has no entry of its own (free-form maps)."""
    node: dict[str, Any] = schema
    for part in path.split("."):
        child = node.get("properties", {}).get(part)
        if child is None:
            return None
        node = child
    return node


def with_descriptions(schema: dict[str, Any], documented: dict[str, str]) -> dict[str, Any]:
    """A copy of the schema whose descriptions are the values.yaml comments, key order kept."""
    out: dict[str, Any] = json.loads(json.dumps(schema))
    for path, text in documented.items():
        node = schema_node(out, path)
        if node is not None:
            node["description"] = text
    return out


def _lookup_value(values: Any, path: str) -> tuple[bool, Any]:
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _markdown_text(text: str) -> str:
    """A description as table-cell Markdown: pipes escaped, and <...> outside code spans shown, not taken as HTML."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def values_table(values: dict[str, Any], schema: dict[str, Any]) -> str:
    """Every leaf key of values.yaml with its default and description, in schema order."""
    rows = []

    def walk(node: dict[str, Any], path: str) -> None:
        # A closed object is opened up, except resources, which reads better as one default.
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
        description = _markdown_text(node.get("description", ""))
        rows.append(f"| `{path}` | `{shown}` | {description} |")

    walk(schema, "")
    return "| Key | Default | Description |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


def with_table(text: str, table: str, name: str) -> str:
    if not MARKERS.search(text):
        raise ValueError(f"{name} has no <!-- values-table:start --> ... <!-- values-table:end --> markers")
    return MARKERS.sub(lambda m: m.group(1) + table + m.group(3), text, count=1)


@dataclass(frozen=True)
class Generated:
    """Every file this script writes, as it should read now."""

    files: dict[Path, str]

    def stale(self) -> list[Path]:
        return [path for path, text in self.files.items() if path.read_text(encoding="utf-8") != text]


def generate() -> Generated:
    values_text = VALUES.read_text(encoding="utf-8")
    schema = with_descriptions(json.loads(SCHEMA.read_text(encoding="utf-8")), comments(values_text))
    table = values_table(yaml.safe_load(values_text), schema)
    files = {SCHEMA: json.dumps(schema, indent=2, ensure_ascii=False) + "\n"}
    for doc in TABLE_DOCS:
        files[doc] = with_table(doc.read_text(encoding="utf-8"), table, str(doc.relative_to(ROOT)))
    return Generated(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    generated = generate()
    stale = generated.stale()
    if args.check:
        for path in stale:
            sys.stderr.write(f"stale: {path.relative_to(ROOT)} ({REGENERATE})\n")
        return 1 if stale else 0
    for path in stale:
        path.write_text(generated.files[path], encoding="utf-8")
        sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
