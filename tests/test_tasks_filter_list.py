"""filter_list: several named filter pipelines per generation task, as lm-evaluation-harness 0.4.13's.

Parity is checked against lm-eval's own filters (built from its gsm8k.yaml with
its ``build_filter_ensemble``) and its own ``exact_match`` metric, on
hand-written model outputs: the outputs are test inputs, not a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from evalkit.errors import EvalkitError
from evalkit.requests import Response
from evalkit.tasks import get_task, load_spec

pytestmark = pytest.mark.unit

PIPELINES = ("flexible-extract", "strict-match")
ROWS = tuple(f"exact_match,{name}" for name in PIPELINES)

# Outputs for the first gsm8k test items (answers 18, 3, 70000, 540, 20, 64, 260, 160, 45, 460, 366, 694).
OUTPUTS = [
    " Janet has 16 - 3 - 4 = 9 eggs left.\nShe sells them for 9 * $2 = $18.\n#### 18",  # both pipelines hit
    " Half of 2 bolts is 1 bolt of white fiber, so 2 + 1 = 3",  # last number is one digit: the second regex group
    " The house is worth 80,000 * 2.5 = 200,000, so the profit is 200,000 - 130,000 = 70,000.\n#### 70,000",
    " I am not sure how far James runs.",  # no number at all: "[invalid]" for both
    " 3 cups * 20 chickens = 60 cups; 60 - 15 - 25 = 20. The answer is $20",  # "$20": only flexible-extract
    " 8 glasses at $5 and 8 at $3: 40 + 24 = 64.",  # trailing "." dropped by exact_match's options
    " Seattle has 20 sheep, Charleston 80 and Toulouse 160.\n#### -260",  # negative number: a miss
    " #### 150\nWait, that is wrong: the profit is 160.\n#### 160",  # strict takes the first "####", flexible the last number
    " Carla needs 40% of 200 GB = 80 GB, restarts, and takes 45 minutes in all, not 1,234.5",  # decimals and commas
    " John runs 3 * 60 = 180 miles... #### $460",  # "#### $": not strict-match's pattern
    "\n#### 366\n\n",  # the bare lm-eval answer format
    "",  # an empty generation
]


def lm_eval_gsm8k() -> dict:
    import lm_eval

    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())


def lm_eval_filtered(texts: list[str]) -> dict[str, list[str]]:
    """lm-eval's gsm8k pipelines applied by its own FilterEnsembles, built as ConfigurableTask builds them."""
    from lm_eval.filters import build_filter_ensemble

    out = {}
    for pipeline in lm_eval_gsm8k()["filter_list"]:
        components = [[f["function"], {k: v for k, v in f.items() if k != "function"}] for f in pipeline["filter"]]
        ensemble = build_filter_ensemble(pipeline["name"], components)
        instances = [SimpleNamespace(resps=[text], doc={}, filtered_resps={}) for text in texts]
        ensemble.apply(instances)
        out[pipeline["name"]] = [inst.filtered_resps[pipeline["name"]] for inst in instances]
    return out


def lm_eval_exact_match(prediction: str, doc: dict) -> float:
    """lm-eval's registered exact_match with gsm8k's options, called as its process_results calls it."""
    from lm_eval.api.registry import get_metric

    entry = lm_eval_gsm8k()["metric_list"][0]
    options = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")}
    return float(get_metric("exact_match")(references=[doc["answer"]], predictions=[prediction], **options)["exact_match"])


# ------------------------------------------------------------ parsing

GOOD = {
    "name": "mine",
    "output_type": "generate_until",
    "dataset": {"path": "./items.jsonl"},
    "doc_to_text": "Q: {{ q }}\nA:",
    "reference": "a",
    "metrics": ["exact_match"],
}


