"""Jinja2 over document fields: prompt templates and field expressions.

Two kinds of spec value are rendered here:

* *templates* (``doc_to_text``, ``doc_to_target``) render to text, e.g.
  ``"Question: {{ goal }}\\nAnswer:"``;
* *expressions* (``doc_to_choice``, ``gold``, ``reference``, hub field maps)
  evaluate to Python values, e.g. ``"[sol1, sol2]"`` or ``"label | int"``, so a
  list of choices stays a list and a label stays an int.

Undefined names raise instead of rendering as empty text, so a template that
names a missing field fails loudly with the field's name. The few text
cleaners that lm-evaluation-harness implements in Python (the WikiText
detokenizer, the HellaSwag cleaner) are registered as Jinja filters, which
keeps task files declarative.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jinja2

from evalkit.errors import EvalkitError


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation spacing, step for step as lm-evaluation-harness 0.4.13's
    ``wikitext_detokenizer`` (lm_eval/tasks/wikitext/preprocess_wikitext.py), which scores this text."""
    string = text
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    for mark in ":;.!?,":
        string = string.replace(f" {mark} ", f"{mark} ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleaner (drops WikiHow ``[title]``/``[step]`` markers);
    used on hub rows, the shared data already went through the same cleaning."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


FILTERS: dict[str, Callable[..., Any]] = {
    "wikitext_detokenize": wikitext_detokenize,
    "hellaswag_preprocess": hellaswag_preprocess,
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(FILTERS)
    return env


@lru_cache(maxsize=256)
def _template(source: str) -> jinja2.Template:
    return environment().from_string(source)


@lru_cache(maxsize=256)
def _expression(source: str) -> Callable[..., Any]:
    return environment().compile_expression(_unwrap(source), undefined_to_none=False)


def _unwrap(expression: str) -> str:
    """Accept ``label`` and ``{{ label }}`` alike for expressions."""
    text = expression.strip()
    if text.startswith("{{") and text.endswith("}}"):
        text = text[2:-2].strip()
    return text


def check_template(source: str, where: str) -> None:
    """Compile a template now so syntax errors surface when the task file is read."""
    try:
        _template(source)
    except jinja2.TemplateSyntaxError as err:
        raise EvalkitError(f"{where}: template syntax error ({err.message}); fix the Jinja2 template") from None


def check_expression(source: str, where: str) -> None:
    try:
        _expression(source)
    except jinja2.TemplateSyntaxError as err:
        raise EvalkitError(f"{where}: expression syntax error ({err.message}); fix the Jinja2 expression") from None


def render(source: str, doc: dict, where: str) -> str:
    """Render a text template over one document's fields."""
    try:
        return _template(source).render(**doc)
    except jinja2.UndefinedError as err:
        raise EvalkitError(f"{where}: {err.message}; the document fields are {sorted(doc)}") from None
    except jinja2.TemplateError as err:
        raise EvalkitError(f"{where}: {err}; fix the template") from None


def evaluate(source: str, doc: dict, where: str) -> Any:
    """Evaluate an expression over one document's fields and return the Python value."""
    try:
        value = _expression(source)(**doc)
    except jinja2.UndefinedError as err:
        raise EvalkitError(f"{where}: {err.message}; the document fields are {sorted(doc)}") from None
    except jinja2.TemplateError as err:
        raise EvalkitError(f"{where}: {err}; fix the expression") from None
    if isinstance(value, jinja2.Undefined) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, jinja2.Undefined) for v in value)
    ):
        raise EvalkitError(f"{where}: {source!r} is undefined; the document fields are {sorted(doc)}")
    return value
