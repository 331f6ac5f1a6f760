"""The comparisons a leaderboard makes: metric direction, headline choice, ranks, Pareto fronts, paired tests.

results.json stores metric names and values but not which way is better or
which metric heads a task, so both follow the field's conventions by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evalkit.metrics.diversity import is_diversity_metric as is_diversity  # the report's name for it

LOWER_IS_BETTER = ("perplexity", "ppl", "bits_per_byte", "bpb", "wer", "cer", "mer", "wil", "ter", "loss", "self_bleu", "self-bleu")
# The metric leaderboards conventionally quote first (Open LLM Leaderboard: acc_norm for HellaSwag; sacrebleu: BLEU).
HEADLINE_PREFERENCE = (
    "acc_norm", "acc", "exact_match", "em", "bleu", "chrf", "rougeLsum", "rougeL", "rouge1", "comet",
    "bertscore_f1", "f1", "word_perplexity", "perplexity", "bits_per_byte", "wer", "cer",
)


def higher_is_better(metric: str) -> bool:
    name = metric.lower().partition(",")[0]  # "ter,my-filter": a filter pipeline's row keeps its metric's direction
    return not any(name == key or name.startswith(key + "_") or name.endswith("_" + key) or f"_{key}_" in name
                   for key in LOWER_IS_BETTER)


def headline_metric(metrics: Sequence[str]) -> str:
    """The task's column in the overview: the conventional metric if present, else the first non-diversity one."""
    for preferred in HEADLINE_PREFERENCE:
        if preferred in metrics:
            return preferred
    quality = [m for m in metrics if not is_diversity(m)]
    return (quality or list(metrics))[0]


def is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def oriented(value: float, metric: str) -> float:
    """The value with the sign flipped for lower-is-better metrics, so larger always means better."""
    return value if higher_is_better(metric) else -value


def ranks(values: Sequence[float]) -> list[float]:
    """1 = best (largest oriented value); ties share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def win_rates(values: Sequence[float]) -> list[float]:
    """HELM's head-to-head win rate within one column: share of other rows beaten (ties count half)."""
    n = len(values)
    if n < 2:
        return [1.0] * n
    return [
        sum(1.0 if v > w else 0.5 if v == w else 0.0 for j, w in enumerate(values) if j != i) / (n - 1)
        for i, v in enumerate(values)
    ]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both axes (both maximised)."""
    return [
        not any((u >= x and v >= y) and (u > x or v > y) for u, v in points)
        for x, y in points
    ]
