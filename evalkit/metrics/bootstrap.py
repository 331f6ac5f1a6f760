"""Bootstrap confidence intervals and paired significance tests over per-item statistics.

Resampling draws items with replacement and recomputes the *corpus* statistic
from the summed statistics of the drawn items (for BLEU: n-gram counts, as
sacrebleu's paired bootstrap does), never an average of sentence scores. A
resample is drawn as multinomial counts per item, so R resamples are one
[R, N] @ [N, K] product, done in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric

_CHUNK_CELLS = 2_000_000  # resample-count cells per chunk (16 MB of float64)


def resample_weights(n_items: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of [r, N] multinomial counts; each row is one bootstrap resample of the N items."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n_items, 1))
    probabilities = np.full(n_items, 1.0 / n_items)
    for start in range(0, n_resamples, chunk):
        yield rng.multinomial(n_items, probabilities, size=min(chunk, n_resamples - start)).astype(np.float64)


def bootstrap_scores(metric: CorpusMetric, stats: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The corpus score on each of ``n_resamples`` resamples, shape [R]."""
    return np.concatenate(
        [np.atleast_1d(metric.score_from_totals(w @ stats)) for w in resample_weights(len(stats), n_resamples, seed)]
    )


def percentile_ci(scores: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    metric: CorpusMetric, stats: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the corpus score over item resamples."""
    if n_resamples < 1:
        raise EvalkitError(f"bootstrap: need at least one resample, got {n_resamples}")
    return percentile_ci(bootstrap_scores(metric, stats, n_resamples, seed), confidence)


@dataclass
class PairedTest:
    """System A against system B on the same items: ``delta`` = score(A) - score(B)."""

    method: str
    delta: float
    p_value: float
    ci: tuple[float, float] | None = None
    n_resamples: int | None = None


def paired_bootstrap(
    metric: CorpusMetric, stats_a: np.ndarray, stats_b: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> PairedTest:
    """Paired bootstrap (Koehn 2004): both systems are scored on the same resampled items."""
    _check_paired(stats_a, stats_b)
    observed = float(metric.score_from_totals(stats_a.sum(0)) - metric.score_from_totals(stats_b.sum(0)))
    boot_a = bootstrap_scores(metric, stats_a, n_resamples, seed)
    boot_b = bootstrap_scores(metric, stats_b, n_resamples, seed)  # same seed: the same resampled items
    return paired_from_resamples(observed, boot_a - boot_b, confidence)


def paired_from_resamples(observed: float, deltas: np.ndarray, confidence: float = 0.95) -> PairedTest:
    """Two-sided p-value from resampled deltas centred on the observed one (their null distribution), +1 corrected.

    Scoring each system once on a fixed set of resamples (same seed, same items)
    and subtracting gives every pairwise test without rescoring per pair.
    """
    extreme = np.count_nonzero(np.abs(deltas - observed) >= abs(observed))
    return PairedTest("paired-bootstrap", observed, (extreme + 1) / (len(deltas) + 1), percentile_ci(deltas, confidence), len(deltas))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedTest:
    """Exact McNemar test on 0/1 correctness: a binomial test on the discordant items."""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    _check_paired(correct_a, correct_b)
    only_a = int(np.count_nonzero(correct_a & ~correct_b))
    only_b = int(np.count_nonzero(~correct_a & correct_b))
    delta = float(correct_a.mean() - correct_b.mean())
    p_value = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return PairedTest("mcnemar-exact", delta, p_value)


def paired_test(
    metric: CorpusMetric, stats_a: np.ndarray, stats_b: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> PairedTest:
    """McNemar for per-item correctness metrics (accuracy, exact match), paired bootstrap otherwise."""
    if metric.binary_items:
        return mcnemar(stats_a[:, 0], stats_b[:, 0])
    return paired_bootstrap(metric, stats_a, stats_b, n_resamples=n_resamples, seed=seed)


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise EvalkitError(f"paired test: both systems must be scored on the same items, got {len(a)} and {len(b)}")
