"""One view of a per-sample record, whatever task wrote it.

Tasks write ``doc_id``, ``prompt``, ``output``, ``reference`` and their
per-sample scores, but scoring tasks and future tasks add fields of their own
(choices, loglikelihoods, ...). The report must show every record without
knowing each task, so this module picks the known fields by name, takes
per-sample scores from the top level or a ``scores``/``metrics`` object, and
keeps everything else as "other fields" shown as text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ID_KEYS = ("doc_id", "id", "idx", "index")
PROMPT_KEYS = ("prompt", "input", "context", "source")
OUTPUT_KEYS = ("output", "prediction", "response", "generation")
REFERENCE_KEYS = ("reference", "references", "target", "answer", "gold")
SCORE_OBJECTS = ("scores", "metrics")


@dataclass
class SampleView:
    doc_id: str
    prompt: str
    output: str
    reference: str
    scores: dict[str, float] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)


def as_text(value: Any) -> str:
    """Strings stay as they are; anything else (lists of references, choices, numbers) becomes compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def score_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def view_sample(record: dict, position: int, metric_names: set[str]) -> SampleView:
    """Read one record; scores are the task's metrics found in the record plus every number in its scores object."""
    used: set[str] = set()

    def first(keys: tuple[str, ...]) -> Any:
        for key in keys:
            if key in record:
                used.add(key)
                return record[key]
        return None

    doc_id = first(ID_KEYS)
    scores: dict[str, float] = {}
    for key in SCORE_OBJECTS:
        nested = record.get(key)
        if isinstance(nested, dict):
            used.add(key)
            scores.update({k: v for k, v in ((k, score_value(v)) for k, v in nested.items()) if v is not None})
    prompt, output, reference = first(PROMPT_KEYS), first(OUTPUT_KEYS), first(REFERENCE_KEYS)
    for key, value in record.items():
        if key in metric_names and key not in used and score_value(value) is not None:
            scores[key] = score_value(value)
            used.add(key)
    return SampleView(
        doc_id=as_text(doc_id) if doc_id is not None else str(position),
        prompt=as_text(prompt),
        output=as_text(output),
        reference=as_text(reference),
        scores=scores,
        other={k: as_text(v) for k, v in record.items() if k not in used},
    )
