"""ROUGE-1/2/L/Lsum through rouge-score, with stemming on and real sentence splitting for Lsum.

rouge-score computes ROUGE-Lsum over newline-separated sentences; text without
newlines makes it silently equal to ROUGE-L. evalkit splits each summary into
sentences first (nltk's punkt when its data is installed, otherwise a regex
splitter; the signature says which), then joins them with newlines.
rouge-score's tokenizer keeps only a-z and 0-9, so text in other scripts
scores zero: that case gets a warning instead of a silent 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from evalkit.metrics.corpus import MeanMetric, check_lengths, reference_lists
from evalkit.metrics.signature import make_signature, version

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'`(\[]*[A-Z0-9])")


@lru_cache(maxsize=1)
def sentence_splitter_name() -> str:
    """``punkt`` when nltk's punkt data is installed (it cannot be downloaded offline), else ``regex``."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab/english/")
        return "punkt"
    except (ImportError, LookupError):
        return "regex"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; existing line breaks are kept as sentence boundaries."""
    if sentence_splitter_name() == "punkt":
        import nltk

        return [s for line in text.splitlines() for s in nltk.sent_tokenize(line)]
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line) if s.strip()]


def for_lsum(text: str) -> str:
    """The text as rouge-score's Lsum expects it: one sentence per line."""
    return "\n".join(split_sentences(text))


def non_latin_share(texts: Sequence[str], sample: int = 200) -> float:
    """Share of letters that rouge-score's a-z0-9 tokenizer would drop."""
    letters = dropped = 0
    for text in texts[:sample]:
        for ch in text:
            if ch.isalpha():
                letters += 1
                dropped += not ("a" <= ch.lower() <= "z")
    return dropped / letters if letters else 0.0


class Rouge(MeanMetric):
    """One ROUGE variant (F-measure); several references take the best match, as rouge-score's score_multi."""

    description = "ROUGE F-measure (rouge-score), stemming on, sentence-split Lsum"

    def __init__(self, rouge_type: str = "rougeL", use_stemmer: bool = True, split: bool = True) -> None:
        self.rouge_type = rouge_type
        self.name = rouge_type
        self.use_stemmer = use_stemmer
        self.split = split

    def item_scores(self, predictions, references, sources=None):
        return rouge_item_scores([self.rouge_type], predictions, references, self.use_stemmer, self.split)[self.rouge_type]

    def signature(self) -> str:
        splitting = sentence_splitter_name() if self.split and self.rouge_type == "rougeLsum" else "none"
        return make_signature(
            self.name, stem=self.use_stemmer, split=splitting, tok="rouge_score-default", score="f", version=version("rouge-score")
        )


@lru_cache(maxsize=2)
def _default_tokenizer(use_stemmer: bool):
    """rouge-score's default tokenizer with its Porter stemmer memoised.

    Stemming is most of ROUGE's cost and the same words recur across a corpus;
    the memo changes no token (it is the same stemmer, asked once per word) and
    is kept for the process, so repeated calls from a training loop reuse it.
    """
    from nltk.stem import porter
    from rouge_score import tokenize, tokenizers

    stem = lru_cache(maxsize=None)(porter.PorterStemmer().stem) if use_stemmer else None

    class MemoStemmer:
        def stem(self, word: str) -> str:
            return stem(word)

    class DefaultTokenizer(tokenizers.Tokenizer):
        def __init__(self) -> None:
            self._stemmer = MemoStemmer() if use_stemmer else None

        def tokenize(self, text: str) -> list[str]:
            return tokenize.tokenize(text, self._stemmer)

    return DefaultTokenizer()


def rouge_item_scores(
    rouge_types: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    use_stemmer: bool = True,
    split: bool = True,
) -> dict[str, np.ndarray]:
    """Per-item F-measures for several ROUGE types in one pass (tokenising once, as the library does)."""
    from rouge_score import rouge_scorer

    check_lengths(predictions, references, "rouge")
    refs = reference_lists(references, "rouge")
    share = non_latin_share(list(predictions) + [r[0] for r in refs])
    if share > 0.2:
        warnings.warn(
            f"rouge: {share:.0%} of the letters are outside a-z, which rouge-score's tokenizer drops "
            "(those words score zero); ROUGE is not meaningful for this text",
            stacklevel=3,
        )
    scorer = rouge_scorer.RougeScorer(list(rouge_types), tokenizer=_default_tokenizer(use_stemmer))
    lsum = split and "rougeLsum" in rouge_types
    out = {t: np.empty(len(predictions)) for t in rouge_types}
    for i, (prediction, targets) in enumerate(zip(predictions, refs)):
        if lsum:
            prediction, targets = for_lsum(prediction), [for_lsum(t) for t in targets]
        scores = scorer.score(targets[0], prediction) if len(targets) == 1 else scorer.score_multi(targets, prediction)
        for t in rouge_types:
            out[t][i] = scores[t].fmeasure
    return out