def write_task(tmp_path: Path, data: dict) -> Path:
    rows = [{"q": "2+2", "a": "4"}, {"q": "3+3", "a": "6"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(EvalkitError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def test_filter_list_accepted_in_both_spellings(tmp_path):
    steps = {
        "native": [{"regex": {"pattern": "-?[0-9]+", "select": -1}}, "strip", "take_first"],
        "lm-eval": [{"function": "regex", "regex_pattern": "-?[0-9]+", "group_select": -1}, {"function": "take_first"}],
        "mixed": [{"regex": {"regex_pattern": "([a-z]+)", "fallback": "none"}}, "uppercase", {"function": "remove_whitespace"}],
    }
    spec = load_spec(write_task(tmp_path, {**GOOD, "filter_list": [{"name": n, "filter": s} for n, s in steps.items()]}))
    filters = spec.output_filters()
    assert list(filters) == ["native", "lm-eval", "mixed"]
    assert [f(" 1 and -23 ") for f in filters.values()] == ["-23", "-23", "AND"]
    assert filters["mixed"]("123") == "NONE"


def test_plain_filter_keeps_one_unnamed_pipeline():
    spec = get_task("demo-arith").spec
    assert spec.filter_list is None and list(spec.output_filters()) == [None]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"filter": ["strip"], "filter_list": [{"name": "a", "filter": ["strip"]}]}, "'filter' and 'filter_list' are both given; keep one"),
        ({"filter_list": [{"name": "a", "filter": ["strip"]}, {"name": "a", "filter": ["lower"]}]}, "names 'a' twice"),
        ({"filter_list": [{"name": "", "filter": ["strip"]}]}, "names must be non-empty"),
        ({"filter_list": [{"name": "  ", "filter": ["strip"]}]}, "names must be non-empty"),
        ({"filter_list": [{"filter": ["strip"]}]}, "must be {name: NAME, filter: [steps...]}"),
        ({"filter_list": []}, "'filter_list' must be a list of"),
        ({"filter_list": {"a": ["strip"]}}, "'filter_list' must be a list of"),
        ({"filter_list": [{"name": "a", "filter": "strip"}]}, "pipeline 'a' must be a list of steps"),
        ({"filter_list": [{"name": "a", "filter": ["frobnicate"]}]}, "unknown filter step 'frobnicate'"),
        ({"filter_list": [{"name": "a", "filter": [{"function": "majority_vote"}]}]}, "unknown filter function 'majority_vote'"),
        ({"filter_list": [{"name": "a", "filter": [{"function": "take_first", "k": 2}]}]}, "takes no arguments"),
        ({"filter_list": [{"name": "a", "filter": ["take_first", "strip"]}]}, "'take_first' must be the last step"),
        ({"filter_list": [{"name": "a", "filter": [{"function": "regex", "regex_pattern": "("}]}]}, "bad filter step"),
        ({"filter_list": [{"name": "a", "filter": [{"regex": {"pattern": "x", "regex_pattern": "y"}}]}]}, "bad filter step"),
    ],
)
def test_bad_filter_list_is_one_line_naming_the_file(tmp_path, change, expected):
    assert expected in error_of(write_task(tmp_path, {**GOOD, **change}))


def test_filter_list_only_for_generation(tmp_path):
    data = {**GOOD, "output_type": "multiple_choice", "doc_to_choice": "['4', '5']", "gold": "0", "metrics": ["acc"],
            "filter_list": [{"name": "a", "filter": ["strip"]}]}
    assert "generate_until tasks only" in error_of(write_task(tmp_path, data))


# ------------------------------------------------------------ parity with lm-eval

def test_gsm8k_pipelines_are_lm_eval_s(data_dir):
    ours = {p["name"]: p["filter"] for p in get_task("gsm8k", str(data_dir)).spec.filter_list}
    assert ours == {p["name"]: p["filter"] for p in lm_eval_gsm8k()["filter_list"]}


