"""Task.score on hand-made Response records, checked against lm-evaluation-harness 0.4.13's own
process_results, filters, metric and aggregation functions (the responses are test inputs, not a model)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from evalkit.requests import Response
from evalkit.tasks import get_task

pytestmark = pytest.mark.unit



def lm_eval_multiple_choice(doc: dict, lls: list[float], choices: list[str], gold: int) -> dict:
    """lm-eval's ConfigurableTask.process_results for multiple_choice, run on its own code."""
    from lm_eval.api.task import ConfigurableTask

    task = SimpleNamespace(
        config=SimpleNamespace(process_results=None),
        OUTPUT_TYPE="multiple_choice",
        _metric_fn_list={"acc": None, "acc_norm": None},
        doc_to_choice=lambda d: choices,
        doc_to_target=lambda d: gold,
        multiple_input=False,
        multiple_target=False,
    )
    return ConfigurableTask.process_results(task, doc, [(ll, False) for ll in lls])


@pytest.mark.parametrize("name", ["hellaswag", "piqa", "demo-choice"])
def test_multiple_choice_matches_lm_eval(name, data_dir, scipy_percentile_ci):
    task = get_task(name, str(data_dir))
    instances = task.instances(limit=200)
    rng = np.random.default_rng(0)
    responses = []
    for inst in instances:
        # log-likelihoods that grow with length so acc and acc_norm often disagree
        lls = [-(len(r.continuation) * rng.uniform(0.5, 1.5)) for r in inst.requests]
        responses.append([Response(logprob=float(ll), is_greedy=False) for ll in lls])
    scored = task.score(instances, responses, bootstrap=200, seed=1)
    expected = [
        lm_eval_multiple_choice(inst.doc, [r.logprob for r in resp], task.choices(inst.doc), inst.reference)
        for inst, resp in zip(instances, responses)
    ]
    for metric in ("acc", "acc_norm"):
        per_item = [e[metric] for e in expected]
        assert [s["scores"][metric] for s in scored.samples] == per_item
        assert scored.metrics[metric].score == pytest.approx(np.mean(per_item), abs=1e-12)
        correct = np.array(per_item)
        reference = scipy_percentile_ci(lambda items: correct[items].mean(), len(correct), 200, seed=1)  # noqa: B023
        assert scored.metrics[metric].ci == pytest.approx(reference, abs=1e-12)
    assert any(s["pred"] != s["pred_norm"] for s in scored.samples)  # the two rules were both exercised
    sample = scored.samples[0]
    assert set(sample) >= {"doc_id", "prompt", "output", "reference", "scores"}
    assert sample["prompt"] == instances[0].prompt


def test_rolling_perplexity_matches_lm_eval_aggregation(data_dir):
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results

    task = get_task("wikitext2", str(data_dir))
    instances = task.instances()
    rng = np.random.default_rng(3)
    responses = []
    for inst in instances:
        n_tokens = len(inst.prompt) // 4
        token_lps = (-rng.uniform(1.0, 4.0, n_tokens)).tolist()
        responses.append([Response(logprob=float(sum(token_lps)), token_logprobs=token_lps)])
    scored = task.score(instances, responses, bootstrap=0)
    items = [process_results({"page": inst.doc["page"]}, [resp[0].logprob]) for inst, resp in zip(instances, responses)]
    assert scored.metrics["word_perplexity"].score == pytest.approx(weighted_perplexity([i["word_perplexity"] for i in items]), rel=1e-12)
    assert scored.metrics["byte_perplexity"].score == pytest.approx(weighted_perplexity([i["byte_perplexity"] for i in items]), rel=1e-12)
    assert scored.metrics["bits_per_byte"].score == pytest.approx(bits_per_byte([i["bits_per_byte"] for i in items]), rel=1e-12)
    assert scored.samples[0]["n_tokens"] == len(responses[0][0].token_logprobs)
    assert scored.samples[0]["output"] == pytest.approx(responses[0][0].logprob)


