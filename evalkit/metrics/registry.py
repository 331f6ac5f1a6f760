"""Metric names -> metric objects, and ``compute_metrics``: the one call the task layer makes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.metrics.bertscore import BERTScore
from evalkit.metrics.bootstrap import bootstrap_ci
from evalkit.metrics.classification import F1, Accuracy, ExactMatch
from evalkit.metrics.comet import COMET
from evalkit.metrics.corpus import CorpusMetric
from evalkit.metrics.error_rate import ErrorRate
from evalkit.metrics.perplexity import Perplexity
from evalkit.metrics.rouge import ROUGE_TYPES, Rouge, rouge_item_scores
from evalkit.metrics.translation import BLEU, CHRF, TER, CHRFpp

_FACTORIES: dict[str, Callable[..., CorpusMetric]] = {
    "acc": lambda **o: Accuracy("acc", **o),
    "acc_norm": lambda **o: Accuracy("acc_norm", **o),
    "exact_match": ExactMatch,
    "f1": F1,
    "bleu": BLEU,
    "chrf": CHRF,
    "chrf++": CHRFpp,
    "ter": TER,
    **{t: partial(Rouge, t) for t in ROUGE_TYPES},
    **{u: partial(Perplexity, u) for u in Perplexity.UNITS},
    **{k: partial(ErrorRate, k) for k in ErrorRate.KINDS},
    "bertscore": BERTScore,
    "comet": COMET,
}

_DESCRIPTIONS: dict[str, str] = {
    "acc": Accuracy.description,
    "acc_norm": Accuracy.description + " (length-normalised choice)",
    **{name: factory.description for name, factory in _FACTORIES.items() if isinstance(factory, type)},
    **{t: Rouge.description for t in ROUGE_TYPES},
    **Perplexity.UNITS,
    **ErrorRate.KINDS,
}

ALIASES: dict[str, tuple[str, ...]] = {
    "rouge": ROUGE_TYPES,
    "perplexity": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}


def expand_names(names: str | Sequence[str]) -> list[str]:
    """Split "bleu,chrf" strings and expand aliases ("rouge" -> rouge1, rouge2, rougeL, rougeLsum)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        for expanded in ALIASES.get(name, (name,)):
            if expanded not in out:
                out.append(expanded)
    return out


def get_metric(name: str, **options: Any) -> CorpusMetric:
    """A metric object by name; unknown names and options fail with one line listing what is valid."""
    if name not in _FACTORIES:
        raise EvalkitError(f"unknown metric {name!r}; valid metrics: {', '.join(_FACTORIES)} (aliases: {', '.join(ALIASES)})")
    try:
        return _FACTORIES[name](**options)
    except TypeError as error:
        raise EvalkitError(f"metric {name!r}: bad option ({error}); see `evalkit list metrics`") from None


def list_metrics() -> list[tuple[str, str]]:
    return [(name, _DESCRIPTIONS[name]) for name in _FACTORIES]


@dataclass
class Scored:
    """A metric with the per-item statistics it computed: what CIs and paired tests need."""

    metric: CorpusMetric
    stats: np.ndarray

    def result(self) -> MetricResult:
        return self.metric.result(self.stats)


def build_metrics(names: str | Sequence[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, CorpusMetric]:
    """Metric objects by (expanded) name; build once and pass to ``score_items`` to reuse loaded state across systems."""
    options = options or {}
    unknown = [key for key in options if key not in _FACTORIES and key not in ALIASES]
    if unknown:
        raise EvalkitError(f"options given for unknown metric {unknown[0]!r}; valid metrics: {', '.join(_FACTORIES)}")
    built = {}
    for name in expand_names(names):
        merged = {k: v for alias, members in ALIASES.items() if name in members for k, v in options.get(alias, {}).items()}
        built[name] = get_metric(name, **{**merged, **options.get(name, {})})
    return built


def score_items(
    names: str | Sequence[str] | dict[str, CorpusMetric],
    predictions: Sequence[Any],
    references: Sequence[Any],
    sources: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Scored]:
    """Per-item statistics of each metric (names, or objects from ``build_metrics``); ROUGE variants share one pass."""
    metrics = names if isinstance(names, dict) else build_metrics(names, options)
    for name, metric in metrics.items():
        if metric.needs_sources and sources is None:
            raise EvalkitError(f"metric {name!r} needs the source sentences; pass sources")
    scored: dict[str, Scored] = {}
    rouge_groups: dict[tuple, list[str]] = {}
    for name, metric in metrics.items():
        if isinstance(metric, Rouge):
            rouge_groups.setdefault((metric.use_stemmer, metric.split), []).append(name)
    for (stem, split), group in rouge_groups.items():
        per_type = rouge_item_scores(group, predictions, references, stem, split)
        for name in group:
            scores = per_type[name]
            scored[name] = Scored(metrics[name], np.stack([scores, np.ones_like(scores)], axis=1))
    for name, metric in metrics.items():
        if name not in scored:
            scored[name] = Scored(metric, metric.item_stats(predictions, references, sources))
    return {name: scored[name] for name in metrics}


def compute_metrics(
    names: str | Sequence[str],
    predictions: Sequence[Any],
    references: Sequence[Any],
    sources: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, MetricResult]:
    """Score predictions with each named metric; ``ci`` is a seeded bootstrap interval (``n_resamples=0``: none).

    ``options`` maps a metric name to its constructor options, e.g.
    ``{"bleu": {"lang": "zh"}, "wer": {"lowercase": True}}``.
    """
    results = {}
    for name, scored in score_items(names, predictions, references, sources, options).items():
        result = scored.result()
        if n_resamples > 0:
            result.ci = bootstrap_ci(scored.metric, scored.stats, n_resamples, confidence, seed)
            result.extra.update(ci_confidence=confidence, ci_resamples=n_resamples)
        results[name] = result
    return results
