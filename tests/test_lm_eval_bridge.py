"""lm-evaluation-harness both ways: evalkit as lm-eval's ``--model evalkit``, and lm-eval tasks as ``lm_eval:<name>``.

The reference numbers come from lm-eval 0.4.13 itself (its ``hf`` backend, its
evaluator) on the same items, computed inside each test. The hub is switched
off (``HF_HUB_OFFLINE``), so every lm-eval task reads the local copies in
shared/data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import evalkit
from evalkit.errors import EvalkitError

REPO = Path(__file__).resolve().parents[1]
HELLASWAG = "hellaswag/hellaswag_val.rows_0000-1999.jsonl"

pytestmark = pytest.mark.integration  # the real SmolLM2 (and its tokenizer under tiny models), lm-eval runs

# A short generation task over the local GSM8K rows (0-shot, 12 new tokens) for the generate_until path.
GSM8K_YAML = """\
task: short_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('#### ')[-1]}}}}"
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  do_sample: false
  max_gen_toks: 12
metric_list:
  - metric: exact_match
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, data_dir, load_benchmark) -> Path:
    """benchmarks/lm_eval_parity.py's task (lm-eval's hellaswag prompt over the local rows) and a short GSM8K one."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    hellaswag_yaml = load_benchmark("lm_eval_parity").HELLASWAG_YAML
    (folder / "parity_hellaswag.yaml").write_text(hellaswag_yaml.format(data=data_dir / HELLASWAG))
    (folder / "short_gsm8k.yaml").write_text(GSM8K_YAML.format(data=data_dir / "gsm8k" / "test.jsonl"))
    return folder


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    """A random-init LLaMA (2 layers) with the real SmolLM2 tokenizer: lm-eval and evalkit score the same object."""
    config = transformers.LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def lm_eval_run(model, tasks: list, task_dir: Path, limit: int, **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=limit, batch_size=8, device="cpu", log_samples=True, bootstrap_iters=0, **kwargs,
    )


def loglikelihoods(samples: list[dict]) -> list[float]:
    """Every choice's loglikelihood, document after document, from lm-eval's logged samples."""
    return [resp[0][0] for sample in sorted(samples, key=lambda s: s["doc_id"]) for resp in sample["resps"]]


def test_lm_eval_model_evalkit_matches_lm_eval_hf_backend(task_dir, tmp_path):
    """SmolLM2 on 20 HellaSwag items: lm-eval's own hf backend vs --model evalkit (hf in-process, native via the CLI)."""
    import evalkit.integrations.lm_eval_model  # noqa: F401 - registers --model evalkit
    from evalkit.models.registry import resolve_model_path

    folder = resolve_model_path("smollm2-135m")
    theirs = lm_eval_run("hf", ["parity_hellaswag"], task_dir, 20, model_args=f"pretrained={folder},dtype=float32")
    ours = lm_eval_run("evalkit", ["parity_hellaswag"], task_dir, 20, model_args="model=smollm2-135m,backend=hf")
    reference = theirs["results"]["parity_hellaswag"]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["parity_hellaswag"][metric] == reference[metric]
    got, want = loglikelihoods(ours["samples"]["parity_hellaswag"]), loglikelihoods(theirs["samples"]["parity_hellaswag"])
    assert got == pytest.approx(want, abs=1e-3)

    # lm-eval's own command line, with the native engine behind --model evalkit
    command = [
        sys.executable, "-m", "evalkit.integrations.lm_eval_model", "--model", "evalkit",
        "--model_args", "model=smollm2-135m,backend=native", "--tasks", "parity_hellaswag",
        "--include_path", str(task_dir), "--limit", "20", "--batch_size", "8", "--output_path", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    native = json.loads(results_file.read_text())["results"]["parity_hellaswag"]
    print(f"\nhellaswag 20 items acc/acc_norm: lm-eval hf {reference['acc,none']}/{reference['acc_norm,none']}, "
          f"evalkit native (lm-eval CLI) {native['acc,none']}/{native['acc_norm,none']}")
    for metric in ("acc,none", "acc_norm,none"):
        assert native[metric] == reference[metric]


def test_lm_eval_task_by_name_scores_like_lm_eval(tiny, smollm2_tokenizer, tmp_path, data_dir, scipy_percentile_ci):
    """--tasks lm_eval:hellaswag (hub off: the local rows) gives lm-eval's own numbers for the same model object."""
    from lm_eval.models.huggingface import HFLM

    from evalkit.tasks.lm_eval import LOCAL_DATA, lm_eval_config

    results = evalkit.evaluate(tiny, smollm2_tokenizer, tasks="lm_eval:hellaswag", limit=20, data_dir=data_dir, bootstrap=200, output_dir=tmp_path)
    ours = results["results"]["lm_eval:hellaswag"]["loglikelihood"]
    lm_eval_folder = Path(__import__("lm_eval.tasks", fromlist=["x"]).__file__).parent / "hellaswag"
    theirs = lm_eval_run(HFLM(pretrained=tiny, tokenizer=smollm2_tokenizer, batch_size=8), [lm_eval_config("hellaswag", data_dir)], lm_eval_folder, 20)
    reference = theirs["results"]["hellaswag"]
    assert results["n_items"]["lm_eval:hellaswag"] == 20
    assert ours["acc"] == reference["acc,none"] and ours["acc_norm"] == reference["acc_norm,none"]
    # the interval: scipy's percentile bootstrap of lm-eval's own per-document acc over evalkit's resamples (seed 0)
    acc = np.array([s["acc"] for s in sorted(theirs["samples"]["hellaswag"], key=lambda s: s["doc_id"])])
    assert ours["acc_ci"] == pytest.approx(scipy_percentile_ci(lambda items: acc[items].mean(), 20, 200), abs=1e-12)
    assert f"data:local:{LOCAL_DATA['hellaswag'].path}" in results["signatures"]["lm_eval:hellaswag"]["acc"]
    samples = [json.loads(line) for line in (tmp_path / "samples" / "lm_eval_hellaswag__loglikelihood.jsonl").open()]
    assert [ll for s in samples for ll, _ in s["output"]] == pytest.approx(loglikelihoods(theirs["samples"]["hellaswag"]), abs=1e-4)
    # the same 20 documents as evalkit's own hellaswag task: lm-eval's prompt cleaning changes no answer here
    native = evalkit.evaluate(tiny, smollm2_tokenizer, tasks="hellaswag", limit=20, data_dir=data_dir, bootstrap=0)
    assert native["results"]["hellaswag"]["loglikelihood"]["acc"] == ours["acc"]


def test_generate_until_both_ways(tiny, smollm2_tokenizer, task_dir):
    """A generation task file: lm-eval hf vs lm-eval --model evalkit vs evalkit's lm_eval:<file>; same texts and scores."""
    from lm_eval.models.huggingface import HFLM

    from evalkit.integrations.lm_eval_model import EvalkitLM
    from evalkit.models.hf import HFModel

    theirs = lm_eval_run(HFLM(pretrained=tiny, tokenizer=smollm2_tokenizer, batch_size=8), ["short_gsm8k"], task_dir, 3)
    ours = lm_eval_run(EvalkitLM(HFModel(tiny, smollm2_tokenizer)), ["short_gsm8k"], task_dir, 3)
    texts = [s["resps"][0][0] for s in sorted(theirs["samples"]["short_gsm8k"], key=lambda s: s["doc_id"])]
    assert [s["resps"][0][0] for s in sorted(ours["samples"]["short_gsm8k"], key=lambda s: s["doc_id"])] == texts
    assert any(texts)

    path = str(task_dir / "short_gsm8k.yaml")
    results = evalkit.evaluate(tiny, smollm2_tokenizer, tasks=f"lm_eval:{path}", limit=3, bootstrap=0)
    cell = results["results"]["lm_eval:short_gsm8k"]["greedy"]
    assert cell["exact_match"] == theirs["results"]["short_gsm8k"]["exact_match,none"]


def test_lm_eval_task_without_local_data_is_one_clear_error(tiny, smollm2_tokenizer, tmp_path):
    with pytest.raises(EvalkitError, match=r"hub is not reachable.*data_dir=DIR"):
        evalkit.evaluate(tiny, smollm2_tokenizer, tasks="lm_eval:hellaswag", limit=2, data_dir=tmp_path)


@pytest.mark.parametrize("name", ["hellaswag", "piqa", "gsm8k", "wikitext"])
def test_local_data_mapping_builds_lm_eval_requests(name, data_dir):
    """Every task evalkit ships data for runs from the local copy through lm-eval's own config and request builder."""
    from evalkit.tasks.lm_eval import lm_eval_tasks

    (task,) = lm_eval_tasks(name, data_dir)
    instances = task.instances(limit=2)
    assert [i.doc_id for i in instances] == [0, 1]
    assert task.name == f"lm_eval:{name}" and all(i.requests for i in instances)
    assert task.source.startswith("local:")


def test_lm_eval_wikitext_perplexity_equals_evalkit_wikitext2(tiny, smollm2_tokenizer, data_dir):
    """Rolling loglikelihood through lm-eval's wikitext task (local article 0) = evalkit's own wikitext2 task."""
    theirs = evalkit.evaluate(tiny, smollm2_tokenizer, tasks="lm_eval:wikitext", limit=1, data_dir=data_dir, bootstrap=0, flat=True)
    ours = evalkit.evaluate(tiny, smollm2_tokenizer, tasks="wikitext2", limit=1, data_dir=data_dir, bootstrap=0, flat=True)
    assert theirs["lm_eval:wikitext/word_perplexity"] == pytest.approx(ours["wikitext2/word_perplexity"], rel=1e-9)
