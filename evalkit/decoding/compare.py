"""The strategy comparison: one row per decoding strategy with quality, diversity, length, speed and cost,
and the Pareto front of quality vs cost.

The cost is deterministic: forward-equivalents per generated token (``cost_per_token``, see
:class:`evalkit.results.Efficiency`), counted by the engine rather than timed, so the same run on
another machine, or under another load, stars the same strategies. Tokens/s stays in the rows as
information. Results without the counts (an HTTP API backend, or a results.json written before
they existed) fall back: when no row has a cost, the front is on tokens/s as before
(``pareto_axis`` says which); a row without a cost among rows with one is never starred.

Presentation-free: the CLI and the run summary render these rows however they like.
"""

from __future__ import annotations

import math
import re

from evalkit.errors import EvalkitError
from evalkit.metrics.base import is_ci_key
from evalkit.metrics.diversity import SUMMARY_NAMES


def compare_strategies(
    rows: list[dict], quality_key: str = "quality", speed_key: str = "tokens_per_s", *, speed_higher_better: bool = True
) -> list[dict]:
    """Copies of ``rows`` (one per strategy) with ``pareto`` set: True when no other row is at least as
    good on both ``quality_key`` (higher-better) and ``speed_key`` and strictly better on one.

    ``speed_key`` is higher-better by default (tokens/s); pass ``speed_higher_better=False`` for a
    cost (``cost_per_token``). Rows whose quality or speed is missing or NaN are never Pareto-best.
    Input order is kept.
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
        return float(q), (float(s) if speed_higher_better else -float(s))

    points = [point(row) for row in rows]

    def dominated(p: tuple[float, float]) -> bool:
        return any(o is not None and o[0] >= p[0] and o[1] >= p[1] and o != p for o in points)

    return [{**row, "pareto": p is not None and not dominated(p)} for row, p in zip(rows, points)]


#: The part of a label that turns a strategy speculative: ``lookup4``, ``draft8``.
_SPECULATIVE_PART = re.compile(r"(lookup|draft)\d+\Z", re.IGNORECASE)
#: Settings that only say how tokens are proposed, not which tokens come out.
_SPECULATIVE_SETTINGS = ("speculative", "num_speculative_tokens", "lookup_max_ngram", "draft_model")


def is_speculative(label: str, decoding: dict | None = None) -> bool:
    """Whether the strategy drafts tokens: its decoding config says so, else its label has a lookupK/draftK part."""
    if isinstance(decoding, dict) and "speculative" in decoding:
        return decoding["speculative"] is not None
    return any(_SPECULATIVE_PART.match(part.strip()) for part in label.split("+"))


def base_strategy(label: str, labels: list[str], decodings: dict | None = None) -> str | None:
    """The strategy of ``labels`` that is ``label`` without drafts, or None when the run did not include it.

    First by label (``temp0.7+draft4`` -> ``temp0.7``; a bare ``lookup4`` -> ``greedy``), then, for
    named strategies, by decoding config: the one whose settings equal ``label``'s apart from the
    speculative ones (and the name).
    """
    parts = [part for part in label.split("+") if not _SPECULATIVE_PART.match(part.strip())]
    wanted = "+".join(parts) or "greedy"
    if wanted != label:
        for candidate in labels:
            if candidate != label and candidate.strip().lower() == wanted.strip().lower():
                return candidate
    decodings = decodings or {}
    mine = decodings.get(label)
    if not isinstance(mine, dict):
        return None

    def settings(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in ("name", "label", *_SPECULATIVE_SETTINGS)}

    for candidate in labels:
        other = decodings.get(candidate)
        if candidate != label and isinstance(other, dict) and other.get("speculative") is None and settings(other) == settings(mine):
            return candidate
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def strategy_rows(results: dict, task: str) -> list[dict]:
    """Rows for one generation task of a results.json, Pareto-marked on its first quality metric vs cost.

    The quality metric is the task's first metric, its headline (e.g. exact_match or bleu):
    results list the task's own metrics before the diversity ones. Each row has:

    * ``strategy``, ``quality_metric``, ``quality`` and the diversity columns (``SUMMARY_NAMES``);
    * ``tokens_per_s``: wall-clock throughput (informative; depends on the machine);
    * ``cost_per_token``: forward-equivalents per generated token (machine-independent, lower is
      better; None without the counts);
    * ``speculative``: whether the strategy drafts tokens; then ``acceptance_rate`` (accepted /
      drafted) and ``tokens_per_forward`` (generated tokens per target forward), None otherwise or
      without the counts;
    * ``base_strategy``: for a speculative row, the same strategy without drafts when the results
      hold it (else None); ``cost_speedup`` (its cost per token over this row's) and
      ``wall_speedup`` (this row's tokens/s over its), None where either side lacks the value;
    * ``pareto``: on the front of quality (higher-better) vs ``pareto_axis``: "cost_per_token"
      (lower-better) when any row of the task has a cost, else "tokens_per_s" (higher-better).
    """
    by_label = results["results"][task]
    first = next(iter(by_label.values()))
    quality = next(m for m in first if not is_ci_key(m))
    efficiency = (results.get("efficiency") or {}).get(task) or {}
    decodings = results.get("decoding") or {}
    labels = list(by_label)
    rows = []
    for label, values in by_label.items():
        cost = efficiency.get(label) or {}
        speculative = is_speculative(label, decodings.get(label))
        rows.append({
            "strategy": label,
            "quality_metric": quality,
            "quality": values.get(quality),
            **{column: values.get(column) for column in SUMMARY_NAMES},
            "tokens_per_s": cost.get("tokens_per_s"),
            "cost_per_token": cost.get("cost_per_token"),
            "speculative": speculative,
            "acceptance_rate": cost.get("acceptance_rate") if speculative else None,
            "tokens_per_forward": cost.get("tokens_per_forward") if speculative else None,
            "base_strategy": base_strategy(label, labels, decodings) if speculative else None,
        })
    by_strategy = {row["strategy"]: row for row in rows}
    for row in rows:
        base = by_strategy.get(row["base_strategy"]) if row["base_strategy"] else None
        row["cost_speedup"] = _ratio(base["cost_per_token"], row["cost_per_token"]) if base else None
        row["wall_speedup"] = _ratio(row["tokens_per_s"], base["tokens_per_s"]) if base else None
    if any(row["cost_per_token"] is not None for row in rows):
        marked = compare_strategies(rows, speed_key="cost_per_token", speed_higher_better=False)
        axis = "cost_per_token"
    else:
        marked = compare_strategies(rows)
        axis = "tokens_per_s"
    return [{**row, "pareto_axis": axis} for row in marked]
