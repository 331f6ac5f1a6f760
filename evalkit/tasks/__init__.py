"""Tasks: declarative YAML specs, data loaders, the registry and the built-in tasks."""

from evalkit.tasks.registry import expand, get_task, list_tasks, resolve_tasks
from evalkit.tasks.spec import TaskSpec, load_spec, parse_spec
from evalkit.tasks.task import Instance, Task, TaskScore

__all__ = [
    "Instance",
    "Task",
    "TaskScore",
    "TaskSpec",
    "expand",
    "get_task",
    "list_tasks",
    "load_spec",
    "parse_spec",
    "resolve_tasks",
]
