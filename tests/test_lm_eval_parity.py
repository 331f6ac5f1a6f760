"""evalkit's built-in tasks give lm-evaluation-harness 0.4.13's numbers on the same items, weights and prompts.

lm-eval runs here through its own `simple_evaluate` with the `hf` backend, on a
task YAML over the same local files (the YAMLs live in benchmarks/lm_eval_parity.py,
which runs the full-size comparison).
"""

from __future__ import annotations

import json

import pytest

import evalkit
from evalkit.models.registry import resolve_model_path
from evalkit.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parity(load_benchmark):
    return load_benchmark("lm_eval_parity")


def test_hellaswag_acc_equals_lm_eval(parity, smollm2, data_dir, tmp_path):
    limit = 24
    hellaswag = data_dir / "hellaswag" / "hellaswag_val.rows_0000-1999.jsonl"
    (tmp_path / "parity_hellaswag.yaml").write_text(parity.HELLASWAG_YAML.format(data=hellaswag))
    theirs, _ = parity.run_lm_eval(resolve_model_path("smollm2-135m"), tmp_path, "parity_hellaswag", limit, 8)
    ours = evalkit.evaluate(smollm2, tasks="hellaswag", limit=limit, data_dir=data_dir, cache=False, bootstrap=0)
    ours = ours["results"]["hellaswag"]["loglikelihood"]
    assert round(ours["acc"], 4) == round(theirs["acc,none"], 4)
    assert round(ours["acc_norm"], 4) == round(theirs["acc_norm,none"], 4)


def test_wikitext2_word_perplexity_equals_lm_eval(parity, smollm2, data_dir, tmp_path):
    """The first two test documents, scored whole and counted on the original page as lm-eval does."""
    n_docs = 2
    docs = [i.reference for i in get_task("wikitext2", data_dir=str(data_dir)).instances(limit=n_docs)]
    data = tmp_path / "wikitext_docs.jsonl"
    data.write_text("".join(json.dumps({"page": d}) + "\n" for d in docs))
    (tmp_path / "parity_wikitext_utils.py").write_text(
        "from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer, process_results\n"
    )
    (tmp_path / "parity_wikitext.yaml").write_text(parity.WIKITEXT_YAML.format(data=data))
    theirs, _ = parity.run_lm_eval(resolve_model_path("smollm2-135m"), tmp_path, "parity_wikitext", None, 8)
    ours = evalkit.evaluate(smollm2, tasks="wikitext2", limit=n_docs, data_dir=data_dir, cache=False, bootstrap=0)
    ours = ours["results"]["wikitext2"]["loglikelihood"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[metric] == pytest.approx(theirs[f"{metric},none"], rel=1e-3), metric
