"""The search loops on a tiny random Llama: token-identical to transformers' generate, stop strings,
reproducible sampling, finished rows leaving the batch, timings and logprobs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evalkit.decoding import DecodingConfig, generate
from evalkit.errors import EvalkitError
from evalkit.models.hf import HFModel
from evalkit.requests import Generate

EOS = 2

pytestmark = pytest.mark.unit


class CountingHF(HFModel):
    """The transformers adapter over a tiny model, noting how many rows each forward pass carries."""

    def __init__(self, model, tokenizer, eos_token_ids=(EOS,), max_length=512):
        super().__init__(model, tokenizer, max_length=max_length)
        self.eos_token_ids = tuple(eos_token_ids)
        self.rows_per_forward: list[int] = []

    def forward(self, token_ids, positions, cache, *, last_only=False):
        self.rows_per_forward.append(int((positions >= 0).any(dim=1).sum()))
        return super().forward(token_ids, positions, cache, last_only=last_only)


@pytest.fixture(scope="module")
def prompts(data_dir) -> list[str]:
    """Eight WMT21 source lines cut to 10, 17, 24, ... characters."""
    lines = (data_dir / "wmt21_news_text" / "newstest2021.en-de.src.en.txt").read_text(encoding="utf-8").splitlines()
    return [line[: 10 + 7 * i] for i, line in enumerate(lines[:8])]  # varied lengths: real left padding


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=char_tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make EOS likely enough that beams and rows end at different steps
        model.lm_head.weight[EOS] *= 1.5
    return model


def _hf_generate(model, tokenizer, prompts, config: DecodingConfig, max_new_tokens: int, pad: int):
    """transformers' generate on the same left-padded batch; returns each sequence up to its EOS."""
    encoded = [tokenizer.encode(p) for p in prompts]
    width = max(len(e) for e in encoded)
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=config.num_beams,
                  eos_token_id=EOS, pad_token_id=pad)
    if config.num_beams > 1:
        kwargs.update(length_penalty=config.length_penalty, early_stopping=config.early_stopping,
                      num_return_sequences=config.num_return_sequences)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, **kwargs)[:, width:].tolist()
    return [seq[: seq.index(EOS) + 1] if EOS in seq else seq for seq in out]


def assert_same_as_hf(backend, tokenizer, prompts, config, max_new_tokens, pad, batch_size):
    requests = [Generate(p, max_new_tokens=max_new_tokens) for p in prompts]
    ours = generate(backend, tokenizer, requests, config, batch_size=batch_size)
    reference = []
    for start in range(0, len(prompts), batch_size):
        reference += _hf_generate(backend.model, tokenizer, prompts[start:start + batch_size], config,
                                  max_new_tokens, pad)
    n = config.num_return_sequences
    ours_flat = [[r.token_ids for r in [resp, *resp.alternatives]] for resp in ours]
    theirs = [reference[i * n:(i + 1) * n] for i in range(len(prompts))]
    assert ours_flat == theirs
    for resp in ours:
        for r in [resp, *resp.alternatives]:
            assert r.finish_reason == ("eos" if r.token_ids[-1] == EOS else "length")
    return ours


BEAM_CONFIGS = [
    DecodingConfig(num_beams=nb, length_penalty=lp, early_stopping=es, num_return_sequences=2)
    for nb in (2, 4) for lp in (0.6, 1.0) for es in (True, False)
] + [DecodingConfig(num_beams=3, length_penalty=1.5, early_stopping="never")]


