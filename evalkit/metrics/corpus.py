"""The shape shared by every evalkit metric: per-item statistics, summed, then scored.

Why this shape: a corpus metric such as BLEU or WER is not the mean of its
sentence scores; it is a function of *summed* sufficient statistics (n-gram
matches, edit operations). Keeping the per-item statistics lets the bootstrap
resample items and recompute the real corpus statistic on each resample, and
lets two systems be compared item by item with a paired test. Metrics that
are plain averages (accuracy, BERTScore, COMET, ROUGE) use ``[value, 1]`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult


class CorpusMetric:
    """Base class: subclasses define ``item_stats``, ``score_from_totals`` and ``signature``."""

    name: str = ""
    description: str = ""
    higher_is_better: bool = True
    binary_items: bool = False  # per-item correctness in {0, 1}: McNemar's test applies
    needs_sources: bool = False

    def item_stats(
        self, predictions: Sequence[Any], references: Sequence[Any], sources: Sequence[str] | None = None
    ) -> np.ndarray:
        """One row of sufficient statistics per item, shape [N, K]."""
        raise NotImplementedError

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        """Corpus score from column sums; ``totals`` is [K] or [R, K] (R bootstrap resamples)."""
        raise NotImplementedError

    def signature(self) -> str:
        raise NotImplementedError

    def per_sample(self, stats: np.ndarray) -> list[float] | None:
        """Each item's own score (the corpus formula on one row) where that means something."""
        return [float(x) for x in self.score_from_totals(stats)]

    def extra(self, stats: np.ndarray) -> dict[str, Any]:
        return {}

    def result(self, stats: np.ndarray) -> MetricResult:
        """A MetricResult from precomputed item statistics (no confidence interval yet)."""
        return MetricResult(
            name=self.name,
            score=float(self.score_from_totals(stats.sum(axis=0))),
            signature=self.signature(),
            per_sample=self.per_sample(stats),
            extra={"n_items": int(stats.shape[0]), **self.extra(stats)},
        )

    def compute(
        self, predictions: Sequence[Any], references: Sequence[Any], sources: Sequence[str] | None = None
    ) -> MetricResult:
        return self.result(self.item_stats(predictions, references, sources))


class MeanMetric(CorpusMetric):
    """A metric whose corpus score is the mean of per-item scores; rows are ``[score, 1]``."""

    def item_scores(
        self, predictions: Sequence[Any], references: Sequence[Any], sources: Sequence[str] | None = None
    ) -> Sequence[float]:
        raise NotImplementedError

    def item_stats(self, predictions, references, sources=None) -> np.ndarray:
        scores = np.asarray(self.item_scores(predictions, references, sources), dtype=np.float64)
        return np.stack([scores, np.ones_like(scores)], axis=1)

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        return totals[..., 0] / totals[..., 1]

    def per_sample(self, stats: np.ndarray) -> list[float]:
        return stats[:, 0].tolist()


def check_lengths(predictions: Sequence[Any], references: Sequence[Any], name: str) -> None:
    """Bad input fails here with one line, not deep inside a library."""
    if len(predictions) != len(references):
        raise EvalkitError(
            f"{name}: {len(predictions)} predictions but {len(references)} references; give one reference (or list) per prediction"
        )
    if len(predictions) == 0:
        raise EvalkitError(f"{name}: no predictions to score; pass at least one item")


def reference_lists(references: Sequence[Any], name: str) -> list[list[str]]:
    """Normalise references to one list of strings per segment (several references allowed)."""
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise EvalkitError(f"{name}: reference {i} must be a string or a non-empty list of strings, got {ref!r:.80}")
        out.append(refs)
    return out
