"""Post-processing of generations before scoring (lm-evaluation-harness's filters).

A filter is a chain of small steps declared in the task file, e.g.::

    filter:
      - regex: {pattern: "-?[0-9]+", select: 0}
      - remove: [",", "\\\\$", "\\\\.$"]
      - strip

``filter_list`` gives several named pipelines instead (lm-eval's ``filter_list``);
every metric is then reported once per pipeline, as ``metric,name``::

    filter_list:
      - name: strict-match
        filter:
          - function: regex
            regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
          - function: take_first

Steps may be written evalkit's way (``strip``, ``{regex: {...}}``) or lm-eval's
way (``{function: NAME, ...}``), so steps copied from lm-eval task files work.
``regex`` behaves exactly as lm-eval's ``RegexFilter`` (``findall``, pick the
``select``-th match, the first non-empty group of a tuple, strip, fallback
``"[invalid]"``); ``lowercase``, ``uppercase`` and ``remove_whitespace`` are
lm-eval's ``str.lower``, ``str.upper`` and ``str.strip``; ``take_first`` keeps
the first of a request's responses, which with evalkit's one response per
request leaves the text as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evalkit.errors import EvalkitError

Step = Callable[[str], str]

LM_EVAL_FUNCTIONS = ("regex", "take_first", "lowercase", "uppercase", "remove_whitespace")
# lm-eval's RegexFilter argument names -> evalkit's, so either spelling works.
_REGEX_ALIASES = {"regex_pattern": "pattern", "group_select": "select"}


def _regex(pattern: str, select: int = 0, fallback: str = "[invalid]") -> Step:
    compiled = re.compile(pattern)

    def step(text: str) -> str:
        matches = compiled.findall(text)
        if not matches:
            return fallback
        match = matches[select]
        if isinstance(match, tuple):
            match = next((group for group in match if group), fallback)
        return match.strip()

    return step


def _remove(patterns: list[str]) -> Step:
    compiled = [re.compile(p) for p in patterns]

    def step(text: str) -> str:
        for regex in compiled:
            text = regex.sub("", text)
        return text

    return step


def _take_first(text: str) -> str:
    return text


_SIMPLE: dict[str, Step] = {
    "strip": str.strip,
    "lower": str.lower,
    # lm-eval's names (lm_eval/filters/transformation.py, extraction.py, selection.py)
    "lowercase": str.lower,
    "uppercase": str.upper,
    "remove_whitespace": str.strip,
    "take_first": _take_first,
}

_STEP_HELP = (
    "use 'strip', 'lower', 'lowercase', 'uppercase', 'remove_whitespace', 'take_first', "
    "{regex: {pattern: P, select: N, fallback: F}}, {remove: [P, ...]} "
    "or lm-eval's {function: NAME, ...} with NAME one of " + ", ".join(LM_EVAL_FUNCTIONS)
)


@dataclass
class OutputFilter:
    """A compiled chain of steps; ``OutputFilter([])`` passes text through."""

    steps: list[Step]

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text


def _regex_args(args: Any) -> dict[str, Any]:
    """evalkit's ``_regex`` arguments from either spelling; a pattern given twice is an error, not a guess."""
    if not isinstance(args, dict):
        return {"pattern": args}
    out: dict[str, Any] = {}
    for key, value in args.items():
        name = _REGEX_ALIASES.get(key, key)
        if name in out:
            raise TypeError(f"{key!r} repeats {name!r}")
        out[name] = value
    return out


def _from_lm_eval(item: dict, where: str) -> Any:
    """lm-eval's ``{function: NAME, **kwargs}`` step as evalkit's own spelling of it."""
    name = item["function"]
    if name not in LM_EVAL_FUNCTIONS:
        raise EvalkitError(f"{where}: unknown filter function {name!r}; evalkit supports {', '.join(LM_EVAL_FUNCTIONS)}")
    kwargs = {k: v for k, v in item.items() if k != "function"}
    if name == "regex":
        return {"regex": kwargs}
    if kwargs:
        raise EvalkitError(f"{where}: filter function {name!r} takes no arguments, got {', '.join(kwargs)}; remove them")
    return name


def _step(item: Any, where: str) -> Step:
    """One compiled step, with one-line errors for unknown steps and bad patterns."""
    if isinstance(item, dict) and "function" in item:
        item = _from_lm_eval(item, where)
    try:
        if isinstance(item, str) and item in _SIMPLE:
            return _SIMPLE[item]
        if isinstance(item, dict) and set(item) == {"regex"}:
            return _regex(**_regex_args(item["regex"]))
        if isinstance(item, dict) and set(item) == {"remove"}:
            patterns = item["remove"]
            return _remove([patterns] if isinstance(patterns, str) else list(patterns))
    except (re.error, TypeError) as err:
        raise EvalkitError(f"{where}: bad filter step {item!r} ({err}); fix the pattern or its arguments") from None
    raise EvalkitError(f"{where}: unknown filter step {item!r}; {_STEP_HELP}")


def _steps(config: Any, where: str, field: str) -> list[Step]:
    if not isinstance(config, list):
        raise EvalkitError(f"{where}: {field} must be a list of steps ({', '.join(_SIMPLE)}, regex, remove)")
    steps = [_step(item, where) for item in config]
    if _take_first in steps[:-1]:
        # in lm-eval, take_first turns each response list into one string, which later steps do not expect
        raise EvalkitError(f"{where}: {field}: 'take_first' must be the last step, as in lm-eval; move it to the end")
    return steps


def build_filter(config: Any, where: str) -> OutputFilter:
    """Compile the ``filter`` list of a task file, with one-line errors for bad steps."""
    if config is None:
        return OutputFilter([])
    return OutputFilter(_steps(config, where, "'filter'"))


def build_filter_list(config: Any, where: str) -> dict[str, OutputFilter]:
    """Compile ``filter_list``: named pipelines in file order, each name once (it becomes part of metric names)."""
    usage = "a list of {name: NAME, filter: [steps...]} pipelines"
    if not isinstance(config, list) or not config:
        raise EvalkitError(f"{where}: 'filter_list' must be {usage}")
    pipelines: dict[str, OutputFilter] = {}
    for entry in config:
        if not isinstance(entry, dict) or set(entry) != {"name", "filter"}:
            raise EvalkitError(f"{where}: 'filter_list' entry {entry!r:.80} must be {{name: NAME, filter: [steps...]}}")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise EvalkitError(f"{where}: 'filter_list' names must be non-empty text, got {name!r}; name every pipeline")
        if name in pipelines:
            raise EvalkitError(f"{where}: 'filter_list' names {name!r} twice; give each pipeline its own name")
        pipelines[name] = OutputFilter(_steps(entry["filter"], where, f"'filter_list' pipeline {name!r}"))
    return pipelines
