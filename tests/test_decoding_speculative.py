"""Speculative decoding through the one scheduler, on tiny random Llamas (the target and a different draft).

Greedy drafts must leave the output token-identical to greedy; sampled drafts must leave the distribution
exactly the target's (chi-square against the target's own probabilities, with a control the test rejects);
the counts in each response's timing must say what was drafted, accepted and run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

from evalkit.decoding import DecodingConfig, generate, parse_decoding
from evalkit.decoding.processors import process
from evalkit.decoding.speculative import LookupIndex
from evalkit.errors import EvalkitError
from evalkit.models.hf import HFModel
from evalkit.requests import Generate

EOS = 2

pytestmark = pytest.mark.unit


def _tiny(vocab_size: int, seed: int, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def target(char_tokenizer) -> HFModel:
    return HFModel(_tiny(char_tokenizer.vocab_size, 0), char_tokenizer, max_length=512)


@pytest.fixture(scope="module")
def draft(char_tokenizer) -> HFModel:
    return HFModel(_tiny(char_tokenizer.vocab_size, 1, layers=1), char_tokenizer, max_length=512)


PROMPTS = [
    "the cat sat on the mat and the cat sat on the",
    "abc abc abc abc abc",
    "Numbers: 12 34 12 34 12",
    "A completely different prompt without repeats",
    "to be or not to be, that is",
    "x",
]


def _requests(n: int = 24) -> list[Generate]:
    return [Generate(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), max_new_tokens=24) for i in range(n)]


def test_lookup_proposes_what_followed_the_latest_longest_match():
    index = LookupIndex(max_ngram=3)
    #            0  1  2  3  4  5  6  7  8
    tokens = [5, 6, 7, 9, 5, 6, 8, 1, 5, 6]
    # "5 6" (the longest suffix that occurred before) last occurred at 4-5, followed by 8, 1, 5, 6.
    assert index.propose(tokens, 3) == [8, 1, 5]
    assert index.propose(tokens + [7], 2) == [9, 5]  # "5 6 7" at 0-2
    assert index.propose([1, 2, 3], 4) == []  # nothing repeats
    assert LookupIndex(1).propose([4, 4, 4], 5) == [4]  # the occurrence just before the suffix: one token left
    assert LookupIndex(3, min_ngram=2).propose([5, 6, 7, 9, 8, 6], 2) == []  # only "6" recurs: too short a match


@pytest.mark.parametrize("spec", ["lookup1", "lookup4", "draft3"])
@pytest.mark.parametrize("base", ["greedy", "rep1.3+max20"])
def test_greedy_drafts_leave_greedy_output_unchanged(target, draft, spec, base):
    plain = generate(target, target.tokenizer, _requests(), parse_decoding(base)[0], batch_size=4)
    config = parse_decoding(f"{base}+{spec}")[0]
    if config.speculative == "draft":
        config = replace(config, draft_model="tiny")
    fast = generate(target, target.tokenizer, _requests(), config, batch_size=4, draft=draft)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert [r.text for r in fast] == [r.text for r in plain]
    assert [r.finish_reason for r in fast] == [r.finish_reason for r in plain]
    for a, b in zip(fast, plain):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    drafted = sum(r.timing.drafted for r in fast)
    accepted = sum(r.timing.accepted for r in fast)
    assert drafted > 0 and 0 < accepted <= drafted
    # Each accepted draft saves one target forward: greedy needs one forward per token.
    assert sum(r.timing.forwards for r in plain) == sum(r.timing.generated_tokens for r in plain)
    assert sum(r.timing.forwards for r in fast) == sum(r.timing.generated_tokens for r in fast) - accepted


def test_the_model_as_its_own_draft_accepts_everything(target):
    config = DecodingConfig(speculative="draft", num_speculative_tokens=4, draft_model="itself")
    plain = generate(target, target.tokenizer, _requests(), DecodingConfig(), batch_size=4)
    own = generate(target, target.tokenizer, _requests(), config, batch_size=4, draft=target)
    assert [r.token_ids for r in own] == [r.token_ids for r in plain]
    assert sum(r.timing.accepted for r in own) == sum(r.timing.drafted for r in own) > 0
    for r in own:  # the draft runs as often as the target and costs as much: the cost says so
        assert r.timing.cost == r.timing.forwards + r.timing.draft_forwards


def _first_tokens(responses, n: int) -> Counter:
    return Counter(tuple(r.token_ids[:n]) for resp in responses for r in [resp, *resp.alternatives])


def _exact_first_tokens(model: HFModel, prompt: str, config: DecodingConfig, n: int) -> dict[tuple, float]:
    """P(t1 .. tn) under the target's processed distribution, computed from its logits directly."""
    ids = model.tokenizer.encode(prompt)
    joint = {(): 1.0}
    with torch.no_grad():
        for _ in range(n):
            prefixes = list(joint)
            logits = model.model(torch.tensor([ids + list(p) for p in prefixes])).logits[:, -1].float()
            probs = torch.softmax(process(logits, config, None, ()), dim=-1)
            joint = {p + (t,): joint[p] * float(probs[i, t]) for i, p in enumerate(prefixes)
                     for t in probs[i].nonzero()[:, 0].tolist()}
    return joint


