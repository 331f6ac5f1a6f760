"""The built-in tasks on the real shared data: counts, the exact prompts, references and few-shot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from evalkit.requests import Generate, Loglikelihood, RollingLoglikelihood
from evalkit.tasks import Task, parse_spec, resolve_tasks

pytestmark = pytest.mark.unit

BUILTIN = Path(__file__).resolve().parents[1] / "evalkit" / "tasks" / "builtin"


def jsonl(data_dir: Path, relative: str) -> list[dict]:
    return [json.loads(line) for line in (data_dir / relative).open(encoding="utf-8")]


def lines(data_dir: Path, relative: str) -> list[str]:
    return (data_dir / relative).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def tasks(data_dir) -> dict[str, Task]:
    names = ["wikitext2", "hellaswag", "piqa", "gsm8k", "wmt21-de-en", "wmt21-en-de", "cnndm-summeval", "demo"]
    return {t.name: t for t in resolve_tasks(names, data_dir=str(data_dir))}


@pytest.mark.parametrize(
    "name,count",
    [("wikitext2", 62), ("hellaswag", 2000), ("piqa", 1838), ("gsm8k", 1319), ("wmt21-de-en", 1000),
     ("wmt21-en-de", 1002), ("cnndm-summeval", 50), ("demo-lm", 6), ("demo-choice", 20), ("demo-arith", 20)],
)
def test_counts(tasks, name, count):
    assert len(tasks[name].instances()) == count


def test_hellaswag_prompts_are_lm_eval_format(tasks, data_dir):
    rows = jsonl(data_dir, "hellaswag/hellaswag_val.rows_0000-1999.jsonl")
    for inst, row in zip(tasks["hellaswag"].instances(limit=50), rows):
        assert inst.prompt == row["query"] == row["activity_label"] + ": " + row["ctx"]
        assert inst.requests == [Loglikelihood(row["query"], " " + ending) for ending in row["endings"]]
        assert inst.reference == row["label"]
    first = tasks["hellaswag"].instances(limit=1)[0]
    assert first.prompt == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.requests[3].continuation == " starts pulling up roofing on a roof."


def test_piqa_prompts_are_lm_eval_format(tasks, data_dir):
    rows = jsonl(data_dir, "piqa/valid.jsonl")
    for inst, row in zip(tasks["piqa"].instances(limit=50), rows):
        assert inst.prompt == "Question: " + row["goal"] + "\nAnswer:"
        assert inst.requests == [Loglikelihood(inst.prompt, " " + row["sol1"]), Loglikelihood(inst.prompt, " " + row["sol2"])]
        assert inst.reference == row["label"]


def test_wikitext_scores_lm_eval_detokenized_page_and_counts_on_original(tasks):
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    for inst in tasks["wikitext2"].instances():
        page = inst.doc["page"]
        assert inst.requests == [RollingLoglikelihood(wikitext_detokenizer({"page": page}))]
        assert inst.prompt == inst.requests[0].text
        assert inst.reference == page
        # lm-eval counts words and bytes on the original page: the reference carries exactly that text
        counts = process_results({"page": page}, [0.0])
        assert counts["word_perplexity"][1] == len(re.split(r"\s+", inst.reference))


def test_gsm8k_prompt_stop_strings_and_reference(tasks, data_dir):
    """The stop strings are lm-eval 0.4.13's gsm8k `until`, read from its own task file."""
    import lm_eval

    theirs = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    rows = jsonl(data_dir, "gsm8k/test.jsonl")
    for inst, row in zip(tasks["gsm8k"].instances(limit=30), rows):
        assert inst.prompt == "Question: " + row["question"] + "\nAnswer:"
        assert inst.requests == [Generate(inst.prompt, tuple(theirs["generation_kwargs"]["until"]), 256)]
        assert inst.reference == row["answer"].split("#### ")[-1].replace(",", "")


def test_wmt_sources_and_multiple_references(tasks, data_dir):
    de_en = tasks["wmt21-de-en"].instances()
    src, ref_a, ref_b = (lines(data_dir, f"wmt21_news_text/newstest2021.de-en.{n}.txt") for n in ("src.de", "ref.A.en", "ref.B.en"))
    assert [i.prompt for i in de_en[:5]] == [f"German phrase: {s}\nEnglish phrase:" for s in src[:5]]
    assert [i.reference for i in de_en] == [[a, b] for a, b in zip(ref_a, ref_b)]
    en_de = tasks["wmt21-en-de"].instances(limit=3)
    assert en_de[0].requests[0].stop == ("\n",)
    assert en_de[0].reference[0] == lines(data_dir, "wmt21_news_text/newstest2021.en-de.ref.A.de.txt")[0]
    assert len(en_de[0].reference) == 3


