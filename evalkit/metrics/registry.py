"""Metric names -> metric objects, and ``compute_metrics``: the one call the task layer makes."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.metrics.bertscore import BERTScore
from evalkit.metrics.bootstrap import bootstrap_ci
from evalkit.metrics.classification import F1, Accuracy, ExactMatch
from evalkit.metrics.comet import COMET
from evalkit.metrics.corpus import CorpusMetric
from evalkit.metrics.error_rate import ErrorRate
from evalkit.metrics.perplexity import WINDOWS, Perplexity
from evalkit.metrics.rouge import ROUGE_TYPES, Rouge, rouge_item_scores
from evalkit.metrics.translation import BLEU, CHRF, TER, CHRFpp
from evalkit.progress import step

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
    **dict.fromkeys(ROUGE_TYPES, Rouge.description),
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
    check_options(name, options)
    try:
        return _FACTORIES[name](**options)
    except (TypeError, ValueError, KeyError) as error:
        raise EvalkitError(f'options["{name}"]: not accepted ({type(error).__name__}: {error}); see `evalkit list metrics`') from None


# Option values with a fixed set of choices (the rest are checked against their parameter's type).
def _bleu_tokenizers() -> list[str]:
    from sacrebleu.metrics.bleu import _TOKENIZERS

    return list(_TOKENIZERS)


def _bleu_smoothing() -> list[str]:
    from sacrebleu.metrics.bleu import BLEU as SacreBLEU

    return list(SacreBLEU.SMOOTH_DEFAULTS)


_CHOICES: dict[str, dict[str, Callable[[], Sequence[str]]]] = {
    "bleu": {"tokenize": _bleu_tokenizers, "smooth_method": _bleu_smoothing},
    "f1": {"average": lambda: ["binary", "macro", "micro"]},
    **{unit: {"window": lambda: list(WINDOWS)} for unit in Perplexity.UNITS},
}
_POSITIVE = {"batch_size", "num_layers", "max_ngram_order", "char_order", "stride", "max_length"}
_SACREBLEU_CLASSES = {"bleu": "BLEU", "chrf": "CHRF", "chrf++": "CHRF", "ter": "TER"}


def metric_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The options metric ``name`` accepts, as its constructor's parameters (sacrebleu's for BLEU, chrF and TER)."""
    factory = _FACTORIES[name]
    if isinstance(factory, partial):
        target, bound = factory.func, len(factory.args)
    elif isinstance(factory, type):
        target, bound = factory, 0
    else:  # acc, acc_norm: the name is their only constructor argument
        return {}
    params = list(inspect.signature(target).parameters.values())[bound:]
    out = {p.name: p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if name in _SACREBLEU_CLASSES and any(p.kind is p.VAR_KEYWORD for p in params):
        import sacrebleu.metrics

        sacre = inspect.signature(getattr(sacrebleu.metrics, _SACREBLEU_CLASSES[name])).parameters
        out.update({k: p for k, p in sacre.items() if k != "references"})
    return out


def check_options(name: str, options: dict[str, Any]) -> None:
    """Unknown option names and invalid values fail with one line naming ``options["metric"]["key"]`` and what is allowed.

    The CLI shows the same message with ``--option metric.key`` in place of the dict keys.
    """
    params = metric_parameters(name)
    for key, value in options.items():
        where = f'options["{name}"]["{key}"]'
        if key not in params:
            valid = ", ".join(params) if params else "none (it takes no options)"
            raise EvalkitError(f"{where}: {name} has no option {key!r}; its options: {valid}")
        allowed = _allowed(name, key, params[key], value)
        if allowed is not None:
            raise EvalkitError(f"{where}={value!r} is not valid; allowed values: {allowed}")


def _allowed(name: str, key: str, param: inspect.Parameter, value: Any) -> str | None:
    """None when ``value`` fits the parameter, else a description of the allowed values."""
    choices = _CHOICES.get(name, {}).get(key)
    if choices is not None:
        valid = list(choices())
        return None if value in valid else ", ".join(valid)
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        if param.default is None or param.default is inspect.Parameter.empty:
            return None
        annotation = type(param.default).__name__
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    if value is None:
        return None if "None" in text or "Optional" in text else _describe(text, key)
    if "Any" in text:
        return None
    if "bool" in text:
        ok = isinstance(value, bool)
    elif "int" in text:
        ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 1 if key in _POSITIVE else value >= 0)
    elif "float" in text:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif "Sequence" in text or "list" in text:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    elif "str" in text:
        ok = isinstance(value, (str, os.PathLike))  # a model folder may come as a Path
    else:
        return None
    return None if ok else _describe(text, key)


def _describe(text: str, key: str) -> str:
    if "bool" in text:
        return "true, false"
    if "int" in text:
        return "a positive integer" if key in _POSITIVE else "an integer >= 0"
    if "float" in text:
        return "a number"
    if "Sequence" in text or "list" in text:
        return "a list of strings"
    return "a string"


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
        raise EvalkitError(f'options["{unknown[0]}"]: unknown metric {unknown[0]!r}; valid metrics: {", ".join(_FACTORIES)}')
    chosen = expand_names(names)
    unused = [key for key in options if not set(ALIASES.get(key, (key,))) & set(chosen)]
    if unused:
        raise EvalkitError(
            f'options["{unused[0]}"] is given, but {unused[0]} is not among the metrics ({", ".join(chosen)}); '
            f"add it to metrics= or drop the option"
        )
    built = {}
    for name in chosen:
        merged = {k: v for alias, members in ALIASES.items() if name in members for k, v in options.get(alias, {}).items()}
        built[name] = get_metric(name, **{**merged, **options.get(name, {})})
    return built


def score_items(
    names: str | Sequence[str] | dict[str, CorpusMetric],
    predictions: Sequence[Any],
    references: Sequence[Any],
    sources: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    label: str | None = None,
) -> dict[str, Scored]:
    """Per-item statistics of each metric (names, or objects from ``build_metrics``); ROUGE variants share one pass.

    With a ``label`` (what is scored: a system's name), each metric is a
    progress step: ``scoring LABEL: ter (2000 segments) ...`` and its seconds.
    """
    metrics = names if isinstance(names, dict) else build_metrics(names, options)

    def announced(what: str):
        return step(f"scoring {label}: {what} ({len(predictions)} segments)") if label else nullcontext()

    for name, metric in metrics.items():
        if metric.needs_sources and sources is None:
            raise EvalkitError(f"metric {name!r} needs the source sentences; pass sources")
    scored: dict[str, Scored] = {}
    rouge_groups: dict[tuple, list[str]] = {}
    for name, metric in metrics.items():
        if isinstance(metric, Rouge):
            rouge_groups.setdefault((metric.use_stemmer, metric.split), []).append(name)
    for (stem, split), group in rouge_groups.items():
        with announced(", ".join(group)):
            per_type = rouge_item_scores(group, predictions, references, stem, split)
        for name in group:
            scores = per_type[name]
            scored[name] = Scored(metrics[name], np.stack([scores, np.ones_like(scores)], axis=1))
    for name, metric in metrics.items():
        if name not in scored:
            with announced(name):
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
