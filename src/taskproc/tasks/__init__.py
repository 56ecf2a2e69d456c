"""What a task handler needs: the `task_type` decorator, its `TaskContext`, and the outcome exceptions.

from taskproc.tasks import PermanentFailure, RetryAfter, TaskContext, task_type
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from taskproc.tasks.outcomes import PermanentFailure, RetryAfter
from taskproc.tasks.registry import TaskContext, TaskHandler, registry, task_type

# Loaded like a user's TASKPROC_TASK_MODULES, by name: nothing imports the built-in types directly.
BUILTIN_MODULES: tuple[str, ...] = ("taskproc.tasks.builtin",)


def load_task_modules(modules: Iterable[str], *, builtin: bool = True) -> None:
    """Import the built-in task modules (unless `builtin` is False), then the user's; each registers its types on
    import."""
    for module in (*BUILTIN_MODULES, *modules) if builtin else tuple(modules):
        importlib.import_module(module)


__all__ = [
    "BUILTIN_MODULES",
    "PermanentFailure",
    "RetryAfter",
    "TaskContext",
    "TaskHandler",
    "load_task_modules",
    "registry",
    "task_type",
]
