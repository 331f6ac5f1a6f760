"""Task names -> Task objects: the built-in YAML files, suites, and user YAML paths.

A built-in task is any ``builtin/*.yaml`` with an ``output_type``; a suite is a
``builtin/*.yaml`` holding ``suite: name`` and a ``tasks`` list, and expands to
those tasks. A user passes the path of their own YAML file wherever a task name
is accepted.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import yaml

from evalkit.errors import EvalkitError
from evalkit.tasks.spec import load_spec
from evalkit.tasks.task import Task

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


@lru_cache(maxsize=1)
def _builtin_files() -> dict[str, Path]:
    """Task and suite names -> their YAML file (names are read from the files, not the file names)."""
    files: dict[str, Path] = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        files[data.get("suite") or data["name"]] = path
    return files


@cache
def _suite(name: str) -> tuple[str, list[str]] | None:
    """(description, member task names) when ``name`` is a built-in suite, else None."""
    path = _builtin_files().get(name)
    if path is None:
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "suite" not in data:
        return None
    return data.get("description", ""), list(data["tasks"])


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def _unknown(name: str) -> EvalkitError:
    known = ", ".join(_builtin_files())
    return EvalkitError(f"unknown task {name!r}; run `evalkit list tasks` to see the names ({known}) or pass a task YAML file")


def get_task(name_or_yaml_path: str, data_dir: str | None = None) -> Task:
    """One task by built-in name or YAML path; its data files are checked now (before a model loads)."""
    if _looks_like_path(name_or_yaml_path):
        return Task(load_spec(name_or_yaml_path), data_dir)
    path = _builtin_files().get(name_or_yaml_path)
    if path is None:
        raise _unknown(name_or_yaml_path)
    if _suite(name_or_yaml_path) is not None:
        raise EvalkitError(f"{name_or_yaml_path!r} is a suite, not one task; use resolve_tasks([{name_or_yaml_path!r}]) or --tasks {name_or_yaml_path}")
    return Task(load_spec(path), data_dir)


def expand(names: list[str]) -> list[str]:
    """Suites replaced by their members, duplicates dropped, order kept."""
    out: list[str] = []
    for name in names:
        suite = None if _looks_like_path(name) else _suite(name)
        for member in expand(suite[1]) if suite else [name]:
            if member not in out:
                out.append(member)
    return out


def resolve_tasks(names: list[str], data_dir: str | None = None) -> list[Task]:
    """Tasks for a list of names, suites, YAML paths and ``lm_eval:<name>`` (what ``--tasks a,b,suite`` means).

    lm-eval tasks keep their place among evalkit's; a task named twice runs once.
    """
    from evalkit.tasks.lm_eval import LM_EVAL_PREFIX

    resolved: dict[str, Task] = {}
    for name in names:
        if name.startswith(LM_EVAL_PREFIX):
            from evalkit.tasks.lm_eval import lm_eval_tasks

            for task in lm_eval_tasks(name[len(LM_EVAL_PREFIX) :], data_dir):
                resolved.setdefault(task.name, task)
        else:
            for member in expand([name]):
                if member not in resolved:
                    resolved[member] = get_task(member, data_dir)
    return list(resolved.values())


def list_tasks() -> list[tuple[str, str]]:
    """(name, description) of every built-in task and suite, for ``evalkit list tasks``."""
    rows = []
    for name, path in _builtin_files().items():
        suite = _suite(name)
        if suite:
            rows.append((name, f"suite of {', '.join(suite[1])}" + (f": {suite[0]}" if suite[0] else "")))
        else:
            rows.append((name, load_spec(path).description.strip().split("\n")[0]))
    return rows
