"""ROUGE on the SummEval system summaries equals rouge-score's with the same stemming and splitting."""

from __future__ import annotations

import json
import warnings

import pytest
from rouge_score import rouge_scorer

from evalkit.metrics import compute_metrics, get_metric
from evalkit.metrics.rouge import for_lsum, sentence_splitter_name

pytestmark = pytest.mark.unit

TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


@pytest.fixture(scope="module")
def summeval(data_dir):
    path = data_dir / "summeval" / "summeval_expert.docs_000-049.jsonl"
    return [json.loads(line) for line in path.open(encoding="utf-8")][::4]  # 200 of 800 summaries


def test_equal_to_rouge_score_single_reference(summeval):
    preds = [r["summary"] for r in summeval]
    refs = [r["reference"] for r in summeval]
    ours = compute_metrics(TYPES, preds, refs, n_resamples=0)
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=True)
    expected = [scorer.score(for_lsum(r), for_lsum(p)) for p, r in zip(preds, refs)]
    for t in TYPES:
        assert ours[t].per_sample == pytest.approx([e[t].fmeasure for e in expected], abs=1e-12)
        assert ours[t].score == pytest.approx(sum(e[t].fmeasure for e in expected) / len(expected), abs=1e-12)
        assert "stem:yes" in ours[t].signature
    assert f"split:{sentence_splitter_name()}" in ours["rougeLsum"].signature
    # Lsum really sees sentences: it differs from ROUGE-L once summaries are split
    assert ours["rougeLsum"].score != pytest.approx(ours["rougeL"].score, abs=1e-4)


def test_equal_to_rouge_score_multi_reference(summeval):
    items = summeval[:40]
    preds = [r["summary"] for r in items]
    refs = [r["references"] for r in items]
    ours = get_metric("rougeL", use_stemmer=False).compute(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    expected = [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    assert ours.per_sample == pytest.approx(expected, abs=1e-12)
    assert "stem:no" in ours.signature


def test_sentence_splitting_for_lsum():
    assert for_lsum("The cat sat . The dog ran ! Is it ? yes") == "The cat sat .\nThe dog ran !\nIs it ? yes"
    assert for_lsum("line one\nline two") == "line one\nline two"


def test_non_latin_text_warns():
    with pytest.warns(UserWarning, match="outside a-z"):
        get_metric("rouge1").compute(["我喜欢猫"], ["我喜欢狗"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_metric("rouge1").compute(["the cat"], ["the dog"])