GSM8K_OUTPUTS = [
    " Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.",
    " The answer is 3 bolts.",
    " #### 70,000",
    " I am not sure.",
    " 5 + 5 = 10, then 10 * 3 = 30. So 540 meters.",
    " It costs $1,000.00 in total.",
]


def test_gsm8k_filter_and_exact_match_match_lm_eval(data_dir):
    import lm_eval
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    lm_yaml = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    config = yaml.safe_load(lm_yaml.read_text())
    flexible = next(f for f in config["filter_list"] if f["name"] == "flexible-extract")["filter"][0]
    options = {k: config["metric_list"][0][k] for k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}

    task = get_task("gsm8k", str(data_dir))
    instances = task.instances(limit=len(GSM8K_OUTPUTS))
    scored = task.score(instances, [[Response(text=t)] for t in GSM8K_OUTPUTS], bootstrap=0)

    regex = RegexFilter(regex_pattern=flexible["regex_pattern"], group_select=flexible["group_select"])
    extracted = [r[0] for r in regex.apply([[t] for t in GSM8K_OUTPUTS], [i.doc for i in instances])]
    assert [s["filtered"]["flexible-extract"] for s in scored.samples] == extracted
    expected = [
        exact_match_hf_evaluate(predictions=[p], references=[i.doc["answer"]], **options)["exact_match"]
        for p, i in zip(extracted, instances)
    ]
    assert [s["scores"]["exact_match,flexible-extract"] for s in scored.samples] == expected
    assert expected[:3] == [1.0, 1.0, 1.0] and sum(expected) < len(expected)  # hits and misses both checked
    assert scored.samples[0]["output"] == GSM8K_OUTPUTS[0]


def test_translation_scores_with_all_references_equal_sacrebleu(data_dir):
    import sacrebleu

    task = get_task("wmt21-de-en", str(data_dir))
    instances = task.instances(limit=40)
    hyps = (data_dir / "wmt21_news_text" / "newstest2021.de-en.hyp.UEdin.en.txt").read_text(encoding="utf-8").splitlines()[:40]
    scored = task.score(instances, [[Response(text=" " + h + "\n")] for h in hyps], bootstrap=0)
    streams = [list(s) for s in zip(*[i.reference for i in instances])]
    assert len(streams) == 2
    assert scored.metrics["bleu"].score == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
    assert scored.metrics["chrf"].score == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=1e-9)


def test_summaries_scored_with_rouge_against_eleven_references(data_dir):
    from rouge_score import rouge_scorer

    task = get_task("cnndm-summeval", str(data_dir))
    instances = task.instances(limit=5)
    outputs = [inst.doc["summary"] for inst in instances]
    scored = task.score(instances, [[Response(text=o)] for o in outputs], bootstrap=0)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    for sample, inst, out in zip(scored.samples, instances, outputs):
        best = scorer.score_multi(inst.reference, out)
        assert sample["scores"]["rouge1"] == pytest.approx(best["rouge1"].fmeasure)
        assert sample["scores"]["rouge2"] == pytest.approx(best["rouge2"].fmeasure)
    assert set(scored.metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_score_rejects_mismatched_lengths():
    from evalkit.errors import EvalkitError

    task = get_task("demo-lm")
    with pytest.raises(EvalkitError, match="instances but"):
        task.score(task.instances(), [], bootstrap=0)


def test_per_sample_word_perplexity_is_lm_eval_formula():
    task = get_task("demo-lm")
    instances = task.instances()
    responses = [[Response(logprob=-50.0 - i, token_logprobs=[-1.0] * 10)] for i in range(len(instances))]
    scored = task.score(instances, responses, bootstrap=0)
    for sample, inst, resp in zip(scored.samples, instances, responses):
        words = len(re.split(r"\s+", inst.reference))
        assert sample["scores"]["word_perplexity"] == pytest.approx(math.exp(-resp[0].logprob / words))
