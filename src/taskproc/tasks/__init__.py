"""Task types: the registry and the built-in handlers."""

from taskproc.tasks.registry import TaskContext, TaskHandler, registry, task_type

__all__ = ["TaskContext", "TaskHandler", "registry", "task_type"]
