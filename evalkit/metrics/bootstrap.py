"""Bootstrap confidence intervals and paired significance tests over per-item statistics.

Resampling draws items with replacement and recomputes the *corpus* statistic
from the summed statistics of the drawn items (for BLEU: n-gram counts, as
sacrebleu's paired bootstrap does), never an average of sentence scores. A
resample is drawn as multinomial counts per item, so R resamples are one
[R, N] @ [N, K] product, done in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric

_CHUNK_CELLS = 2_000_000  # resample-count cells per chunk (16 MB of float64)
Item = TypeVar("Item")


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
    _check_resamples(n_resamples)
    return percentile_ci(bootstrap_scores(metric, stats, n_resamples, seed), confidence)


def resampled_items(items: Sequence[Item], n_resamples: int, seed: int) -> Iterator[list[Item]]:
    """Each bootstrap resample as a list of items (one drawn k times appears k times), from ``resample_weights``'s draws."""
    positions = np.arange(len(items))
    for weights in resample_weights(len(items), n_resamples, seed):
        for counts in weights.astype(np.int64):
            yield [items[i] for i in np.repeat(positions, counts)]


def bootstrap_aggregate_ci(
    aggregate: Callable[[list[Any]], float], items: Sequence[Any], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of any aggregate over item resamples, for scores that are no function of summed statistics.

    lm-eval's aggregations (mean, f1, corpus BLEU over (reference, prediction)
    pairs, ...) take the list of per-item values; each resample hands them the
    drawn items. The resamples are the ones ``bootstrap_ci`` draws for the same
    seed and number of items.
    """
    _check_resamples(n_resamples)
    if not items:
        raise EvalkitError("bootstrap: no items to resample")
    return percentile_ci(np.array([float(aggregate(drawn)) for drawn in resampled_items(items, n_resamples, seed)]), confidence)


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 1:
        raise EvalkitError(f"bootstrap: need at least one resample, got {n_resamples}")


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


_TIE_TOLERANCE = 1e-9  # relative: far above float summation error, far below any real difference of scores


def paired_from_resamples(observed: float, deltas: np.ndarray, confidence: float = 0.95) -> PairedTest:
    """Two-sided p-value from resampled deltas centred on the observed one (their null distribution), +1 corrected.

    Scoring each system once on a fixed set of resamples (same seed, same items)
    and subtracting gives every pairwise test without rescoring per pair.

    A resample whose delta is 0 or twice the observed one ties with it in exact
    arithmetic, common when per-item scores take few values (accuracy, exact
    match); float sums put such a tie on either side depending on summation
    order, so ties count as extreme within a relative tolerance.
    """
    tolerance = _TIE_TOLERANCE * max(abs(observed), float(np.abs(deltas).max(initial=0.0)))
    extreme = np.count_nonzero(np.abs(deltas - observed) >= abs(observed) - tolerance)
    return PairedTest("paired-bootstrap", observed, (extreme + 1) / (len(deltas) + 1), percentile_ci(deltas, confidence), len(deltas))


# ---------------------------------------------------------------- sacreBLEU's paired tests, run by sacreBLEU itself

PAIRED_TESTS = ("bootstrap", "sacrebleu", "approximate-randomization")
SACREBLEU_DEFAULT_SEED = 12345  # sacrebleu.significance: SACREBLEU_SEED, else 12345
SACREBLEU_AR_TRIALS = 10000  # sacrebleu --paired-ar-n default


def sacrebleu_seed() -> int:
    """The seed `sacrebleu --paired-bs/--paired-ar` would use: $SACREBLEU_SEED, else 12345."""
    import os

    text = os.environ.get("SACREBLEU_SEED", str(SACREBLEU_DEFAULT_SEED))
    try:
        return int(text)
    except ValueError:
        raise EvalkitError(f"SACREBLEU_SEED={text!r}: evalkit needs an integer seed to reproduce sacrebleu's tests; pass --seed") from None


class _Score:
    def __init__(self, score: float) -> None:
        self.score = score


class SacrebleuStatsView:
    """Presents evalkit's per-segment statistics to sacrebleu.significance's test functions.

    sacrebleu's ``_paired_bs_test`` / ``_paired_ar_test`` take a metric object
    and call its ``_extract_corpus_statistics`` on the "hypotheses"; this view
    is given the statistics in place of the hypotheses and hands them back, so
    sacrebleu's own resampling, scoring and p-value code runs unchanged. For
    BLEU, chrF and TER the scores come from the sacrebleu metric object inside
    evalkit's metric (statistics as the integers sacrebleu extracted, so the
    arithmetic is bit-identical); any other metric is scored by its own
    ``score_from_totals`` on the summed statistics.
    """

    def __init__(self, metric: CorpusMetric) -> None:
        from evalkit.metrics.translation import SacreMetric

        self.metric = metric
        self.sacre = metric._metric if isinstance(metric, SacreMetric) and metric._metric is not None else None

    def statistics(self, stats: np.ndarray) -> list[list[int | float]]:
        """Rows as sacrebleu's ``_extract_corpus_statistics`` returns them (integral counts as ``int``)."""
        return [[int(x) if float(x).is_integer() else x for x in row] for row in np.asarray(stats, dtype=np.float64).tolist()]

    def _extract_corpus_statistics(self, hypotheses, references):
        return hypotheses

    def _aggregate_and_compute(self, stats):
        if self.sacre is not None:
            return self.sacre._aggregate_and_compute(stats)
        return _Score(float(self.metric.score_from_totals(np.asarray(stats, dtype=np.float64).sum(axis=0))))

    def _compute_score_from_stats(self, totals):
        if self.sacre is not None:
            return self.sacre._compute_score_from_stats(totals)
        return _Score(float(self.metric.score_from_totals(np.asarray(totals, dtype=np.float64))))


