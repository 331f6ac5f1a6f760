"""What every metric returns: a score with the settings it was computed under (the metrics themselves: ``corpus.CorpusMetric``)."""

from __future__ import annotations

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

