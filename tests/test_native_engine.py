"""The native engine on the real SmolLM2-135M (from its GGUF file) against transformers and lm-evaluation-harness.

References are computed inside each test by the reference libraries on the very
same weights: transformers' forward and ``generate``, the HF adapter driven by
the shared decoding loop, and lm-eval 0.4.13's ``HFLM`` for loglikelihoods.
Prompts are real gsm8k questions, wmt21 sources, hellaswag items and wikitext.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from evalkit.decoding.config import DecodingConfig
from evalkit.models.gguf_cache import convert_gguf
from evalkit.models.hf import HFModel
from evalkit.models.native import NativeModel, load_native
from evalkit.requests import Generate, Loglikelihood, RollingLoglikelihood

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def models(smollm2_gguf):
    """(transformers model, tokenizer, native engine) on identical SmolLM2 weights; native comes in via the GGUF path."""
    native = load_native(str(smollm2_gguf), batch_size=3)
    folder = convert_gguf(smollm2_gguf)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, native.tokenizer, native


def _gsm8k(data_dir: Path, n: int) -> list[str]:
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        return [f"Question: {json.loads(next(f))['question']}\nAnswer:" for _ in range(n)]


def _wmt(data_dir: Path, n: int) -> list[str]:
    lines = (data_dir / "wmt21_news_text" / "newstest2021.de-en.src.de.txt").read_text().splitlines()[:n]
    return [f"Translate German to English.\nGerman: {line}\nEnglish:" for line in lines]


def test_logits_match_transformers_on_real_prompts_batched(models, data_dir):
    hf, tok, native = models
    seqs = [tok.encode(p) for p in _gsm8k(data_dir, 3) + _wmt(data_dir, 2)]
    width = max(map(len, seqs))
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    positions = torch.full((len(seqs), width), -1)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = torch.tensor(s)
        positions[i, width - len(s):] = torch.arange(len(s))
    cache = native.new_cache(len(seqs), width + 1)
    prefill = native.forward(tokens, positions, cache)
    step = native.forward(torch.full((len(seqs), 1), 13), cache.lengths[:, None].clone(), cache)[:, 0]
    with torch.no_grad():
        for i, s in enumerate(seqs):
            ref = hf(torch.tensor([s + [13]])).logits[0]
            torch.testing.assert_close(prefill[i, -len(s):], ref[:-1], atol=1e-4, rtol=0)
            torch.testing.assert_close(step[i], ref[-1], atol=1e-4, rtol=0)


def test_greedy_continuous_batching_equals_transformers_generate(models, data_dir):
    hf, tok, native = models
    prompts = _gsm8k(data_dir, 4) + _wmt(data_dir, 2)  # 6 requests through 3 cache rows: finished rows are refilled
    requests = [Generate(prompt=p, max_new_tokens=12) for p in prompts]
    responses = native.generate(requests, DecodingConfig())
    for request, response in zip(requests, responses):
        ids = torch.tensor([tok.encode(request.prompt)])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              eos_token_id=list(native.eos_token_ids), pad_token_id=tok.pad_token_id)
        assert response.token_ids == ref[0, ids.shape[1]:].tolist()[: len(response.token_ids)]
        assert response.finish_reason in ("eos", "length")
        assert len(response.token_ids) == 12 or response.token_ids[-1] in native.eos_token_ids


def test_stop_strings_and_min_new_tokens_equal_the_hf_adapter(models, data_dir):
    """The one scheduler over both backends: native (3 rows, refilled) and transformers (2 rows) agree."""
    hf, tok, native = models
    requests = [Generate(prompt=p, stop=("\n", "."), max_new_tokens=16) for p in _gsm8k(data_dir, 3) + _wmt(data_dir, 2)]
    config = DecodingConfig(min_new_tokens=2)
    ours = native.generate(requests, config)
    ref = HFModel(hf, tok, batch_size=2).generate(requests, config)
    for a, b in zip(ours, ref):
        assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    assert any(r.finish_reason == "stop" for r in ours)


def test_beam_search_equals_hf_adapter(models, data_dir):
    hf, tok, native = models
    requests = [Generate(prompt=p, max_new_tokens=8) for p in _gsm8k(data_dir, 2) + _wmt(data_dir, 1)]
    config = DecodingConfig(name="beam2", num_beams=2, num_return_sequences=2)
    ours = native.generate(requests, config)
    ref = HFModel(hf, tok, batch_size=3).generate(requests, config)
    for a, b in zip(ours, ref):
        assert a.token_ids == b.token_ids
        assert [x.token_ids for x in a.alternatives] == [x.token_ids for x in b.alternatives]


def _hflm(hf, tok, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=hf, tokenizer=tok, batch_size=8, **kw)


def test_loglikelihood_equals_lm_eval_hflm_on_hellaswag(models, data_dir):
    from lm_eval.api.instance import Instance

    hf, tok, native = models
    with open(data_dir / "hellaswag" / "hellaswag_val.rows_0000-1999.jsonl") as f:
        items = [json.loads(next(f)) for _ in range(6)]
    pairs = [(item["query"], " " + ending) for item in items for ending in item["endings"]]
    pairs.append(("", "An empty context is conditioned on the prefix token."))
    ours = native.loglikelihood([Loglikelihood(c, x) for c, x in pairs])
    ref = _hflm(hf, tok).loglikelihood(
        [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)], disable_tqdm=True
    )
    for response, (logprob, greedy) in zip(ours, ref):
        assert response.logprob == pytest.approx(logprob, abs=2e-4)
        assert response.is_greedy == greedy
    assert sum(r.logprob for r in ours[:4]) != pytest.approx(ours[0].logprob * 4)  # endings really differ


def test_rolling_loglikelihood_equals_lm_eval_windows(models, data_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    hf, tok, native = models
    text = (data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text()
    docs = [text[:700], text[2000:2500]]
    short = NativeModel(native.model, tok, max_length=64, batch_size=4, eos_token_ids=native.eos_token_ids)
    ours = short.loglikelihood_rolling([RollingLoglikelihood(d) for d in docs])
    ref = _hflm(hf, tok, max_length=64).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)], disable_tqdm=True
    )
    for response, logprob, doc in zip(ours, ref, docs):
        assert response.logprob == pytest.approx(logprob, rel=1e-5)
        assert len(response.token_logprobs) == len(tok.encode(doc))

    # strided windows: each scores 16 new tokens after up to 48 earlier ones, computed directly with transformers
    strided = NativeModel(native.model, tok, max_length=64, stride=16, eos_token_ids=native.eos_token_ids)
    got = strided.loglikelihood_rolling([RollingLoglikelihood(docs[0])])[0].logprob
    tokens = tok.encode(docs[0])
    expected = 0.0
    with torch.no_grad():
        for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(tokens, tok.bos_token_id, 64, 49)):
            inp = torch.tensor([(ctx + cont)[:-1]])
            logprobs = torch.log_softmax(hf(inp).logits[0, -len(cont):], dim=-1)
            expected += logprobs.gather(1, torch.tensor(cont)[:, None]).sum().item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > ours[0].logprob  # more context per token than disjoint windows
