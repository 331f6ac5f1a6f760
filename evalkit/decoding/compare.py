"""The strategy comparison: one row per decoding strategy with quality, diversity, length and speed,
and the Pareto front of quality vs speed.

Presentation-free: the CLI and the run summary render these rows however they like.
"""

from __future__ import annotations

import math

from evalkit.errors import EvalkitError


def compare_strategies(
    rows: list[dict], quality_key: str = "quality", speed_key: str = "tokens_per_s"
) -> list[dict]:
    """Copies of ``rows`` (one per strategy) with ``pareto`` set: True when no other row is at least as
    good on both ``quality_key`` and ``speed_key`` (both higher-better) and strictly better on one.

    Rows whose quality or speed is missing or NaN are never Pareto-best. Input order is kept.
    """
    for row in rows:
        if quality_key not in row or speed_key not in row:
            missing = quality_key if quality_key not in row else speed_key
            raise EvalkitError(
                f"strategy row {row.get('strategy', row)!r} has no {missing!r}; its keys are {sorted(row)}"
            )

    def point(row: dict) -> tuple[float, float] | None:
        q, s = row[quality_key], row[speed_key]
        if q is None or s is None or math.isnan(q) or math.isnan(s):
            return None
        return float(q), float(s)

    points = [point(row) for row in rows]

    def dominated(p: tuple[float, float]) -> bool:
        return any(o is not None and o[0] >= p[0] and o[1] >= p[1] and o != p for o in points)

    return [{**row, "pareto": p is not None and not dominated(p)} for row, p in zip(rows, points)]


DIVERSITY_COLUMNS = ("distinct-1", "distinct-2", "self-bleu", "rep-4", "length")


def strategy_rows(results: dict, task: str) -> list[dict]:
    """Rows for one generation task of a results.json, Pareto-marked on its first quality metric.

    The quality metric is the task's first metric, its headline (e.g. exact_match or bleu):
    results list the task's own metrics before the diversity ones.
    """
    by_label = results["results"][task]
    first = next(iter(by_label.values()))
    quality = next(m for m in first if not m.endswith("_ci"))
    rows = []
    for label, values in by_label.items():
        cost = results["efficiency"][task][label]
        rows.append({
            "strategy": label,
            "quality_metric": quality,
            "quality": values.get(quality),
            **{column: values.get(column) for column in DIVERSITY_COLUMNS},
            "tokens_per_s": cost.get("tokens_per_s"),
        })
    return compare_strategies(rows)
