"""Diversity metrics for generated text, efficiency from timings, and the Pareto-marked comparison."""

from __future__ import annotations

import pytest
import sacrebleu

from evalkit.decoding import compare_strategies
from evalkit.errors import EvalkitError
from evalkit.metrics.diversity import (
    distinct_n,
    diversity_metrics,
    group_self_bleu,
    mean_length,
    repetition_rate,
    self_bleu,
)
from evalkit.requests import Response, Timing
from evalkit.results import Efficiency

pytestmark = pytest.mark.unit

OUTPUTS = [
    "The cat sat on the mat, and the cat sat on the mat.",
    "A dog ran in the park.",
    "The cat sat on a hat!",
    "Rain fell over the quiet town all night.",
]


# Expected values below are counted by hand. sacreBLEU's 13a tokenizer splits punctuation off words:
# "the cat, the cat." -> the cat , the cat .   (6 tokens)      "a cat!" -> a cat !   (3 tokens)
PUNCTUATED = ["the cat, the cat.", "a cat!"]


def test_distinct_n_on_hand_counted_cases():
    # distinct-1 of "a b a b" + "b c": tokens a b a b b c = 6, unique {a, b, c} = 3 -> 3/6
    # distinct-2: (a b) (b a) (a b) + (b c) = 4, unique 3 -> 3/4; distinct-3: (a b a) (b a b) = 2, unique 2 -> 1
    letters = ["a b a b", "b c"]
    assert [distinct_n(letters, n).score for n in (1, 2, 3)] == pytest.approx([3 / 6, 3 / 4, 1.0])
    assert distinct_n(letters, 1).extra == {"unique": 3, "total": 6}
    # 13a tokens: 9 in all, unique {the, cat, ",", ".", a, "!"} = 6 -> 6/9 (whitespace words would give 6/6)
    # bigrams: (the cat) (cat ,) (, the) (the cat) (cat .) + (a cat) (cat !) = 7, (the cat) twice -> 6/7
    assert distinct_n(PUNCTUATED, 1).score == pytest.approx(6 / 9)
    assert distinct_n(PUNCTUATED, 2).score == pytest.approx(6 / 7)
    assert distinct_n(["one", "two"], 2).score == 0.0  # no bigram at all
    result = distinct_n(OUTPUTS, 2)
    assert result.name == "distinct-2" and "tok:13a" in result.signature and "n:2" in result.signature


def test_repetition_rate_is_the_share_of_repeated_ngrams_within_each_output():
    # "a b c d a b c d": 4-grams abcd bcda cdab dabc abcd = 5, unique 4 -> 1 - 4/5 = 0.2
    # "p q r s t": pqrs qrst, both unique -> 0; "x y z": shorter than 4 tokens -> 0
    result = repetition_rate(["a b c d a b c d", "p q r s t", "x y z"], n=4)
    assert result.per_sample == pytest.approx([0.2, 0.0, 0.0])
    assert result.score == pytest.approx(0.2 / 3) and result.name == "rep-4"
    # "a a a a" with n=2: (a a) three times, one unique -> 1 - 1/3
    assert repetition_rate(["a a a a"], n=2).per_sample == pytest.approx([2 / 3])


def test_mean_length_counts_13a_tokens():
    length = mean_length(PUNCTUATED)
    assert length.per_sample == [6.0, 3.0] and length.score == 4.5


def test_self_bleu_equals_sacrebleu_against_the_other_outputs():
    result = self_bleu(OUTPUTS)
    expected = [
        sacrebleu.sentence_bleu(text, [o for j, o in enumerate(OUTPUTS) if j != i], use_effective_order=True).score
        for i, text in enumerate(OUTPUTS)
    ]
    assert result.per_sample == pytest.approx(expected)
    assert result.score == pytest.approx(sum(expected) / len(expected))
    assert "nrefs" in result.signature and sacrebleu.__version__ in result.signature
    identical = self_bleu(["same words here today"] * 3)
    assert identical.score == pytest.approx(100.0)


def test_group_self_bleu_within_each_group():
    groups = [OUTPUTS[:2], OUTPUTS[2:]]
    result = group_self_bleu(groups)
    first = (sacrebleu.sentence_bleu(OUTPUTS[0], [OUTPUTS[1]], use_effective_order=True).score
             + sacrebleu.sentence_bleu(OUTPUTS[1], [OUTPUTS[0]], use_effective_order=True).score) / 2
    assert result.per_sample[0] == pytest.approx(first)
    names = [r.name for r in diversity_metrics(OUTPUTS, groups)]
    assert names == ["distinct-1", "distinct-2", "distinct-3", "self-bleu", "rep-4", "length", "group-self-bleu"]


def test_diversity_errors_are_one_line():
    with pytest.raises(EvalkitError, match="no outputs"):
        distinct_n([], 2)
    with pytest.raises(EvalkitError, match="at least two outputs"):
        self_bleu(["only one"])
    with pytest.raises(EvalkitError, match="num_return_sequences >= 2"):
        group_self_bleu([["a"], ["b"]])


def test_efficiency_from_timings():
    responses = [
        Response(timing=Timing(prefill_s=0.5, decode_s=1.5, prompt_tokens=10, generated_tokens=20)),
        Response(timing=Timing(prefill_s=0.5, decode_s=0.5, prompt_tokens=6, generated_tokens=10)),
    ]
    eff = Efficiency.from_responses(responses, requests=2)
    assert eff.tokens_per_s == pytest.approx(30 / 3.0)
    assert eff.decode_tokens_per_s == pytest.approx(30 / 2.0)
    assert (eff.prefill_s, eff.decode_s, eff.prompt_tokens, eff.generated_tokens) == (1.0, 2.0, 16, 30)


def test_compare_strategies_marks_the_pareto_front():
    rows = [
        {"strategy": "greedy", "quality": 30.0, "tokens_per_s": 100.0},
        {"strategy": "beam4", "quality": 32.0, "tokens_per_s": 40.0},
        {"strategy": "top-p0.9", "quality": 25.0, "tokens_per_s": 90.0},  # dominated by greedy
        {"strategy": "beam2", "quality": 32.0, "tokens_per_s": 35.0},  # dominated by beam4
        {"strategy": "tie", "quality": 30.0, "tokens_per_s": 100.0},  # equal to greedy: both stay
        {"strategy": "broken", "quality": None, "tokens_per_s": 500.0},
    ]
    marked = compare_strategies(rows)
    assert [r["pareto"] for r in marked] == [True, True, False, False, True, False]
    assert rows[0].get("pareto") is None  # inputs untouched
    by_bleu = compare_strategies([{"strategy": "a", "bleu": 1.0, "tps": 2.0}, {"strategy": "b", "bleu": 2.0, "tps": 2.0}],
                                 quality_key="bleu", speed_key="tps")
    assert [r["pareto"] for r in by_bleu] == [False, True]
    with pytest.raises(EvalkitError, match="has no 'quality'"):
        compare_strategies([{"strategy": "x", "tokens_per_s": 1.0}])
