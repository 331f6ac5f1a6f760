"""Token, word and byte perplexity and bits per byte from the model's own loglikelihoods.

Definitions are lm-evaluation-harness 0.4.13's (wikitext task): a document's
words are ``re.split(r"\\s+", page)`` of the original text, its bytes are
``len(page.encode("utf-8"))``; the corpus value pools log-likelihoods and
counts (``weighted_perplexity`` / ``bits_per_byte`` aggregations), so long
documents weigh more, as they should. Inputs are per-document
``(total_logprob, n_tokens)`` pairs; how the windows were laid over a long
document (lm-eval's disjoint windows or a strided sliding window) changes the
log-likelihood, so the protocol is part of the signature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric, check_lengths
from evalkit.metrics.signature import make_signature

_WHITESPACE = re.compile(r"\s+")
WINDOWS = ("disjoint", "strided")


def word_count(text: str) -> int:
    """lm-eval's word count (note: leading/trailing whitespace adds an empty "word", as there)."""
    return len(_WHITESPACE.split(text))


def byte_count(text: str) -> int:
    return len(text.encode("utf-8"))


class Perplexity(CorpusMetric):
    """One perplexity unit: ``token``, ``word`` or ``byte`` perplexity, or ``bits_per_byte``."""

    higher_is_better = False
    UNITS: ClassVar[dict[str, str]] = {
        "token_perplexity": "exp(-sum logprob / sum tokens)",
        "word_perplexity": "exp(-sum logprob / sum words), lm-eval wikitext definition",
        "byte_perplexity": "exp(-sum logprob / sum UTF-8 bytes)",
        "bits_per_byte": "-sum logprob / sum UTF-8 bytes / ln 2",
    }

    def __init__(self, name: str = "word_perplexity", window: str = "disjoint", stride: int | None = None, max_length: int | None = None) -> None:
        if name not in self.UNITS:
            raise EvalkitError(f"unknown perplexity {name!r}; choose one of {', '.join(self.UNITS)}")
        if window not in WINDOWS:
            raise EvalkitError(f"{name}: window must be one of {', '.join(WINDOWS)}, got {window!r}")
        if window == "strided" and not stride:
            raise EvalkitError(f"{name}: a strided window needs a stride (tokens the window advances by)")
        self.name = name
        self.description = self.UNITS[name]
        self.window = window
        self.stride = stride
        self.max_length = max_length

    def _count(self, text: str, n_tokens: int) -> int:
        if self.name == "token_perplexity":
            return n_tokens
        if self.name == "word_perplexity":
            return word_count(text)
        return byte_count(text)

    def item_stats(self, predictions: Sequence[tuple[float, int]], references: Sequence[str], sources=None) -> np.ndarray:
        check_lengths(predictions, references, self.name)
        stats = np.empty((len(predictions), 2), dtype=np.float64)
        for i, (pair, text) in enumerate(zip(predictions, references)):
            try:
                logprob, n_tokens = pair
            except (TypeError, ValueError):
                raise EvalkitError(f"{self.name}: prediction {i} must be a (total_logprob, n_tokens) pair, got {pair!r:.80}") from None
            if not isinstance(text, str):
                raise EvalkitError(f"{self.name}: reference {i} must be the document text")
            stats[i] = (float(logprob), self._count(text, int(n_tokens)))
        if np.any(stats[:, 1] <= 0):
            raise EvalkitError(f"{self.name}: a document has no {self.name.split('_')[0]}s; drop empty documents")
        return stats

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        mean_logprob = totals[..., 0] / totals[..., 1]
        if self.name == "bits_per_byte":
            return -mean_logprob / math.log(2)
        return np.exp(-mean_logprob)

    def signature(self) -> str:
        return make_signature(
            self.name,
            window=self.window,
            stride=self.stride if self.window == "strided" else None,
            max_len=self.max_length,
            defn="lm-eval-0.4.13",
        )
