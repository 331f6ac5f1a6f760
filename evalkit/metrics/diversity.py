"""Diversity and degeneration of generated text: distinct-n, self-BLEU, repetition rate, length.

Reference-free corpus statistics of a strategy's outputs, for comparing
decoding strategies. Words are sacrebleu's 13a tokens, so counts agree with
BLEU's. Definitions:

* distinct-n (Li et al., 2016): unique n-grams / total n-grams over all outputs.
* self-BLEU (Zhu et al., 2018, Texygen): mean sentence BLEU of each output against
  the other outputs as references (sacrebleu, effective order); high = outputs alike.
  ``group_self_bleu`` does the same within each request's ``num_return_sequences``.
* repetition rate (Welleck et al., 2020, seq-rep-n): per output, 1 - unique n-grams /
  n-grams, i.e. the share of n-grams that repeat one earlier in the same output.
* mean length: words per output.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.metrics.signature import make_signature, version

if TYPE_CHECKING:
    from sacrebleu.metrics import BLEU

DISTINCT_N = (1, 2, 3)  # the distinct-n orders a strategy is scored on
REPETITION_N = 4  # rep-4: Welleck et al.'s seq-rep-4
#: Every metric ``diversity_metrics`` can return, in its order: the one list of evalkit's diversity names.
DIVERSITY_NAMES = (*(f"distinct-{n}" for n in DISTINCT_N), "self-bleu", f"rep-{REPETITION_N}", "length", "group-self-bleu")
#: The ones a strategy's one-row summary shows (the strategy table of `evalkit run` and `compare-decoding`).
SUMMARY_NAMES = ("distinct-1", "distinct-2", "self-bleu", f"rep-{REPETITION_N}", "length")
#: How other tools name the same measures (distinct_2, self_bleu, ngram_entropy, ...) in results a report may read.
_OTHER_PREFIXES = ("distinct", "self_bleu", "self-bleu", "diversity", "unique", "ngram_entropy", "entropy")


def is_diversity_metric(name: str) -> bool:
    """Whether a metric name is a diversity or degeneration measure rather than a quality score."""
    lowered = name.lower()
    return lowered in DIVERSITY_NAMES or lowered.startswith(_OTHER_PREFIXES)


@lru_cache(maxsize=1)
def _tokenizer():
    """sacrebleu's 13a tokenizer, imported on first use: the names above are read by modules that score nothing."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _words(text: str) -> list[str]:
    return _tokenizer()(text.strip()).split()


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _signature(name: str, **fields: object) -> str:
    return make_signature(name, tok="13a", **fields, version=version("sacrebleu"))


def _check(outputs: Sequence[str], name: str) -> None:
    if not outputs:
        raise EvalkitError(f"{name}: no outputs to score; generate at least one output")


def distinct_n(outputs: Sequence[str], n: int) -> MetricResult:
    """Unique n-grams over total n-grams across all outputs (0 when there are none)."""
    _check(outputs, f"distinct-{n}")
    grams = [g for text in outputs for g in _ngrams(_words(text), n)]
    score = len(set(grams)) / len(grams) if grams else 0.0
    return MetricResult(f"distinct-{n}", score, _signature(f"distinct-{n}", n=n),
                        extra={"unique": len(set(grams)), "total": len(grams)})


def repetition_rate(outputs: Sequence[str], n: int = 4) -> MetricResult:
    """Mean over outputs of 1 - unique n-grams / n-grams; outputs shorter than n count as 0."""
    _check(outputs, "repetition")
    per_sample = []
    for text in outputs:
        grams = _ngrams(_words(text), n)
        per_sample.append(1 - len(set(grams)) / len(grams) if grams else 0.0)
    return MetricResult(f"rep-{n}", sum(per_sample) / len(per_sample), _signature(f"rep-{n}", n=n),
                        per_sample=per_sample)


def mean_length(outputs: Sequence[str]) -> MetricResult:
    _check(outputs, "length")
    lengths = [float(len(_words(text))) for text in outputs]
    return MetricResult("length", sum(lengths) / len(lengths), _signature("length", unit="words"),
                        per_sample=lengths)


def _sentence_bleu() -> BLEU:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def _self_bleu_scores(texts: Sequence[str], bleu: BLEU) -> list[float]:
    return [bleu.sentence_score(text, [other for j, other in enumerate(texts) if j != i]).score
            for i, text in enumerate(texts)]


def self_bleu(outputs: Sequence[str], max_outputs: int = 300, seed: int = 0) -> MetricResult:
    """Mean BLEU of each output against all others. Quadratic in the outputs, so at most
    ``max_outputs`` of them (a seeded sample, recorded in the signature) are compared."""
    _check(outputs, "self-bleu")
    if len(outputs) < 2:
        raise EvalkitError("self-bleu needs at least two outputs to compare; score more examples")
    texts = list(outputs)
    if len(texts) > max_outputs:
        texts = random.Random(seed).sample(texts, max_outputs)
    bleu = _sentence_bleu()
    scores = _self_bleu_scores(texts, bleu)
    signature = make_signature("self-bleu", n=len(texts), seed=seed, bleu=bleu.get_signature().format())
    return MetricResult("self-bleu", sum(scores) / len(scores), signature, per_sample=scores)


def group_self_bleu(groups: Sequence[Sequence[str]]) -> MetricResult:
    """Self-BLEU within each group (a request's ``num_return_sequences`` outputs), averaged over groups."""
    groups = [list(g) for g in groups if len(g) >= 2]
    if not groups:
        raise EvalkitError("group self-bleu needs groups of at least two outputs; set num_return_sequences >= 2")
    bleu = _sentence_bleu()
    per_group = [sum(s) / len(s) for s in (_self_bleu_scores(g, bleu) for g in groups)]
    signature = make_signature("group-self-bleu", groups=len(groups), bleu=bleu.get_signature().format())
    return MetricResult("group-self-bleu", sum(per_group) / len(per_group), signature, per_sample=per_group)


def diversity_metrics(outputs: Sequence[str], groups: Sequence[Sequence[str]] | None = None) -> list[MetricResult]:
    """Everything above for one strategy's outputs (``DIVERSITY_NAMES``): distinct-1/2/3, self-BLEU, rep-4,
    mean length, and group self-BLEU when ``groups`` (each request's several outputs) are given."""
    results = [distinct_n(outputs, n) for n in DISTINCT_N]
    if len(outputs) >= 2:
        results.append(self_bleu(outputs))
    results += [repetition_rate(outputs, REPETITION_N), mean_length(outputs)]
    if groups is not None and any(len(g) >= 2 for g in groups):
        results.append(group_self_bleu(groups))
    return results


__all__ = [
    "DIVERSITY_NAMES",
    "SUMMARY_NAMES",
    "distinct_n",
    "diversity_metrics",
    "group_self_bleu",
    "is_diversity_metric",
    "mean_length",
    "repetition_rate",
    "self_bleu",
]
