"""`torchrun --nproc-per-node 2 -m evalkit run ...` on CPU (gloo): the same results.json as one process.

The model is a random-init LLaMA folder (2 layers) with the real SmolLM2
tokenizer, so every process loads it in a moment; the tasks are the demo
suite (rolling loglikelihood, multiple choice, generation) and HellaSwag from
shared/data. 16 items with --batch-size 2 give each (task, decoding) cell up
to two 32-request chunks, so both ranks compute. Every process runs one
thread: thread count, not rank count, is what could move a float's last bit.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
TASKS = "demo,hellaswag"

pytestmark = pytest.mark.integration  # whole runs in subprocesses, under torchrun


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def evalkit_run(model_dir: Path, data_dir: Path, out: Path, *, ranks: int, limit: int, cache: Path | None) -> tuple[dict, str]:
    """Run the CLI in 1 process or under torchrun; return results.json and the combined stdout."""
    args = [
        "run", "--model", str(model_dir), "--tasks", TASKS, "--limit", str(limit), "--batch-size", "2",
        "--bootstrap", "100", "--data-dir", str(data_dir), "--output", str(out),
    ]
    if cache is None:
        args.append("--no-cache")
    launcher = [sys.executable, "-m", "evalkit"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m", "evalkit",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "EVALKIT_CACHE": str(cache or out / "unused")}
    done = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), done.stdout


def cached_counts(results: dict) -> dict[tuple[str, str], int]:
    return {(task, label): cell["cached"] for task, cells in results["efficiency"].items() for label, cell in cells.items()}


def request_counts(results: dict) -> dict[tuple[str, str], int]:
    return {(task, label): cell["requests"] for task, cells in results["efficiency"].items() for label, cell in cells.items()}


@pytest.fixture(scope="module")
def single(model_dir, tmp_path_factory, data_dir) -> dict:
    return evalkit_run(model_dir, data_dir, tmp_path_factory.mktemp("single"), ranks=1, limit=16, cache=None)[0]


def test_two_ranks_write_the_results_of_one_process(model_dir, single, tmp_path, data_dir):
    cache = tmp_path / "cache"
    two, stdout = evalkit_run(model_dir, data_dir, tmp_path / "two", ranks=2, limit=16, cache=cache)
    assert two["results"] == single["results"]
    assert two["n_items"] == single["n_items"] and two["meta"]["config"]["world_size"] == 2
    assert set(two["results"]) == {"demo-lm", "demo-choice", "demo-arith", "hellaswag"}
    assert stdout.count("results: ") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["results.json", "samples"]

    # both ranks wrote their answers to the one cache: a single process now recomputes nothing
    with sqlite3.connect(cache / "responses.sqlite") as db:
        rows = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert rows > 0
    resumed, _ = evalkit_run(model_dir, data_dir, tmp_path / "resumed", ranks=1, limit=16, cache=cache)
    assert resumed["results"] == single["results"]
    assert cached_counts(resumed) == request_counts(resumed)


def test_two_ranks_resume_what_one_process_computed(model_dir, single, tmp_path, data_dir):
    cache = tmp_path / "cache"
    half, _ = evalkit_run(model_dir, data_dir, tmp_path / "half", ranks=1, limit=8, cache=cache)
    two, _ = evalkit_run(model_dir, data_dir, tmp_path / "two", ranks=2, limit=16, cache=cache)
    assert two["results"] == single["results"]
    # rank 0 found the first 8 items' answers in the cache; the ranks computed only the rest
    assert cached_counts(two) == request_counts(half)
