"""Every logits processor against its reference on random logits, and the sampler against the softmax."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from evalkit.decoding import DecodingConfig
from evalkit.decoding import processors as P
from evalkit.decoding.processors import History, process
from evalkit.decoding.sampling import sample, uniform

pytestmark = pytest.mark.unit

VOCAB = 500


def _case(seed: int, rows: int = 6, length: int = 40, vocab: int = VOCAB):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, vocab, generator=gen) * 3
    input_ids = torch.randint(0, vocab, (rows, length), generator=gen)
    return scores, input_ids


def _seen(input_ids: torch.Tensor, vocab: int = VOCAB) -> torch.Tensor:
    return History.start(input_ids.tolist(), vocab, torch.device("cpu")).seen


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("penalty", [0.8, 1.3, 2.0])
def test_repetition_penalty_equals_hf(seed, penalty):
    scores, ids = _case(seed)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
    torch.testing.assert_close(P.repetition_penalty(scores, _seen(ids), penalty), expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_hf(seed, n):
    # A small alphabet so n-grams really repeat.
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 3, (5, 30), generator=gen)
    scores = torch.randn(5, 12, generator=gen)
    expected = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    actual = P.no_repeat_ngram(scores, ids.tolist(), n)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert torch.isinf(actual).any()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.3, 0.7, 1.5])
def test_temperature_equals_hf(seed, t):
    scores, ids = _case(seed)
    torch.testing.assert_close(P.temperature(scores, t), TemperatureLogitsWarper(t)(ids, scores.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 5, 50, VOCAB + 10])
def test_top_k_equals_hf(seed, k):
    scores, ids = _case(seed)
    torch.testing.assert_close(P.top_k(scores, k), TopKLogitsWarper(k)(ids, scores.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.99])
def test_top_p_equals_hf(seed, p):
    scores, ids = _case(seed)
    torch.testing.assert_close(P.top_p(scores, p), TopPLogitsWarper(p)(ids, scores.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 1.0])
def test_min_p_equals_hf(seed, p):
    scores, ids = _case(seed)
    torch.testing.assert_close(P.min_p(scores, p), MinPLogitsWarper(p)(ids, scores.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mass", [0.2, 0.9, 0.95])
def test_typical_equals_hf(seed, mass):
    scores, ids = _case(seed)
    torch.testing.assert_close(P.typical(scores, mass), TypicalLogitsWarper(mass)(ids, scores.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("frequency", "presence"), [(0.5, 0.0), (0.0, 0.5), (1.2, -0.4), (-0.3, 1.5)])
def test_frequency_presence_follow_the_openai_vllm_formula(seed, frequency, presence):
    """vLLM docs (SamplingParams): presence_penalty "penalizes new tokens based on whether they appear in
    the generated text so far", frequency_penalty "based on their frequency in the generated text so far";
    i.e. logit[j] -= frequency * count[j] + presence * (count[j] > 0), counting generated tokens only."""
    scores, prompt = _case(seed, rows=4, length=30)
    gen = torch.Generator().manual_seed(100 + seed)
    generated = torch.randint(0, 40, (4, 25), generator=gen)  # few distinct ids: real repeats
    history = History.start(prompt.tolist(), VOCAB, torch.device("cpu"))
    for step in range(generated.size(1)):
        history.append(generated[:, step])

    expected = scores.clone()
    for row in range(scores.size(0)):
        counts = Counter(generated[row].tolist())  # the prompt does not count
        for token in range(VOCAB):
            c = counts.get(token, 0)
            expected[row, token] = scores[row, token] - frequency * c - presence * (1.0 if c > 0 else 0.0)
    actual = P.frequency_presence_penalty(scores, history.counts, frequency, presence)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-5)
    # And through the pipeline, prompt tokens untouched by these penalties.
    config = DecodingConfig(frequency_penalty=frequency, presence_penalty=presence)
    torch.testing.assert_close(process(scores, config, history, (2,)), expected, rtol=1e-6, atol=1e-5)


def test_pipeline_applies_processors_in_hf_order():
    scores, ids = _case(7)
    config = DecodingConfig(
        temperature=0.7, top_k=100, top_p=0.9, min_p=0.02, typical_p=0.95, repetition_penalty=1.3,
        no_repeat_ngram_size=2,
    )
    hf = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(2), TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(100), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02), TypicalLogitsWarper(0.95),
    ])
    history = History.start(ids.tolist(), VOCAB, torch.device("cpu"))
    torch.testing.assert_close(process(scores, config, history, (2,)), hf(ids, scores.clone()), rtol=0, atol=0)


def test_min_new_tokens_suppresses_eos_until_reached():
    scores, ids = _case(1, rows=2)
    history = History.start(ids.tolist(), VOCAB, torch.device("cpu"))
    history.generated = torch.tensor([1, 3])
    out = process(scores, DecodingConfig(min_new_tokens=3), history, (2, 5))
    assert torch.isinf(out[0, [2, 5]]).all() and not torch.isinf(out[0]).sum() > 2
    torch.testing.assert_close(out[1], scores[1])


def test_sampler_matches_processed_softmax_chi_square():
    """Many draws from the reproducible sampler follow softmax(processed scores) (chi-square, fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 40, generator=gen) * 2
    config = DecodingConfig(temperature=0.8, top_k=25, top_p=0.95)
    history = History.start([[0]], 40, torch.device("cpu"))
    processed = process(logits, config, history, ())
    probs = torch.softmax(processed, dim=-1)[0].double()
    draws = 40_000
    u = torch.tensor([uniform(1234, "chi-square", 0, step) for step in range(draws)], dtype=torch.float64)
    tokens = sample(processed.expand(draws, -1), u)
    counts = torch.bincount(tokens, minlength=40).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0, "a filtered token was sampled"
    observed, expected = counts[kept].numpy(), (probs[kept] / probs[kept].sum() * draws).numpy()
    assert chisquare(observed, expected).pvalue > 0.001
    # A single surviving token is always chosen, even with u at the very end of [0, 1).
    only = torch.full((1, 40), -float("inf"))
    only[0, 17] = 0.0
    assert sample(only, torch.tensor([0.999999999])).item() == 17
