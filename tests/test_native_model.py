"""The native Transformer against transformers on tiny random-weight configs (fast, every architecture variant).

Reference logits come from transformers' own Llama/Qwen2/Mistral classes run
on each sequence alone (no padding), so the check covers the native model's
batching of mixed lengths, its KV cache and its RoPE variants at once.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.native import NativeModel
from evalkit.models.native.cache import KVCache, bytes_per_token
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.engine import _Segment
from evalkit.models.native.weights import build_model
from evalkit.requests import Generate

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, max_position_embeddings=256)
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}

CONFIGS = {
    # Qwen2: q/k/v biases, GQA (4 heads over 2 KV heads), untied embeddings
    "qwen2": lambda: transformers.Qwen2Config(**TINY, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2-yarn": lambda: transformers.Qwen2Config(
        **TINY, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama3-rope": lambda: transformers.LlamaConfig(**TINY, num_attention_heads=4, num_key_value_heads=2, rope_scaling=ROPE_LLAMA3),
    "llama-linear-mqa": lambda: transformers.LlamaConfig(
        **TINY, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "llama-dynamic-bias": lambda: transformers.LlamaConfig(
        **TINY, num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True, head_dim=32,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    ),
    "mistral-sliding": lambda: transformers.MistralConfig(**TINY, num_attention_heads=4, num_key_value_heads=2, sliding_window=8),
}


def _reference(name: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases, so a bias that is dropped or misplaced shows
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias"):
                param.normal_(0, 0.5)
    return model


def _left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    positions = torch.full((len(seqs), width), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = s
        positions[i, width - len(s):] = torch.arange(len(s))
    return tokens, positions


@pytest.fixture
def fp32_cuda(monkeypatch):
    """fp32 means fp32 on CUDA: TF32 matmuls would cost ~3 decimal digits (restored after the test)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _check_logits_match_transformers(name: str, device: str) -> None:
    """Mixed-length rows, prefill then single-token decode, fp32 on ``device``: logits within 1e-4 of transformers'."""
    hf = _reference(name).to(device)
    native = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0], compile=False)
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 90, 41, 17]  # past the Llama 3 / YaRN original context (32 / 64) and the sliding window (8)
    seqs = [torch.randint(0, TINY["vocab_size"], (n + 4,), generator=gen).to(device) for n in lengths]
    tokens, positions = _left_pad([s[:n] for s, n in zip(seqs, lengths)])
    cache = native.new_cache(len(seqs), max(lengths) + 4)
    prefill = native.forward(tokens.to(device), positions.to(device), cache)
    steps = []
    for t in range(4):  # single-token decode steps, every row at its own position
        next_tokens = torch.stack([s[n + t] for s, n in zip(seqs, lengths)])[:, None]
        steps.append(native.forward(next_tokens, cache.lengths[:, None].clone(), cache, last_only=True)[:, 0])
    with torch.no_grad():
        for i, (s, n) in enumerate(zip(seqs, lengths)):
            ref = hf(s[None]).logits[0]
            torch.testing.assert_close(prefill[i, -n:], ref[:n], atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.stack([x[i] for x in steps]), ref[n:], atol=1e-4, rtol=0)


@pytest.mark.unit
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_batched_mixed_lengths(name):
    _check_logits_match_transformers(name, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cuda_fp32_logits_match_transformers_batched_mixed_lengths(name, fp32_cuda):
    _check_logits_match_transformers(name, "cuda")


@pytest.mark.unit
def test_reorder_and_reset_rows_keep_the_cache_consistent():
    """Beam-style reordering (repeats) and continuous-batching refills give the same logits as a fresh run."""
    hf = _reference("qwen2")
    native = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0])
    a, b, c = (torch.arange(n) % 300 + k for n, k in ((12, 1), (5, 7), (9, 3)))
    tokens, positions = _left_pad([a, b])
    cache = native.new_cache(2, 32)
    native.forward(tokens, positions, cache)
    native.reorder_cache(cache, torch.tensor([1, 1, 0]))  # rows: b, b, a
    step = native.forward(torch.tensor([[4], [5], [6]]), cache.lengths[:, None].clone(), cache)[:, 0]
    with torch.no_grad():
        for row, (seq, nxt) in enumerate(((b, 4), (b, 5), (a, 6))):
            ref = hf(torch.cat([seq, torch.tensor([nxt])])[None]).logits[0, -1]
            torch.testing.assert_close(step[row], ref, atol=1e-4, rtol=0)
    # free row 1 and prefill a new prompt into it while rows 0 and 2 keep their contexts
    cache.reset_rows(torch.tensor([1]))
    hidden = native.model(c[None], torch.arange(len(c))[None], cache, rows=torch.tensor([1]))
    with torch.no_grad():
        torch.testing.assert_close(native.model.logits(hidden)[0], hf(c[None]).logits[0], atol=1e-4, rtol=0)
        step = native.forward(torch.tensor([[8], [9], [10]]), cache.lengths[:, None].clone(), cache)[:, 0]
        for row, seq in enumerate((torch.cat([b, torch.tensor([4])]), c, torch.cat([a, torch.tensor([6])]))):
            ref = hf(torch.cat([seq, torch.tensor([8 + row])])[None]).logits[0, -1]
            torch.testing.assert_close(step[row], ref, atol=1e-4, rtol=0)


