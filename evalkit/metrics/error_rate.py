"""WER, CER, MER and WIL with corpus-level pooling and an explicit text normalisation.

Each item contributes its hits, substitutions, deletions, insertions and the
reference/hypothesis lengths; the corpus rate is computed from the totals
(not the mean of per-utterance rates), exactly as jiwer pools. The alignment
comes from rapidfuzz's Levenshtein opcodes, the same one jiwer uses, so the
split between substitutions and insertions (which MER and WIL depend on) agrees.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric, check_lengths
from evalkit.metrics.signature import make_signature, version

H, S, D, I, N_REF, N_HYP = range(6)  # noqa: E741 (hits, substitutions, deletions, insertions: the literature's letters)


def normalise(text: str, lowercase: bool, remove_punctuation: bool) -> str:
    """The recorded normalisation: optional lower-casing and removal of Unicode punctuation (category P*)."""
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return text


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, int, int, int]:
    """(hits, substitutions, deletions, insertions) of the Levenshtein alignment."""
    from rapidfuzz.distance import Levenshtein

    hits = subs = dels = ins = 0
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(reference, hypothesis):
        if tag == "equal":
            hits += i2 - i1
        elif tag == "replace":
            subs += i2 - i1
        elif tag == "delete":
            dels += i2 - i1
        else:
            ins += j2 - j1
    return hits, subs, dels, ins


class ErrorRate(CorpusMetric):
    """Word (wer, mer, wil) or character (cer) error rates; lower is better; fractions, not percent."""

    higher_is_better = False
    KINDS: ClassVar[dict[str, str]] = {
        "wer": "word error rate, corpus-pooled (S+D+I)/N",
        "cer": "character error rate, corpus-pooled",
        "mer": "match error rate (S+D+I)/(H+S+D+I)",
        "wil": "word information lost 1 - H^2/(N_ref*N_hyp)",
    }

    def __init__(self, kind: str = "wer", lowercase: bool = False, remove_punctuation: bool = False) -> None:
        if kind not in self.KINDS:
            raise EvalkitError(f"unknown error rate {kind!r}; choose one of {', '.join(self.KINDS)}")
        self.name = kind
        self.description = self.KINDS[kind]
        self.lowercase = lowercase
        self.remove_punctuation = remove_punctuation

    def _units(self, text: str) -> list[str]:
        text = normalise(text, self.lowercase, self.remove_punctuation)
        return list(text.strip()) if self.name == "cer" else text.split()

    def item_stats(self, predictions, references, sources=None) -> np.ndarray:
        check_lengths(predictions, references, self.name)
        stats = np.zeros((len(predictions), 6), dtype=np.float64)
        for i, (hyp, ref) in enumerate(zip(predictions, references)):
            if isinstance(ref, (list, tuple)) and len(ref) == 1:
                ref = ref[0]
            if not isinstance(hyp, str) or not isinstance(ref, str):
                raise EvalkitError(f"{self.name}: item {i} needs a string prediction and one string reference")
            r, h = self._units(ref), self._units(hyp)
            stats[i, :4] = edit_counts(r, h)
            stats[i, N_REF], stats[i, N_HYP] = len(r), len(h)
        return stats

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        h, s, d, i, n_ref, n_hyp = (totals[..., k] for k in range(6))
        errors = s + d + i
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.name in ("wer", "cer"):
                # jiwer's convention for an empty reference: the rate is the insertion count
                return np.where(n_ref > 0, errors / np.maximum(n_ref, 1), i)
            if self.name == "mer":
                return np.where(n_ref > 0, errors / np.maximum(h + errors, 1), np.where(n_hyp > 0, 1.0, 0.0))
            wip = np.where(n_hyp > 0, (h / np.maximum(n_ref, 1)) * (h / np.maximum(n_hyp, 1)), 0.0)
            return np.where(n_ref > 0, 1.0 - wip, np.where(n_hyp > 0, 1.0, 0.0))

    def extra(self, stats: np.ndarray) -> dict:
        totals = stats.sum(axis=0)
        return {key: int(totals[k]) for k, key in enumerate(("hits", "substitutions", "deletions", "insertions", "ref_len", "hyp_len"))}

    def signature(self) -> str:
        return make_signature(
            self.name,
            unit="char" if self.name == "cer" else "word",
            lc=self.lowercase,
            punct="removed" if self.remove_punctuation else "kept",
            pool="corpus",
            align=f"rapidfuzz-{version('rapidfuzz')}",
        )