def test_summeval_articles_and_eleven_references(tasks):
    instances = tasks["cnndm-summeval"].instances()
    assert len({i.doc["doc_id"] for i in instances}) == 50
    assert all(len(i.reference) == 11 and i.reference[0] == i.doc["reference"] for i in instances)
    assert instances[0].prompt.endswith(instances[0].doc["source"] + "\n\nSummary:")


def _gsm8k_with_shots(data_dir: Path, num: int, seed: int = 1234) -> Task:
    data = yaml.safe_load((BUILTIN / "gsm8k.yaml").read_text())
    data["fewshot"] = {**data["fewshot"], "num": num, "seed": seed}
    return Task(parse_spec(data, "gsm8k k-shot"), str(data_dir))


def test_fewshot_format_determinism_and_exclusion(data_dir):
    rows = jsonl(data_dir, "gsm8k/test.jsonl")
    task = _gsm8k_with_shots(data_dir, 5)
    first = task.instances(limit=20)
    assert [i.prompt for i in first] == [i.prompt for i in _gsm8k_with_shots(data_dir, 5).instances(limit=20)]  # same seed, same prompts
    assert [i.prompt for i in first[:7]] == [i.prompt for i in task.instances(limit=7)]  # independent of --limit
    assert [i.prompt for i in first] != [i.prompt for i in _gsm8k_with_shots(data_dir, 5, seed=99).instances(limit=20)]
    for inst in first:
        shots = inst.prompt.split("\n\n")
        assert len(shots) == 6 and shots[-1] == "Question: " + inst.doc["question"] + "\nAnswer:"
        # lm-eval's layout: text + target_delimiter + target, joined and followed by "\n\n"
        pool = {"Question: " + r["question"] + "\nAnswer: " + r["answer"] for r in rows}
        examples = inst.prompt[: -len(shots[-1])].rstrip("\n").split("\n\nQuestion: ")
        examples = [examples[0]] + ["Question: " + e for e in examples[1:]]
        assert len(examples) == 5 and all(e in pool for e in examples)
        assert all(inst.doc["question"] not in e for e in examples)  # never its own example


def test_demo_suite_is_embedded_and_small(tasks, monkeypatch):
    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    demo = resolve_tasks(["demo"])  # no data dir: the data ship inside the package
    assert [t.output_type for t in demo] == ["loglikelihood_rolling", "multiple_choice", "generate_until"]
    arith = {t.name: t for t in demo}["demo-arith"].instances()
    assert all(i.requests[0].max_new_tokens <= 32 and i.prompt.count("Question:") == 4 for i in arith)
    choice = {t.name: t for t in demo}["demo-choice"].instances()
    assert all(2 <= len(i.requests) <= 4 and 0 <= i.reference < len(i.requests) for i in choice)


def test_hellaswag_hub_field_map_rebuilds_lm_eval_docs():
    """On hub rows (shape of Rowan/hellaswag), the YAML's field map gives lm-eval's process_docs output."""
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    from evalkit.tasks.loaders import map_hub_row

    row = {
        "ind": 4, "activity_label": "Making a sandwich", "ctx_a": "A person lays two slices of bread on a plate.",
        "ctx_b": "then they", "ctx": "A person lays two slices of bread on a plate. then they",
        "endings": ["[title] spread butter on one slice.", "fold the plate in half.",
                    "[step] pour  soup over the bread.", "throw the bread out the window."],
        "source_id": "made-up", "split": "val", "split_type": "indomain", "label": "0",
    }
    spec = parse_spec(yaml.safe_load((BUILTIN / "hellaswag.yaml").read_text()), "hellaswag.yaml")
    mapped = map_hub_row(spec.dataset.hub, row)
    expected = process_docs(datasets.Dataset.from_list([row]))[0]
    assert mapped["query"] == expected["query"]
    assert mapped["endings"] == expected["choices"]
    assert mapped["label"] == expected["gold"] == 0