@pytest.mark.unit
def test_bf16_cpu_path_runs_close_to_fp32():
    hf = _reference("llama3-rope")
    fp32 = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0])
    bf16 = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0], dtype=torch.bfloat16)
    tokens, positions = _left_pad([torch.arange(20) + 5, torch.arange(7) + 9])
    ref = fp32.forward(tokens, positions, fp32.new_cache(2, 20))
    out = bf16.forward(tokens, positions, bf16.new_cache(2, 20))
    assert bf16.new_cache(1, 1).k.dtype == torch.bfloat16
    valid = positions >= 0
    assert (out[valid] - ref[valid]).abs().max() < 0.1


@pytest.mark.gpu
def test_cuda_bf16_compiled_decode_matches_eager():
    hf = _reference("qwen2")
    eager = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0], device="cuda", dtype=torch.bfloat16, compile=False)
    graphed = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0], device="cuda", dtype=torch.bfloat16)
    assert graphed.static_decode
    tokens, positions = _left_pad([torch.arange(20) + 5, torch.arange(7) + 9])
    results = []
    for native in (eager, graphed):
        cache = native.new_cache(2, 40)
        native.forward(tokens.cuda(), positions.cuda(), cache)
        outs = []
        for t in range(5):
            positions_t = cache.lengths[:, None].clone()
            hidden = native._decode(torch.full((2, 1), t + 1, device="cuda"), positions_t, cache) if native._decode \
                else native.model(torch.full((2, 1), t + 1, device="cuda"), positions_t, cache)
            outs.append(native.model.logits(hidden[:, -1]).float())
        results.append(torch.stack(outs))
    torch.testing.assert_close(results[0], results[1], atol=5e-2, rtol=0)


# ---------------------------------------------------------------- errors


@pytest.mark.unit
def test_unsupported_architecture_names_model_type_and_supported_list():
    with pytest.raises(EvalkitError, match=r"'gpt2'.*llama, mistral, qwen2"):
        NativeConfig.from_hf(transformers.GPT2Config())


