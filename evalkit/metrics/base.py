"""What every metric returns: a score with the settings it was computed under (the metrics themselves: ``corpus.CorpusMetric``),
and how results files lay it out: ``{metric: score, metric_ci: [low, high]}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MetricResult:
    """A corpus score with the evidence behind it.

    ``signature`` records every setting and library version (sacrebleu style),
    so two numbers are only compared when they were computed the same way.
    ``ci`` is a bootstrap confidence interval (low, high) when one was computed.
    """

    name: str
    score: float
    signature: str
    per_sample: list[float] | None = None
    ci: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


CI_SUFFIX = "_ci"  # results.json: a metric's bootstrap interval sits next to it under "<metric>_ci"


def ci_key(metric: str) -> str:
    """The key of ``metric``'s interval in a results file."""
    return metric + CI_SUFFIX


def is_ci_key(key: str) -> bool:
    """Whether a key of a results file's cell is an interval rather than a metric."""
    return key.endswith(CI_SUFFIX)


def flat_values(results: Mapping[str, MetricResult]) -> dict[str, Any]:
    """One cell of a results file: each metric's score under its key, followed by its interval when one was computed."""
    values: dict[str, Any] = {}
    for name, result in results.items():
        values[name] = result.score
        if result.ci is not None:
            values[ci_key(name)] = list(result.ci)
    return values