def _chi_square_p(observed: Counter, expected: dict[tuple, float]) -> float:
    """Goodness of fit over the joint cells, cells expected under 5 draws pooled into one (with any cell the
    target cannot produce at all)."""
    n = sum(observed.values())
    big = [cell for cell, p in expected.items() if p * n >= 5]
    obs = [observed[c] for c in big] + [n - sum(observed[c] for c in big)]
    exp = [expected[c] * n for c in big] + [n - sum(expected[c] * n for c in big)]
    return chisquare(obs, exp).pvalue


DRAWS = 20_000
SAMPLED = DecodingConfig(temperature=1.0, top_k=6, num_return_sequences=DRAWS, max_new_tokens=3, ignore_eos=True,
                         seed=7)


@pytest.mark.parametrize("spec", ["draft", "lookup"])
def test_speculative_sampling_draws_from_the_target_distribution(target, draft, spec):
    """20,000 draws of the first three tokens; the second and third go through drafts (the first comes from
    the prefill), so both the accepted and the rejected branch of the rule shape them."""
    prompt = "abab abab abab ab" if spec == "lookup" else "The quick brown fox"
    config = replace(SAMPLED, speculative=spec, num_speculative_tokens=2,
                     draft_model="tiny" if spec == "draft" else None)
    (response,) = generate(target, target.tokenizer, [Generate(prompt)], config, batch_size=1, draft=draft)
    timing = response.timing
    assert timing.drafted > 0 and 0 < timing.accepted < timing.drafted, "the draft must be both right and wrong"
    expected = _exact_first_tokens(target, prompt, SAMPLED, 3)
    assert set(_first_tokens([response], 3)) <= set(expected), "a sequence the target cannot produce was drawn"
    assert _chi_square_p(_first_tokens([response], 3), expected) > 0.01
    if spec == "draft":  # the control: the draft model's own samples are told apart from the target's
        (control,) = generate(draft, draft.tokenizer, [Generate(prompt)], SAMPLED, batch_size=1)
        assert _chi_square_p(_first_tokens([control], 3), expected) < 0.01


def test_speculative_sampling_is_seed_stable_across_batch_sizes(target, draft):
    for spec in ("lookup3", "draft3"):
        config = parse_decoding(f"temp1+top-k20+{spec}+seed3")[0]
        if config.speculative == "draft":
            config = replace(config, draft_model="tiny")
        one = generate(target, target.tokenizer, _requests(16), config, batch_size=1, draft=draft)
        eight = generate(target, target.tokenizer, _requests(16), config, batch_size=8, draft=draft)
        assert [r.token_ids for r in one] == [r.token_ids for r in eight]
        assert sum(r.timing.accepted for r in eight) > 0


def test_bad_speculative_settings_are_one_line_errors(target):
    for spec, needle in (("lookup0", "give it K >= 1"), ("beam4+lookup2", "cannot be combined with beam search")):
        with pytest.raises(EvalkitError, match=needle) as err:
            parse_decoding(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(EvalkitError, match=r"lookup_min_ngram \(4\) exceeds lookup_max_ngram \(3\)"):
        DecodingConfig(speculative="lookup", num_speculative_tokens=2, lookup_min_ngram=4)
    with pytest.raises(EvalkitError, match="--draft-model") as err:
        generate(target, target.tokenizer, _requests(2), parse_decoding("draft4")[0])
    assert "\n" not in str(err.value) and "lookup4" in str(err.value)


def test_a_captured_decode_step_cannot_draft_for_itself(char_tokenizer):
    """With a CUDA-graph-style static cache (compile=True, here on CPU) the engine keeps one cache per shape,
    which the target and a draft that is the same object would share: refused in one line, before any work."""
    from evalkit.models.native import NativeModel

    native = NativeModel.from_hf(_tiny(char_tokenizer.vocab_size, 0), char_tokenizer, eos_token_ids=[EOS], compile=True)
    config = DecodingConfig(speculative="draft", num_speculative_tokens=2, draft_model="itself")
    with pytest.raises(EvalkitError, match="load the draft as its own model") as err:
        generate(native, native.tokenizer, _requests(2), config, draft=native)
    assert "\n" not in str(err.value)