@pytest.mark.unit
def test_missing_extra_and_misshapen_tensors_are_named():
    hf = _reference("qwen2")
    config = NativeConfig.from_hf(hf.config)
    state = dict(hf.state_dict())
    cpu = torch.device("cpu")
    missing = {k: v for k, v in state.items() if k != "model.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(EvalkitError, match=r"missing tensor 'model.layers.1.self_attn.k_proj.bias'"):
        build_model(config, missing, cpu, torch.float32)
    extra = {**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(EvalkitError, match=r"unexpected tensor 'model.layers.0.self_attn.q_norm.weight'"):
        build_model(config, extra, cpu, torch.float32)
    wrong = {**state, "model.norm.weight": torch.ones(63)}
    with pytest.raises(EvalkitError, match=r"'model.norm.weight' has shape \(63,\)"):
        build_model(config, wrong, cpu, torch.float32)


@pytest.mark.unit
def test_cache_estimate_is_printed_and_a_cache_too_big_is_a_clear_error(capsys):
    config = NativeConfig.from_hf(CONFIGS["qwen2"]())
    per_token = bytes_per_token(config, torch.float32)
    assert per_token == 2 * config.n_layers * config.n_kv_heads * config.head_dim * 4
    KVCache.allocate(config, 2, 10, torch.float32, torch.device("cpu"))
    assert f"2 rows x 10 tokens x {per_token} B/token" in capsys.readouterr().err
    with pytest.raises(EvalkitError, match=r"KV cache needs .* GiB .*lower batch_size="):
        KVCache.allocate(config, 10**6, 10**6, torch.float32, torch.device("cpu"))


def _shared_prefix_pairs() -> list[tuple[list[int], list[int]]]:
    """Scoring pairs that share prefixes in every way a prefix tree must handle: one context with several
    continuations, continuations sharing their first tokens, a context extending another pair's context,
    inputs that are identical but for the scored last token, and a pair sharing nothing."""
    gen = torch.Generator().manual_seed(2)
    rand = lambda n: torch.randint(0, TINY["vocab_size"], (n,), generator=gen).tolist()  # noqa: E731
    contexts = [rand(n) for n in (20, 5, 11)]
    pairs = [(ctx, rand(k)) for ctx in contexts for k in (1, 4, 9)] + [(rand(30), rand(6))]
    ending = rand(7)
    pairs += [(contexts[0], ending), (contexts[0], ending[:3] + rand(4)), (contexts[0], ending[:-1] + rand(1))]
    pairs += [(contexts[0] + ending[:2], rand(5)), (contexts[1] + rand(3), rand(2))]
    pairs += [([5], rand(20)), ([5], rand(24))]  # a one-token context before long continuations (perplexity windows)
    return pairs


@pytest.mark.unit
def test_prefix_trees_compute_each_shared_prefix_once():
    pairs = _shared_prefix_pairs()
    prefixes = {tuple((ctx + cont[:-1])[:k]) for ctx, cont in pairs for k in range(1, len(ctx) + len(cont))}
    trees = _Segment.grow(pairs, pack_tokens=10**6)
    assert sum(len(tree.tokens) for tree in trees) == len(prefixes)
    assert sorted(m for tree in trees for m, _ in tree.members) == list(range(len(pairs)))
    small = _Segment.grow(pairs, pack_tokens=16)  # the windows' tree outgrows its room: it splits, repeating [5]
    assert len(small) > len(trees) and sum(len(tree.tokens) for tree in small) > len(prefixes)


def _check_packed_scoring(name: str, device: str) -> None:
    """Prefix trees packed into shared rows: every continuation's logprobs equal transformers' on
    context + continuation run alone."""
    hf = _reference(name).to(device)
    native = NativeModel.from_hf(hf, tokenizer=None, eos_token_ids=[0], pack_tokens=48, token_budget=96)
    pairs = _shared_prefix_pairs()
    scored = native._score(pairs)
    with torch.no_grad():
        for (ctx, cont), (lps, greedy, _) in zip(pairs, scored):
            logits = hf(torch.tensor([ctx + cont[:-1]], device=device)).logits[0, len(ctx) - 1:].cpu()
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(lps), ref, atol=1e-4, rtol=0)
            assert greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())


@pytest.mark.unit
@pytest.mark.parametrize("name", ["qwen2", "mistral-sliding"])
def test_packed_shared_prefix_scoring_matches_full_forward(name):
    _check_packed_scoring(name, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qwen2", "mistral-sliding"])
def test_cuda_packed_shared_prefix_scoring_matches_full_forward(name, fp32_cuda):
    _check_packed_scoring(name, "cuda")


def _check_graph_greedy_generation(device: str, tokenizer) -> None:
    """Continuous batching through the captured (static, compiled) decode step: 7 requests of different
    lengths and budgets through 3 cache rows. Every generated token is transformers' argmax on the same
    sequence (within float ties), and a second call reuses the kept cache and compiles nothing new."""
    from torch._dynamo.utils import counters

    hf = _reference("qwen2").to(device)
    native = NativeModel.from_hf(hf, tokenizer, eos_token_ids=[2], batch_size=3, compile=True)
    assert native.static_decode
    prompts = ["a", "The quick brown fox", "jumps over", "the lazy dog, twice over", "z", "0123456789", "!?"]
    requests = [Generate(p, max_new_tokens=n) for p, n in zip(prompts, (5, 17, 9, 12, 3, 20, 8))]
    first = native.generate(requests, DecodingConfig())
    cache, graphs = native._static_cache, counters["stats"]["unique_graphs"]
    again = native.generate(requests, DecodingConfig())
    assert native._static_cache is cache and counters["stats"]["unique_graphs"] == graphs
    assert [r.token_ids for r in again] == [r.token_ids for r in first]
    with torch.no_grad():
        for request, response in zip(requests, first):
            prompt = tokenizer.encode(request.prompt)
            assert response.finish_reason in ("eos", "length") and 0 < len(response.token_ids) <= request.max_new_tokens
            logits = hf(torch.tensor([prompt + response.token_ids], device=device)).logits[0, len(prompt) - 1 : -1]
            chosen = logits.gather(1, torch.tensor(response.token_ids, device=device)[:, None])[:, 0]
            assert (chosen >= logits.max(-1).values - 1e-4).all()


@pytest.mark.unit
def test_graph_greedy_generation_follows_transformers_on_cpu(char_tokenizer):
    """The CUDA-graph decode path's logic (whole-cache reads, kept cache, compiled step) checked on CPU."""
    _check_graph_greedy_generation("cpu", char_tokenizer)


@pytest.mark.gpu
def test_cuda_graph_greedy_generation_follows_transformers(fp32_cuda, char_tokenizer):
    _check_graph_greedy_generation("cuda", char_tokenizer)
