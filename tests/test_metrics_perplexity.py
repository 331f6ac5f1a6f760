"""Perplexity formulas equal lm-evaluation-harness's own aggregation functions (synthetic loglikelihoods, real text)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

from evalkit.errors import EvalkitError
from evalkit.metrics import compute_metrics, get_metric

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def documents(data_dir):
    text = (data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text(encoding="utf-8")
    pages = [p for p in re.split(r"\n(?= = [^=])", text) if p.strip()][:20]
    rng = np.random.default_rng(0)
    tokens = [max(1, len(p) // 4) for p in pages]
    logprobs = [-float(rng.uniform(2.0, 4.0)) * n for n in tokens]
    return pages, list(zip(logprobs, tokens))


def test_equal_to_lm_eval_aggregations(documents):
    pages, predictions = documents
    ours = compute_metrics(["word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"], predictions, pages, n_resamples=0)
    words = [(ll, len(re.split(r"\s+", p))) for (ll, _), p in zip(predictions, pages)]  # lm-eval wikitext process_results
    nbytes = [(ll, len(p.encode("utf-8"))) for (ll, _), p in zip(predictions, pages)]
    assert ours["word_perplexity"].score == pytest.approx(weighted_perplexity(words), rel=1e-12)
    assert ours["byte_perplexity"].score == pytest.approx(weighted_perplexity(nbytes), rel=1e-12)
    assert ours["bits_per_byte"].score == pytest.approx(bits_per_byte(nbytes), rel=1e-12)
    assert ours["token_perplexity"].score == pytest.approx(math.exp(-sum(ll for ll, _ in predictions) / sum(n for _, n in predictions)))


def test_window_protocol_is_recorded(documents):
    pages, predictions = documents
    assert "window:disjoint" in get_metric("word_perplexity").compute(predictions, pages).signature
    strided = get_metric("word_perplexity", window="strided", stride=512, max_length=2048).compute(predictions, pages)
    assert "window:strided|stride:512|max-len:2048" in strided.signature
    with pytest.raises(EvalkitError, match="stride"):
        get_metric("word_perplexity", window="strided")
    with pytest.raises(EvalkitError, match="pair"):
        get_metric("bits_per_byte").compute(["not a pair"], ["text"])
