"""The registry, accuracy, exact match and F1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evalkit.errors import EvalkitError
from evalkit.metrics import compute_metrics, expand_names, get_metric, list_metrics

pytestmark = pytest.mark.unit

TASK_METRICS = ["acc", "acc_norm", "exact_match", "bleu", "chrf", "chrf++", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum",
                "word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity", "wer", "cer", "mer", "wil", "bertscore", "comet"]


def test_every_task_metric_is_registered():
    names = dict(list_metrics())
    assert set(TASK_METRICS) <= set(names) and all(names.values())
    assert expand_names("bleu,rouge") == ["bleu", "rouge1", "rouge2", "rougeL", "rougeLsum"]


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(EvalkitError, match=r"unknown metric 'blue'.*bleu"):
        get_metric("blue")
    with pytest.raises(EvalkitError, match=r"bleu has no option 'colour'; its options: .*tokenize"):
        get_metric("bleu", colour="red")


def test_accuracy_and_ci(scipy_percentile_ci):
    preds = [0, 1, 2, 3] * 50
    golds = [0, 1, 0, 0] * 50
    result = compute_metrics(["acc", "acc_norm"], preds, golds, n_resamples=500)["acc"]
    assert result.score == 0.5 and result.signature == "acc"
    correct = np.array(preds) == np.array(golds)
    assert result.ci == pytest.approx(scipy_percentile_ci(lambda items: correct[items].mean(), len(correct), 500), abs=1e-12)


def test_exact_match_normalisation_and_gsm8k_numbers():
    assert get_metric("exact_match").compute([" Paris "], ["Paris"]).score == 1.0
    assert get_metric("exact_match").compute(["paris"], ["Paris"]).score == 0.0
    assert get_metric("exact_match", ignore_case=True, ignore_punctuation=True).compute(["paris!"], ["Paris"]).score == 1.0
    numeric = get_metric("exact_match", numeric=True)
    result = numeric.compute(["So she pays $1,200.00 in total.", "The answer is 7.\n#### 8"], ["step\n#### 1200", "#### 7"])
    assert result.per_sample == [1.0, 0.0]
    assert "numeric:gsm8k-last-number" in result.signature


@pytest.mark.parametrize("average", ["binary", "macro", "micro"])
def test_f1_equals_sklearn(average, scipy_percentile_ci):
    golds = [0, 1, 1, 0, 1, 2, 2, 1, 0, 1] * 3
    preds = [0, 1, 0, 0, 1, 2, 1, 1, 1, 2] * 3
    if average == "binary":
        golds, preds = [min(g, 1) for g in golds], [min(p, 1) for p in preds]
    result = compute_metrics(["f1"], preds, golds, options={"f1": {"average": average}}, n_resamples=200)["f1"]
    assert result.score == pytest.approx(f1_score(golds, preds, average=average))
    golds, preds = np.array(golds), np.array(preds)
    reference = scipy_percentile_ci(lambda items: f1_score(golds[items], preds[items], average=average), len(golds), 200)
    assert result.ci == pytest.approx(reference, abs=1e-12)