@pytest.mark.parametrize("config", [DecodingConfig(), *BEAM_CONFIGS], ids=lambda c: c.label)
def test_token_identical_to_transformers_generate(tiny, config, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    ours = assert_same_as_hf(backend, char_tokenizer, prompts, config, max_new_tokens=20, pad=0, batch_size=8)
    finished = [r for resp in ours for r in [resp, *resp.alternatives]]
    assert any(r.finish_reason == "eos" for r in finished), "the case should exercise EOS inside the batch"
    assert len({len(r.token_ids) for r in finished}) > 1, "sequences should end at different steps"


def test_finished_rows_leave_the_batch(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    responses = generate(backend, char_tokenizer, [Generate(p, max_new_tokens=20) for p in prompts],
                         DecodingConfig(), batch_size=8)
    lengths = sorted(len(r.token_ids) for r in responses)
    assert lengths[0] < lengths[-1]
    rows = backend.rows_per_forward[1:]  # after the prefill: one forward per step
    assert rows == sorted(rows, reverse=True) and rows[-1] < 8
    # Every forward after step s carries exactly the rows that had not finished by step s.
    assert rows == [sum(length > s for length in lengths) for s in range(1, lengths[-1])]


def test_beam_search_drops_finished_requests(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    config = DecodingConfig(num_beams=2, early_stopping=True)
    generate(backend, char_tokenizer, [Generate(p, max_new_tokens=20) for p in prompts], config, batch_size=8)
    rows = backend.rows_per_forward[1:]
    assert rows[0] == 16 and min(rows) < 16 and all(r % 2 == 0 for r in rows)


def test_token_logprobs_are_the_raw_model_logprobs(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    prompt = prompts[2]
    for config in (DecodingConfig(repetition_penalty=1.5), DecodingConfig(temperature=0.7, top_k=20),
                   DecodingConfig(num_beams=2)):
        (response,) = generate(backend, char_tokenizer, [Generate(prompt, max_new_tokens=12)], config)
        ids = char_tokenizer.encode(prompt) + response.token_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny(torch.tensor([ids])).logits[0].float(), dim=-1)
        start = len(ids) - len(response.token_ids)
        expected = [logprobs[start - 1 + i, t].item() for i, t in enumerate(response.token_ids)]
        assert response.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_timing_is_filled_and_adds_up(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    responses = generate(backend, char_tokenizer, [Generate(p, max_new_tokens=10) for p in prompts[:5]],
                         DecodingConfig(temperature=1.0, num_return_sequences=2), batch_size=3)
    for prompt, r in zip(prompts[:5], responses):
        assert r.timing.prefill_s > 0 and r.timing.decode_s > 0
        assert r.timing.prompt_tokens == len(char_tokenizer.encode(prompt))
        assert r.timing.generated_tokens == len(r.token_ids) + len(r.alternatives[0].token_ids)
        assert len(r.token_logprobs) == len(r.token_ids)


def test_max_new_tokens_config_overrides_request(tiny, char_tokenizer):
    backend = CountingHF(tiny, char_tokenizer, [])  # no EOS: every row runs to its budget
    requests = [Generate("Hello", max_new_tokens=9), Generate("Hi there", max_new_tokens=4)]
    default = generate(backend, char_tokenizer, requests, DecodingConfig())
    assert [len(r.token_ids) for r in default] == [9, 4]
    assert all(r.finish_reason == "length" for r in default)
    capped = generate(backend, char_tokenizer, requests, DecodingConfig(max_new_tokens=6))
    assert [len(r.token_ids) for r in capped] == [6, 6]


def test_min_new_tokens_and_ignore_eos(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    requests = [Generate(p, max_new_tokens=20) for p in prompts]
    plain = generate(backend, char_tokenizer, requests, DecodingConfig())
    assert min(len(r.token_ids) for r in plain) < 8
    at_least = generate(backend, char_tokenizer, requests, DecodingConfig(min_new_tokens=8))
    assert all(len(r.token_ids) >= 8 and EOS not in r.token_ids[:7] for r in at_least)
    ignoring = generate(backend, char_tokenizer, requests, DecodingConfig(ignore_eos=True))
    assert all(len(r.token_ids) == 20 and r.finish_reason == "length" for r in ignoring)


def test_stop_strings_cut_text_even_across_tokens(tiny, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [])
    prompt = prompts[3]
    (free,) = generate(backend, char_tokenizer, [Generate(prompt, max_new_tokens=30)], DecodingConfig())
    text = free.text
    stop = text[12:15]  # three characters: three tokens
    first = text.find(stop)
    (cut,) = generate(backend, char_tokenizer, [Generate(prompt, stop=(stop,), max_new_tokens=30)], DecodingConfig())
    assert cut.finish_reason == "stop"
    assert cut.text == text[:first]
    # Generation ends at the token that completes the first match (special tokens decode to nothing).
    assert len([t for t in cut.token_ids if t >= 3]) == first + len(stop) and cut.token_ids[-1] >= 3
    # Stop strings from the config join the request's; the earliest match wins.
    other = text[first + 1: first + 3]
    (both,) = generate(backend, char_tokenizer, [Generate(prompt, stop=(stop,), max_new_tokens=30)],
                       DecodingConfig(stop=(other,)))
    assert both.text == text[: min(first, text.find(other))]
    # Beam search honours them too: a hypothesis ends when its text contains a stop string.
    (beam,) = generate(backend, char_tokenizer, [Generate(prompt, stop=(stop,), max_new_tokens=30)],
                       DecodingConfig(num_beams=3, num_return_sequences=3))
    hypotheses = [beam, *beam.alternatives]
    for r in hypotheses:
        assert stop not in r.text
        assert (stop in char_tokenizer.decode(r.token_ids)) == (r.finish_reason == "stop")
        assert char_tokenizer.decode(r.token_ids).startswith(r.text)


SAMPLING = [
    DecodingConfig(temperature=0.9, top_p=0.95, seed=11),
    DecodingConfig(temperature=1.2, top_k=40, repetition_penalty=1.2, frequency_penalty=0.3, seed=5),
    DecodingConfig(temperature=1.0, min_p=0.05, num_return_sequences=2, seed=2),
]


@pytest.mark.parametrize("config", SAMPLING, ids=lambda c: c.label)
def test_sampling_is_reproducible_across_batch_sizes(tiny, config, char_tokenizer, prompts):
    backend = CountingHF(tiny, char_tokenizer, [EOS])
    requests = [Generate(p, max_new_tokens=16) for p in prompts]

    def run(reqs, batch_size):
        out = generate(backend, char_tokenizer, reqs, config, batch_size=batch_size)
        return [[r.token_ids for r in [resp, *resp.alternatives]] for resp in out]

    by_size = {size: run(requests, size) for size in (1, 3, 8)}
    assert by_size[1] == by_size[3] == by_size[8]
    # ... and whatever the batch composition: reversed order, mixed with other requests.
    mixed = [Generate("Other request " + str(i), max_new_tokens=16) for i in range(3)] + requests[::-1]
    assert run(mixed, 4)[3:] == by_size[8][::-1]
    # A different seed gives a different sample.
    other = generate(backend, char_tokenizer, requests, replace(config, seed=99))
    assert [r.token_ids for r in other] != [s[0] for s in by_size[8]]


def test_bad_requests_give_one_line_errors(tiny, char_tokenizer):
    backend = CountingHF(tiny, char_tokenizer, [EOS], max_length=64)
    with pytest.raises(EvalkitError, match="exceeds the model's context of 64 tokens"):
        generate(backend, char_tokenizer, [Generate("x" * 60, max_new_tokens=10)], DecodingConfig())

    class Empty(type(char_tokenizer)):
        def encode(self, text):
            return []

    with pytest.raises(EvalkitError, match="empty prompt"):
        generate(backend, Empty(), [Generate("")], DecodingConfig())
    with pytest.raises(EvalkitError, match="batch_size must be >= 1"):
        generate(backend, char_tokenizer, [Generate("a")], DecodingConfig(), batch_size=0)
