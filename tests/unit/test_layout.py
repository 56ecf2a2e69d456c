"""The layout the code keeps: SQL only in taskproc.store (and the migrations), statuses bound from the enum, and
no HTTP in the worker or the domain modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskproc import store
from taskproc.models import TaskStatus

SRC = Path(__file__).resolve().parents[2] / "src" / "taskproc"

# What a statement looks like in Python source: a keyword of one (DELETE alone is also an HTTP method, so only
# `DELETE FROM`), or SQLAlchemy's / psycopg's way of wrapping SQL text.
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b|(?<![\w])text\(|\bsql\.SQL\(")

ALLOWED = {
    # The one place for statements.
    "store.py",
    # Table and index declarations (partial-index predicates, server defaults): DDL the migrations mirror.
    "models.py",
    # Dev tooling, not the runtime: the embedded servers create their database (CREATE DATABASE ...). Being
    # moved to taskproc/dev/ (and never imported by the API or the worker); both places are allowed meanwhile.
    "embedded.py",
}
ALLOWED_DIRS = ("migrations/", "dev/")  # alembic's own migration files; the dev tooling package


def _python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_sql_appears_only_in_the_store_and_the_migrations() -> None:
    found = []
    for path in _python_files():
        rel = path.relative_to(SRC).as_posix()
        if rel in ALLOWED or rel.startswith(ALLOWED_DIRS):
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SQL.search(line):
                found.append(f"{rel}:{lineno}: {line.strip()}")
    assert not found, "SQL outside taskproc.store:\n" + "\n".join(found)


def test_the_check_finds_sql() -> None:
    # The pattern above is what keeps SQL in one place; it must see the usual shapes.
    for line in (
        'sa.text("SELECT 1")',
        "conn.execute(text('x'))",
        '"UPDATE task SET status = :s"',
        '"INSERT INTO worker (id) VALUES (1)"',
        '"DELETE FROM task WHERE id = :id"',
        'psycopg.sql.SQL("...")',
    ):
        assert SQL.search(line), line
    for line in ('path.read_text(encoding="utf-8")', '_action("DELETE", "/tasks/{id}", "deleted")', "status_text(s)"):
        assert not SQL.search(line), line


def test_store_sql_names_no_status_literally() -> None:
    """Statuses travel as bound parameters from TaskStatus (`:s_running`, `ANY(:waiting)`), never as literals."""
    text = (SRC / "store.py").read_text(encoding="utf-8")
    literal = re.compile("'(" + "|".join(s.value for s in TaskStatus) + ")'")
    assert not literal.findall(text)
    assert set(store.STATUS_PARAMS) >= {f"s_{s.value}" for s in TaskStatus}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


HTTP = ("taskproc.api", "taskproc.services", "fastapi", "starlette", "uvicorn")
# The worker's own /metrics and /healthz endpoint is a small Starlette app on uvicorn (a real server instead of
# hand-parsed HTTP); that module alone may use them. The API's code stays out of the worker either way.
API_ONLY = ("taskproc.api", "taskproc.services", "fastapi")
WORKER_HTTP_SERVER = "worker/httpserver.py"


@pytest.mark.parametrize(
    "module",
    [
        *(p.relative_to(SRC).as_posix() for p in sorted((SRC / "worker").glob("*.py"))),
        "store.py",
        "events.py",
        "maintenance.py",
        "queue.py",
        "db.py",
    ],
)
def test_domain_and_worker_modules_import_no_http(module: str) -> None:
    forbidden = API_ONLY if module == WORKER_HTTP_SERVER else HTTP
    bad = sorted(name for name in _imports(SRC / module) if name.startswith(forbidden))
    assert not bad, f"{module} imports {bad}"


def test_the_worker_loads_nothing_of_the_api() -> None:
    code = (
        "import sys, taskproc.worker.main, taskproc.worker.runtime, taskproc.maintenance, taskproc.events;"
        f"print(sorted(m for m in sys.modules if m.startswith({API_ONLY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
