"""Post-processing of generations before scoring (lm-evaluation-harness's ``filter_list``).

A filter is a chain of small steps declared in the task file, e.g. for GSM8K::

    filter:
      - regex: {pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)", select: -1}
      - remove: [",", "\\\\$", "\\\\.$"]
      - strip

``regex`` behaves exactly as lm-eval's ``RegexFilter`` (``findall``, pick the
``select``-th match, the first non-empty group of a tuple, strip, fallback
``"[invalid]"``), so extraction rules copied from lm-eval task files keep
their meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from evalkit.errors import EvalkitError

Step = Callable[[str], str]


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


_SIMPLE: dict[str, Step] = {"strip": str.strip, "lower": str.lower}


@dataclass
class OutputFilter:
    """A compiled chain of steps; ``OutputFilter([])`` passes text through."""

    steps: list[Step]

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text


def build_filter(config: Any, where: str) -> OutputFilter:
    """Compile the ``filter`` list of a task file, with one-line errors for bad steps."""
    if config is None:
        return OutputFilter([])
    if not isinstance(config, list):
        raise EvalkitError(f"{where}: 'filter' must be a list of steps (regex, remove, strip, lower)")
    steps: list[Step] = []
    for item in config:
        try:
            if isinstance(item, str) and item in _SIMPLE:
                steps.append(_SIMPLE[item])
            elif isinstance(item, dict) and set(item) == {"regex"}:
                args = item["regex"] if isinstance(item["regex"], dict) else {"pattern": item["regex"]}
                steps.append(_regex(**args))
            elif isinstance(item, dict) and set(item) == {"remove"}:
                patterns = item["remove"]
                steps.append(_remove([patterns] if isinstance(patterns, str) else list(patterns)))
            else:
                raise EvalkitError(
                    f"{where}: unknown filter step {item!r}; use 'strip', 'lower', "
                    "{regex: {pattern: P, select: N, fallback: F}} or {remove: [P, ...]}"
                )
        except (re.error, TypeError) as err:
            raise EvalkitError(f"{where}: bad filter step {item!r} ({err}); fix the pattern or its arguments") from None
    return OutputFilter(steps)
