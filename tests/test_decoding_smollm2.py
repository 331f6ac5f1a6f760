"""Integration: evalkit's search loops on the real SmolLM2-135M and 50 real prompts are token-identical
to transformers' ``generate`` (greedy, and beam search with the settings the decoding issue names), and
the native engine's outputs are token-identical to the transformers adapter's on the same prompts (its
own KV cache, through the same scheduler), and speculative greedy (prompt lookup) changes no token on either.

Kept cheap for two CPU cores: 16 new tokens, batches of 8; greedy runs on all 50 prompts, and the
four beam settings split the same 50 prompts between them, so beam search too is checked on all 50
(every setting is also checked on the full product of settings against a tiny model in
test_decoding_search.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from evalkit.decoding import DecodingConfig, generate
from evalkit.requests import Generate

pytestmark = pytest.mark.integration

MAX_NEW = 16
BATCH = 8


@pytest.fixture(scope="module")
def prompts(data_dir) -> list[str]:
    with open(data_dir / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(25), f)]
    sources = (data_dir / "wmt21_news_text" / "newstest2021.en-de.src.en.txt").read_text(encoding="utf-8")
    return questions + sources.splitlines()[:25]


def _reference(model, prompts: list[str], config: DecodingConfig) -> list[list[int]]:
    """transformers' generate, batched and left-padded as the loop batches, each sequence cut after EOS."""
    tokenizer, eos = model.tokenizer, list(model.eos_token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out: list[list[int]] = []
    for start in range(0, len(prompts), BATCH):
        encoded = [tokenizer.encode(p) for p in prompts[start:start + BATCH]]
        width = max(len(e) for e in encoded)
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        kwargs = dict(max_new_tokens=MAX_NEW, do_sample=False, num_beams=config.num_beams, eos_token_id=eos,
                      pad_token_id=pad)
        if config.is_beam:
            kwargs.update(length_penalty=config.length_penalty, early_stopping=config.early_stopping,
                          num_return_sequences=config.num_return_sequences)
        with torch.no_grad():
            sequences = model.model.generate(input_ids, attention_mask=mask, **kwargs)[:, width:].tolist()
        for seq in sequences:
            ends = [i for i, t in enumerate(seq) if t in eos]
            out.append(seq[: ends[0] + 1] if ends else seq)
    return out


@pytest.fixture(scope="module")
def native(smollm2_gguf):
    from evalkit.models.native import load_native

    return load_native(str(smollm2_gguf), batch_size=BATCH)


def _native(native, ordered: list[str], config: DecodingConfig) -> list[list[int]]:
    responses = native.generate([Generate(p, max_new_tokens=MAX_NEW) for p in ordered], config)
    return [r.token_ids for resp in responses for r in [resp, *resp.alternatives]]


def _ours(model, prompts: list[str], config: DecodingConfig) -> tuple[list[list[int]], list[str]]:
    """Our sequences (alternatives inline) and the prompts in the order they were batched."""
    # Sorted longest first, as generate() batches them, so both sides see the same batches.
    order = sorted(range(len(prompts)), key=lambda i: -len(model.tokenizer.encode(prompts[i])))
    responses = generate(model, model.tokenizer, [Generate(prompts[i], max_new_tokens=MAX_NEW) for i in order],
                         config, batch_size=BATCH)
    return [r.token_ids for resp in responses for r in [resp, *resp.alternatives]], [prompts[i] for i in order]


BEAMS = [
    DecodingConfig(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=2),
    DecodingConfig(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
    DecodingConfig(num_beams=2, length_penalty=0.6, early_stopping=True, num_return_sequences=2),
    DecodingConfig(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2),
]


def test_greedy_matches_transformers_on_50_real_prompts(smollm2, native, prompts):
    assert len(prompts) == 50
    ours, ordered = _ours(smollm2, prompts, DecodingConfig())
    assert ours == _reference(smollm2, ordered, DecodingConfig())
    assert any(len(seq) < MAX_NEW for seq in ours), "some prompts should end with EOS"
    assert _native(native, ordered, DecodingConfig()) == ours


@pytest.mark.parametrize("index", range(len(BEAMS)), ids=[c.label for c in BEAMS])
def test_beam_search_matches_transformers_on_real_prompts(smollm2, native, prompts, index):
    config = BEAMS[index]
    share = prompts[index :: len(BEAMS)]  # the four settings cover the 50 prompts between them
    ours, ordered = _ours(smollm2, share, config)
    assert ours == _reference(smollm2, ordered, config)
    assert _native(native, ordered, config) == ours


def test_stop_string_spanning_tokens_on_the_real_tokenizer(smollm2, prompts):
    tokenizer = smollm2.tokenizer
    prompt = prompts[30]
    (free,) = generate(smollm2, tokenizer, [Generate(prompt, max_new_tokens=MAX_NEW)], DecodingConfig())
    # A stop string made of the end of one token and the start of the next.
    pieces = [tokenizer.decode(free.token_ids[: i + 1], skip_special_tokens=True) for i in range(len(free.token_ids))]
    boundary = next(len(pieces[i]) for i in range(2, len(pieces) - 1)
                    if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) - len(pieces[i]) >= 2)
    text = free.text
    stop = text[boundary - 2: boundary + 2]
    (cut,) = generate(smollm2, tokenizer, [Generate(prompt, stop=(stop,), max_new_tokens=MAX_NEW)], DecodingConfig())
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.find(stop)]
    assert stop not in cut.text and cut.token_ids == free.token_ids[: len(cut.token_ids)]


def test_prompt_lookup_changes_no_greedy_token_on_either_backend(smollm2, native, prompts):
    """greedy+lookup4 on the 50 real prompts: the same tokens as greedy on both backends, fewer target forwards."""
    greedy, ordered = _ours(smollm2, prompts, DecodingConfig())
    lookup = DecodingConfig(speculative="lookup", num_speculative_tokens=4)
    requests = [Generate(p, max_new_tokens=MAX_NEW) for p in ordered]
    for backend in (smollm2, native):
        responses = backend.generate(requests, lookup)
        assert [r.token_ids for r in responses] == greedy
        accepted = sum(r.timing.accepted for r in responses)
        assert accepted > 0
        assert sum(r.timing.forwards for r in responses) == sum(map(len, greedy)) - accepted