def test_gsm8k_filtered_text_and_exact_match_equal_lm_eval(data_dir):
    task = get_task("gsm8k", str(data_dir))
    instances = task.instances(limit=len(OUTPUTS))
    scored = task.score(instances, [[Response(text=t)] for t in OUTPUTS], bootstrap=0)
    theirs = lm_eval_filtered(OUTPUTS)
    for name, row in zip(PIPELINES, ROWS):
        filtered = [s["filtered"][name] for s in scored.samples]
        assert filtered == theirs[name]
        expected = [lm_eval_exact_match(p, inst.doc) for p, inst in zip(theirs[name], instances)]
        assert [s["scores"][row] for s in scored.samples] == expected
        assert scored.metrics[row].score == pytest.approx(np.mean(expected), abs=1e-12)
        assert 0 < sum(expected) < len(expected)  # hits and misses both checked
    assert [s["output"] for s in scored.samples] == OUTPUTS
    assert theirs["strict-match"] != theirs["flexible-extract"]  # the two rules were both exercised
    assert "[invalid]" in theirs["strict-match"] and "[invalid]" in theirs["flexible-extract"]


def test_gsm8k_end_to_end_rows_are_means_of_lm_eval_scores(data_dir):
    task = get_task("gsm8k", str(data_dir))
    instances = task.instances(limit=5)
    texts = OUTPUTS[:5]
    scored = task.score(instances, [[Response(text=t)] for t in texts], bootstrap=0)
    assert list(scored.metrics) == list(ROWS)  # the file's order; no plain "exact_match" row
    theirs = lm_eval_filtered(texts)
    for name, row in zip(PIPELINES, ROWS):
        expected = np.mean([lm_eval_exact_match(p, inst.doc) for p, inst in zip(theirs[name], instances)])
        assert scored.metrics[row].score == pytest.approx(expected, abs=1e-12)
        assert scored.metrics[row].name == row and scored.metrics[row].extra["filter"] == name
        assert scored.metrics[row].signature.endswith(f"|filter:{name}")
    assert scored.metrics[ROWS[0]].score != scored.metrics[ROWS[1]].score


@pytest.mark.parametrize("step", ["lowercase", "uppercase", "remove_whitespace"])
def test_simple_steps_equal_lm_eval(tmp_path, step):
    from lm_eval.api.registry import get_filter

    texts = ["  Mixed Case \n", "\tÄrger ß", "", "no-change"]
    spec = load_spec(write_task(tmp_path, {**GOOD, "filter_list": [{"name": "x", "filter": [{"function": step}]}]}))
    ours = [spec.output_filters()["x"](t) for t in texts]
    assert ours == [r[0] for r in get_filter(step)().apply([[t] for t in texts], [{}] * len(texts))]


# ------------------------------------------------------------ metrics and records per pipeline

def test_plain_filter_keeps_plain_names_and_string_filtered():
    task = get_task("demo-arith")
    instances = task.instances(limit=3)
    scored = task.score(instances, [[Response(text=f" {inst.reference} apples")] for inst in instances], bootstrap=0)
    assert list(scored.metrics) == ["exact_match"] and scored.metrics["exact_match"].score == 1.0
    assert "|filter:" not in scored.metrics["exact_match"].signature
    assert all(isinstance(s["filtered"], str) and set(s["scores"]) == {"exact_match"} for s in scored.samples)


def test_every_metric_per_pipeline_and_rouge_one_pass_each(tmp_path, monkeypatch):
    import evalkit.metrics.registry as registry

    calls = []
    real = registry.rouge_item_scores
    monkeypatch.setattr(registry, "rouge_item_scores", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    data = {**GOOD, "reference": "'the answer is ' ~ a", "metrics": ["rouge", "exact_match"], "filter_list": [
        {"name": "raw", "filter": ["strip"]},
        {"name": "loud", "filter": ["uppercase"]},
    ]}
    task = get_task(str(write_task(tmp_path, data)))
    instances = task.instances()
    scored = task.score(instances, [[Response(text=" the answer is 4 ")], [Response(text="the answer is 7")]], bootstrap=0)
    rouge = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    assert list(scored.metrics) == [f"{m},{p}" for p in ("raw", "loud") for m in (*rouge, "exact_match")]
    assert len(calls) == 2  # ROUGE variants still share one pass, once per pipeline
    assert scored.metrics["exact_match,raw"].score == 0.5 and scored.metrics["exact_match,loud"].score == 0.0
    assert scored.samples[0]["filtered"] == {"raw": "the answer is 4", "loud": " THE ANSWER IS 4 "}
    assert set(scored.samples[0]["scores"]) == set(scored.metrics)
