"""Task files: every mistake is one EvalkitError line that names the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evalkit.errors import EvalkitError
from evalkit.tasks import get_task, list_tasks, load_spec, resolve_tasks

pytestmark = pytest.mark.unit


GOOD = {
    "name": "mine",
    "description": "a user task",
    "output_type": "generate_until",
    "dataset": {"path": "./items.jsonl"},
    "doc_to_text": "Q: {{ q }}\nA:",
    "reference": "a",
    "metrics": ["exact_match"],
}


def write_task(tmp_path: Path, data: dict | str, rows: list[dict] | None = None) -> Path:
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows or [{"q": "2+2", "a": "4"}]))
    path = tmp_path / "task.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(path: Path, data_dir: str | None = None) -> str:
    with pytest.raises(EvalkitError) as info:
        get_task(str(path), data_dir).instances()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_good_user_task_runs(tmp_path):
    task = get_task(str(write_task(tmp_path, GOOD)))
    (inst,) = task.instances()
    assert inst.prompt == "Q: 2+2\nA:" and inst.reference == "4"


def test_malformed_yaml(tmp_path):
    path = write_task(tmp_path, "name: x\noutput_type: [generate_until\n")
    message = error_of(path)
    assert str(path) in message and "malformed YAML" in message and "line" in message


def test_missing_field(tmp_path):
    path = write_task(tmp_path, {k: v for k, v in GOOD.items() if k != "metrics"})
    message = error_of(path)
    assert str(path) in message and "'metrics'" in message and "add it" in message


def test_unknown_output_type(tmp_path):
    message = error_of(write_task(tmp_path, {**GOOD, "output_type": "generate"}))
    assert "'output_type'" in message and "generate_until" in message and "multiple_choice" in message


def test_unknown_metric(tmp_path):
    message = error_of(write_task(tmp_path, {**GOOD, "metrics": ["blue"]}))
    assert "unknown metric 'blue'" in message and "evalkit list metrics" in message


def test_metric_that_does_not_fit_multiple_choice(tmp_path):
    data = {**GOOD, "output_type": "multiple_choice", "doc_to_choice": "['4', '5']", "gold": "0", "metrics": ["bleu"]}
    assert "does not apply to multiple_choice" in error_of(write_task(tmp_path, data))


def test_multiple_choice_needs_choices(tmp_path):
    data = {**GOOD, "output_type": "multiple_choice", "metrics": ["acc"]}
    assert "'doc_to_choice'" in error_of(write_task(tmp_path, data))


def test_unknown_field_is_named(tmp_path):
    message = error_of(write_task(tmp_path, {**GOOD, "doc_to_txt": "x"}))
    assert "unknown field 'doc_to_txt'" in message and "doc_to_text" in message


def test_template_syntax_and_undefined_field(tmp_path):
    assert "template syntax error" in error_of(write_task(tmp_path, {**GOOD, "doc_to_text": "{{ q "}))
    message = error_of(write_task(tmp_path, {**GOOD, "doc_to_text": "{{ question }}"}))
    assert "'question' is undefined" in message and "doc_to_text" in message and "['a', 'q']" in message


def test_bad_filter_pattern(tmp_path):
    message = error_of(write_task(tmp_path, {**GOOD, "filter": [{"regex": {"pattern": "("}}]}))
    assert "bad filter step" in message


def test_missing_data_file_names_file_task_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    path = write_task(tmp_path, {**GOOD, "dataset": {"path": "mine/items.jsonl"}})
    with pytest.raises(EvalkitError) as info:
        get_task(str(path))  # fails at lookup, before any model would load
    message = str(info.value)
    assert "'mine'" in message and "mine/items.jsonl" in message and "data_dir=DIR" in message and "EVALKIT_DATA" in message
    message = error_of(path, data_dir=str(tmp_path / "elsewhere"))
    assert str(tmp_path / "elsewhere") in message


def test_missing_builtin_data_names_hub_dataset(monkeypatch, tmp_path):
    """Without the file the hub is tried; offline (as here, set explicitly so the test does not wait on retries) both fail in one line."""
    import datasets
    import huggingface_hub

    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EvalkitError) as info:
        get_task("hellaswag", str(tmp_path)).instances(limit=1)  # no network here: the hub attempt fails too
    message = str(info.value)
    assert "hellaswag/hellaswag_val.rows_0000-1999.jsonl" in message and "Rowan/hellaswag" in message
    assert "data_dir=DIR" in message and "\n" not in message


def test_wmt_without_data_fails_at_lookup(monkeypatch, tmp_path):
    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    with pytest.raises(EvalkitError, match=r"wmt21_news_text/newstest2021\.de-en\.src\.de\.txt.*data_dir=DIR"):
        get_task("wmt21-de-en", str(tmp_path))


def test_unknown_task_name():
    with pytest.raises(EvalkitError, match=r"unknown task 'hellaswog'.*evalkit list tasks"):
        get_task("hellaswog")


def test_nonexistent_yaml_path(tmp_path):
    with pytest.raises(EvalkitError, match="not found"):
        get_task(str(tmp_path / "nope.yaml"))


def test_registry_lists_builtins_and_expands_suites(monkeypatch):
    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    names = dict(list_tasks())
    for name in ("wikitext2", "hellaswag", "piqa", "gsm8k", "wmt21-de-en", "wmt21-en-de", "cnndm-summeval", "demo", "demo-lm"):
        assert names.get(name)
    assert [t.name for t in resolve_tasks(["demo", "demo-lm"])] == ["demo-lm", "demo-choice", "demo-arith"]
    with pytest.raises(EvalkitError, match="suite"):
        get_task("demo")


def test_every_builtin_file_validates():
    for path in sorted((Path(__file__).resolve().parents[1] / "evalkit" / "tasks" / "builtin").glob("*.yaml")):
        if "suite" not in yaml.safe_load(path.read_text()):
            assert load_spec(path).name == path.stem
