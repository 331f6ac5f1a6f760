"""Accuracy, exact match and F1: the metrics of multiple-choice and short-answer tasks."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric, MeanMetric, check_lengths
from evalkit.metrics.signature import make_signature

_GSM8K_ANSWER = re.compile(r"####\s*(-?[$0-9.,]{1,})")
_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?")


class Accuracy(MeanMetric):
    """Share of items whose predicted index (or label) equals the gold one; ``acc`` and ``acc_norm``."""

    description = "accuracy over predicted choice indices"
    binary_items = True

    def __init__(self, name: str = "acc") -> None:
        self.name = name

    def item_scores(self, predictions, references, sources=None):
        check_lengths(predictions, references, self.name)
        return [float(p == r) for p, r in zip(predictions, references)]

    def signature(self) -> str:
        return make_signature(self.name)


def extract_number(text: str) -> str | None:
    """The final answer of a gsm8k-style text: after ``####`` if present, else the last number."""
    match = _GSM8K_ANSWER.search(text)
    candidates = [match.group(1)] if match else _NUMBER.findall(text)
    if not candidates:
        return None
    cleaned = candidates[-1].replace(",", "").replace("$", "").rstrip(".")
    try:
        return str(Decimal(cleaned).normalize())
    except InvalidOperation:
        return None


class ExactMatch(MeanMetric):
    """1 when the normalised prediction equals a normalised reference (any of several)."""

    name = "exact_match"
    description = "exact string match after a recorded normalisation (optional gsm8k number extraction)"
    binary_items = True

    def __init__(
        self,
        strip: bool = True,
        ignore_case: bool = False,
        ignore_punctuation: bool = False,
        regexes_to_ignore: Sequence[str] = (),
        numeric: bool = False,
    ) -> None:
        self.strip = strip
        self.ignore_case = ignore_case
        self.ignore_punctuation = ignore_punctuation
        self.regexes_to_ignore = tuple(regexes_to_ignore)
        self.numeric = numeric
        self._punct = str.maketrans("", "", string.punctuation)

    def normalise(self, text: str) -> str | None:
        if self.numeric:
            return extract_number(text)
        for pattern in self.regexes_to_ignore:
            text = re.sub(pattern, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(self._punct)
        return text.strip() if self.strip else text

    def item_scores(self, predictions, references, sources=None):
        check_lengths(predictions, references, self.name)
        scores = []
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            if not isinstance(prediction, str):
                raise EvalkitError(f"exact_match: prediction {i} must be a string, got {type(prediction).__name__}")
            got = self.normalise(prediction)
            refs = [reference] if isinstance(reference, str) else list(reference)
            scores.append(float(got is not None and any(got == self.normalise(r) for r in refs)))
        return scores

    def signature(self) -> str:
        return make_signature(
            self.name,
            strip=self.strip,
            lc=self.ignore_case,
            punct="removed" if self.ignore_punctuation else "kept",
            ignore="/".join(self.regexes_to_ignore) or None,
            numeric="gsm8k-last-number" if self.numeric else False,
        )


class F1(CorpusMetric):
    """Classification F1 over predicted labels (binary on ``pos_label`` as lm-eval/sklearn, or macro/micro).

    Rows hold one-hot true-positive, false-positive and false-negative counts per
    class, so the bootstrap recomputes the corpus F1 rather than averaging items.
    """

    name = "f1"
    description = "classification F1 (binary on pos_label, macro or micro)"

    def __init__(self, average: str = "binary", pos_label: Any = 1) -> None:
        if average not in ("binary", "macro", "micro"):
            raise EvalkitError(f"f1: average must be binary, macro or micro, got {average!r}")
        self.average = average
        self.pos_label = pos_label
        self.labels: list[Any] = []

    def item_stats(self, predictions, references, sources=None) -> np.ndarray:
        check_lengths(predictions, references, self.name)
        self.labels = sorted(set(references) | set(predictions), key=repr)
        if self.average == "binary":
            self.labels = [self.pos_label]
        c = len(self.labels)
        stats = np.zeros((len(predictions), 3 * c))
        index = {label: k for k, label in enumerate(self.labels)}
        for i, (p, r) in enumerate(zip(predictions, references)):
            if p == r and p in index:
                stats[i, index[p]] = 1
            else:
                if p in index:
                    stats[i, c + index[p]] = 1
                if r in index:
                    stats[i, 2 * c + index[r]] = 1
        return stats

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        c = totals.shape[-1] // 3
        tp, fp, fn = totals[..., :c], totals[..., c : 2 * c], totals[..., 2 * c :]
        if self.average == "micro":
            tp, fp, fn = tp.sum(-1, keepdims=True), fp.sum(-1, keepdims=True), fn.sum(-1, keepdims=True)
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)  # sklearn's zero_division=0
        return f1.mean(axis=-1)

    def per_sample(self, stats: np.ndarray) -> None:
        return None

    def signature(self) -> str:
        return make_signature(self.name, average=self.average, pos=self.pos_label if self.average == "binary" else None)
