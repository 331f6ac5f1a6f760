"""Loaders: jsonl, csv, parquet, txt and Hugging Face `datasets` on local files give the same documents."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from evalkit.errors import EvalkitError
from evalkit.tasks import get_task
from evalkit.tasks.loaders import read_columns, read_txt, split_wikitext_articles

pytestmark = pytest.mark.unit

ROWS = [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(7)]


def write_rows(folder: Path) -> dict[str, Path]:
    paths = {fmt: folder / f"items.{fmt}" for fmt in ("jsonl", "csv", "parquet", "json")}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    paths["json"].write_text(json.dumps(ROWS))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["q", "a"])
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    return paths


def task_on(tmp_path: Path, dataset: dict, name: str = "t"):
    spec = {"name": name, "output_type": "generate_until", "dataset": dataset,
            "doc_to_text": "{{ q }}", "reference": "a", "metrics": ["exact_match"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return get_task(str(path), data_dir=str(tmp_path))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_native_readers_agree(tmp_path, fmt):
    write_rows(tmp_path)
    assert task_on(tmp_path, {"path": f"items.{fmt}"}).docs == ROWS


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_datasets_loader_on_local_files(tmp_path, fmt):
    write_rows(tmp_path)
    docs = task_on(tmp_path, {"path": f"items.{fmt}", "loader": "datasets"}).docs
    if fmt == "csv":  # datasets infers column types from CSV text ("4" -> 4); evalkit's own reader keeps text
        docs = [{k: str(v) for k, v in d.items()} for d in docs]
    assert docs == ROWS


def test_txt_lines_native_and_datasets(tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\nsecond line\n")
    native = task_on(tmp_path, {"path": "lines.txt", "text_field": "q"}, "native").docs
    assert native == [{"q": "first line"}, {"q": "second line"}]
    via_datasets = task_on(tmp_path, {"path": "lines.txt", "loader": "datasets"}, "hf").docs
    assert [d["text"] for d in via_datasets if d["text"]] == ["first line", "second line"]


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_rows(tmp_path)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "name": "t", "output_type": "generate_until", "dataset": {"path": "items.jsonl"},
        "doc_to_text": "{{ q }}", "reference": "a", "metrics": ["exact_match"]}))
    monkeypatch.setenv("EVALKIT_DATA", str(tmp_path))
    assert len(get_task(str(tmp_path / "t.yaml")).docs) == len(ROWS)


def test_bad_jsonl_line_is_named(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"q": "x", "a": "1"}\n{broken\n')
    with pytest.raises(EvalkitError, match="line 2 is not valid JSON"):
        _ = task_on(tmp_path, {"path": "items.jsonl"}).docs


def test_columns_must_be_aligned(tmp_path):
    (tmp_path / "src.txt").write_text("a\nb\n")
    (tmp_path / "ref.txt").write_text("x\n")
    with pytest.raises(EvalkitError, match="not line-aligned"):
        read_columns({"source": tmp_path / "src.txt", "ref": tmp_path / "ref.txt"})


def test_wikitext_split_into_62_articles(data_dir):
    path = data_dir / "wikitext2_raw" / "wiki.test.raw.txt"
    text = path.read_text(encoding="utf-8")
    docs = read_txt(path, "wikitext_articles", "page")
    assert len(docs) == 62
    assert "".join(d["page"] for d in docs) == text  # nothing lost, nothing added
    assert all(re.match(r"^ = [^=].* = \n", d["page"]) for d in docs)
    assert docs[0]["page"].startswith(" = Robert Boulter = \n Robert Boulter is an English film")
    assert sum(len(d["page"].split()) for d in docs) == 241_211  # SOURCE.md's whitespace token count
    # section headings stay inside their article
    assert " = = Career = = \n" in docs[0]["page"]
    assert split_wikitext_articles(" = A = \n x \n = = B = = \n y \n = C = \n z \n") == [
        {"page": " = A = \n x \n = = B = = \n y \n"}, {"page": " = C = \n z \n"}]


def test_dedupe_keeps_first_row_per_key(data_dir):
    task = get_task("cnndm-summeval", str(data_dir))
    rows = [json.loads(line) for line in (data_dir / "summeval" / "summeval_expert.docs_000-049.jsonl").open()]
    firsts = {}
    for row in rows:
        firsts.setdefault(row["doc_id"], row)
    assert task.docs == list(firsts.values())
