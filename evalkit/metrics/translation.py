"""BLEU, chrF, chrF++ and TER through sacrebleu, with the tokenizer chosen by target language.

sacrebleu computes each segment's sufficient statistics and scores their sum;
evalkit keeps those statistics (so bootstrap resamples recompute real corpus
BLEU, as sacrebleu's own paired bootstrap does) and reports sacrebleu's
signature verbatim plus the target language that picked the tokenizer.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.corpus import CorpusMetric, check_lengths, reference_lists

# sacrebleu tokenizers for languages that do not separate words by spaces, and the
# module each needs (None: bundled with sacrebleu).
CJK_TOKENIZERS = {"zh": ("zh", None), "ja": ("ja-mecab", "MeCab"), "ko": ("ko-mecab", "mecab_ko")}


def detect_cjk(texts: Sequence[str], sample: int = 200) -> str | None:
    """Guess zh/ja/ko from the script of the references (kana -> ja, hangul -> ko, han -> zh)."""
    kana = hangul = han = letters = 0
    for text in texts[:sample]:
        for ch in text:
            code = ord(ch)
            if 0x3040 <= code <= 0x30FF:
                kana += 1
            elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
                hangul += 1
            elif 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
                han += 1
            if ch.isalpha():
                letters += 1
    if letters == 0 or (kana + hangul + han) / letters < 0.3:
        return None
    if kana:
        return "ja"
    return "ko" if hangul > han else "zh"


class SacreMetric(CorpusMetric):
    """Shared plumbing: build the sacrebleu object, extract statistics, keep its signature."""

    def __init__(self, lang: str | None = None, **sacrebleu_options: Any) -> None:
        self.lang = lang
        self.options = sacrebleu_options
        self._metric = None
        self._references: list[list[str]] | None = None
        self._sig: str | None = None
        self._build(None, lang)  # unknown sacrebleu options fail now, not after scoring started

    def _build(self, tokenize: str | None, lang: str | None, references: list[list[str]] | None = None):
        """The sacrebleu object; given reference streams, sacrebleu preprocesses and caches them once."""
        raise NotImplementedError

    def _prepare(self, references: list[list[str]]) -> None:
        """Build the sacrebleu object for these references, unless the last one (and its reference cache) still fits."""
        if self._metric is not None and references == self._references:
            return
        lang = self.lang or detect_cjk([refs[0] for refs in references])
        self._lang_used = lang if lang is not None else "none"
        self._lang_source = "given" if self.lang else "auto"
        tokenize = None
        if lang in CJK_TOKENIZERS and "tokenize" not in self.options:
            tokenize, module = CJK_TOKENIZERS[lang]
            if module is not None and importlib.util.find_spec(module) is None:
                raise EvalkitError(
                    f"{self.name}: target language {lang} needs sacrebleu's {tokenize} tokenizer; pip install 'sacrebleu[{lang}]'"
                )
        self._metric = self._build(tokenize, lang, [list(stream) for stream in zip(*references)])
        self._references = references

    def item_stats(self, predictions, references, sources=None) -> np.ndarray:
        """sacrebleu's per-segment statistics; scoring several systems against the same references reuses their cache."""
        check_lengths(predictions, references, self.name)
        refs = reference_lists(references, self.name)
        n_refs = {len(r) for r in refs}
        if len(n_refs) != 1:
            raise EvalkitError(f"{self.name}: every segment needs the same number of references, got {sorted(n_refs)}")
        self._prepare(refs)
        stats = np.asarray(self._metric._extract_corpus_statistics(list(predictions), None), dtype=np.float64)
        self._sig = str(self._metric.get_signature())
        return stats

    def _score_object(self, totals: np.ndarray):
        return self._metric._compute_score_from_stats([self._cast(x) for x in totals])

    @staticmethod
    def _cast(value: float):
        return int(value) if float(value).is_integer() else float(value)

    def score_from_totals(self, totals: np.ndarray) -> np.ndarray:
        if totals.ndim == 1:
            return np.float64(self._score_object(totals).score)
        return np.array([self._score_object(row).score for row in totals])

    def extra(self, stats: np.ndarray) -> dict[str, Any]:
        return {"formatted": self._score_object(stats.sum(axis=0)).format(), "sacrebleu_signature": self._sig}

    def signature(self) -> str:
        if self._sig is None:
            raise EvalkitError(f"{self.name}: the signature is known only after scoring (sacrebleu needs the reference count)")
        return f"{self.name}|{self._sig}|lang:{self._lang_used}({self._lang_source})"


class BLEU(SacreMetric):
    name = "bleu"
    description = "corpus BLEU (sacrebleu), tokenizer by target language, several references"

    def _build(self, tokenize, lang, references=None):
        from sacrebleu.metrics import BLEU as SacreBLEU

        options = dict(self.options)
        if tokenize is not None:
            options["tokenize"] = tokenize
        self._sentence = SacreBLEU(**{**options, "effective_order": True})
        return SacreBLEU(**options, references=references)

    def per_sample(self, stats: np.ndarray) -> list[float]:
        """Sentence BLEU with effective order (sacrebleu.sentence_bleu's definition)."""
        return [self._sentence._compute_score_from_stats([self._cast(x) for x in row]).score for row in stats]


class CHRF(SacreMetric):
    name = "chrf"
    description = "chrF (sacrebleu, character n-grams)"
    word_order = 0

    def _build(self, tokenize, lang, references=None):
        from sacrebleu.metrics import CHRF as SacreCHRF

        return SacreCHRF(**{"word_order": self.word_order, **self.options}, references=references)


class CHRFpp(CHRF):
    name = "chrf++"
    description = "chrF++ (sacrebleu, character and word bigrams)"
    word_order = 2


class TER(SacreMetric):
    name = "ter"
    description = "translation edit rate (sacrebleu; asian support for zh/ja/ko)"
    higher_is_better = False

    def _build(self, tokenize, lang, references=None):
        from sacrebleu.metrics import TER as SacreTER

        options = dict(self.options)
        if lang in CJK_TOKENIZERS:
            options.setdefault("asian_support", True)
        return SacreTER(**options, references=references)