def sacrebleu_paired(
    metric: CorpusMetric, stats_a: np.ndarray, stats_b: np.ndarray, kind: str = "bs", n_samples: int | None = None, seed: int | None = None
) -> PairedTest:
    """sacreBLEU's paired test of A (its baseline) against B, run by sacrebleu.significance on evalkit's statistics.

    ``kind="bs"``: `sacrebleu --paired-bs` (Koehn 2004 paired bootstrap as sacrebleu
    implements it); ``kind="ar"``: `sacrebleu --paired-ar` (approximate
    randomization). ``n_samples`` defaults to sacrebleu's (1000 resamples, 10000
    trials) and ``seed`` to $SACREBLEU_SEED or 12345, so the p-value equals the
    one sacrebleu prints for B with A as the baseline (the test is symmetric in
    A and B). ``delta`` is score(A) - score(B); there is no interval.
    """
    from sacrebleu.significance import Result, _paired_ar_test, _paired_bs_test

    _check_paired(stats_a, stats_b)
    if kind not in ("bs", "ar"):
        raise EvalkitError(f"sacrebleu paired test: kind must be 'bs' or 'ar', got {kind!r}")
    n_samples = n_samples or (SACREBLEU_AR_TRIALS if kind == "ar" else 1000)
    seed = sacrebleu_seed() if seed is None else seed
    view = SacrebleuStatsView(metric)
    a, b = view.statistics(stats_a), view.statistics(stats_b)
    baseline = view._aggregate_and_compute(a)
    test = _paired_ar_test if kind == "ar" else _paired_bs_test
    _, results = test({"m": (a, Result(baseline.score))}, "b", b, None, {"m": view}, n_samples, -1, seed)
    result = results["m"]
    method = "sacrebleu-paired-ar" if kind == "ar" else "sacrebleu-paired-bs"
    return PairedTest(method, float(baseline.score - result.score), float(result.p_value), None, n_samples)


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
