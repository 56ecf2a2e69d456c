"""Built-in task types load like a user's modules: by name, through taskproc.tasks.load_task_modules, with no
import between the registry and the built-in module."""

from __future__ import annotations

import subprocess
import sys

import taskproc.tasks
from taskproc.tasks import BUILTIN_MODULES, PermanentFailure, RetryAfter, TaskContext, load_task_modules, task_type


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_registry_knows_no_task_type_of_its_own() -> None:
    out = _run(
        "import sys; from taskproc.tasks import registry; "
        "print('taskproc.tasks.builtin' in sys.modules, [t.name for t in registry.all()])"
    )
    assert out == "False []"


def test_builtins_are_loaded_by_name_before_the_users_modules() -> None:
    assert BUILTIN_MODULES == ("taskproc.tasks.builtin",)
    out = _run(
        "from taskproc.tasks import load_task_modules, registry; load_task_modules(['json']); "
        "print(sorted(t.name for t in registry.all()))"
    )
    assert out == "['add', 'sleep', 'sum_pairs', 'text_stats']"
    out = _run(
        "from taskproc.tasks import load_task_modules, registry; load_task_modules([], builtin=False); "
        "print(len(registry.all()))"
    )
    assert out == "0"


def test_handlers_import_everything_from_one_module() -> None:
    assert {"task_type", "TaskContext", "PermanentFailure", "RetryAfter"} <= set(taskproc.tasks.__all__)
    assert callable(task_type) and callable(load_task_modules)
    assert TaskContext.__module__ == "taskproc.tasks.registry"
    assert issubclass(PermanentFailure, Exception) and RetryAfter(2).delay_s == 2.0
