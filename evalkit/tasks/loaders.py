"""Reading a task's documents: local files (jsonl, csv, parquet, txt), Hugging Face ``datasets``, the hub.

Local files are found through the data dir (``--data-dir`` / ``EVALKIT_DATA``),
so the same task file runs on a laptop with a copy of the data and on a
machine with the hub. A document is a plain ``dict`` of fields; templates
read those fields.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, check_utf8, not_utf8
from evalkit.hub import hub_reachable
from evalkit.tasks.spec import DatasetSpec, HubSpec, TaskSpec
from evalkit.tasks.templates import evaluate

DATA_ENV = "EVALKIT_DATA"

# " = Title = " with a single "=" on each side starts a WikiText article; " = = Section = = " does not.
_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data dir: the argument if given, else ``$EVALKIT_DATA``, else none."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else None


def resolve_path(relative: str, data_dir: Path | None, task_dir: Path | None) -> Path | None:
    """Absolute paths stay; ``./x`` is next to the task file; anything else is under the data dir."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    if relative.startswith("./") and task_dir is not None:
        return task_dir / path
    return data_dir / path if data_dir is not None else None


def split_wikitext_articles(text: str, field: str = "page") -> list[dict]:
    """Split WikiText raw text into articles at the one-``=`` headings, each line keeping its ``\\n``."""
    docs: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _WIKITEXT_ARTICLE.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line)
    return [{field: "".join(lines)} for lines in docs]


def _read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is reported with the file, the line and the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_jsonl(path: Path) -> list[dict]:
    docs = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise EvalkitError(f"{path}: line {number} is not valid JSON ({err.msg}); fix the file") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    return docs


def read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(_read_utf8(path))
    except json.JSONDecodeError as err:
        raise EvalkitError(f"{path}: not valid JSON ({err.msg}); fix the file or use .jsonl") from None
    if not isinstance(data, list):
        raise EvalkitError(f"{path}: a .json data file must hold a list of objects")
    return data


def read_csv(path: Path) -> list[dict]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def read_txt(path: Path, documents: str = "lines", field: str = "text") -> list[dict]:
    """One document per non-empty line, or WikiText articles (``documents="wikitext_articles"``)."""
    text = _read_utf8(path)
    if documents == "wikitext_articles":
        return split_wikitext_articles(text, field)
    return [{field: line} for line in text.splitlines() if line.strip()]


_READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}
_DATASETS_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}


def file_format(path: Path, declared: str | None) -> str:
    fmt = declared or path.suffix.lstrip(".").lower()
    if fmt not in _DATASETS_BUILDERS:
        raise EvalkitError(f"{path}: unknown data format {fmt!r}; use jsonl, json, csv, parquet or txt (or set dataset.format)")
    return fmt


def read_with_datasets(path: Path, fmt: str) -> list[dict]:
    """Local files through Hugging Face ``datasets`` (its json/csv/parquet/text builders)."""
    import datasets

    if fmt != "parquet":
        check_utf8(path)  # datasets would report a bad byte as a generic generation error
    try:
        return list(datasets.load_dataset(_DATASETS_BUILDERS[fmt], data_files=str(path), split="train"))
    except Exception as err:  # datasets raises many types; the user needs the file and the reason
        raise EvalkitError(f"{path}: datasets could not read it as {fmt} ({type(err).__name__}: {err}); fix the file") from None


def read_file(path: Path, dataset: DatasetSpec) -> list[dict]:
    fmt = file_format(path, dataset.format)
    if dataset.loader == "datasets":
        return read_with_datasets(path, fmt)
    if fmt == "txt":
        return read_txt(path, dataset.txt_documents, dataset.text_field)
    return _READERS[fmt](path)


def read_columns(paths: dict[str, Path]) -> list[dict]:
    """Line-aligned text files as fields: line i of every file is document i (WMT src/ref files)."""
    columns = {name: _read_utf8(path).split("\n") for name, path in paths.items()}
    for lines in columns.values():
        if lines and lines[-1] == "":
            lines.pop()
    lengths = {name: len(lines) for name, lines in columns.items()}
    if len(set(lengths.values())) > 1:
        raise EvalkitError(f"dataset.columns files are not line-aligned ({lengths}); every file needs the same number of lines")
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


def load_hub(hub: HubSpec, split: str | None = None) -> list[dict]:
    """Rows of a hub dataset split, mapped through ``hub.fields`` onto the task's field names."""
    import datasets

    rows = datasets.load_dataset(hub.path, hub.name, split=split or hub.split)
    return [map_hub_row(hub, row) for row in rows]


def map_hub_row(hub: HubSpec, row: dict) -> dict:
    """One hub row with the task's fields added (``hub.fields`` expressions over the row)."""
    where = f"hub dataset {hub.path}: field map"
    return {**row, **{k: evaluate(e, row, f"{where} {k!r}") for k, e in hub.fields.items()}}


class DataSource:
    """Resolves one task's data files against the data dir and loads them, with actionable errors."""

    def __init__(self, spec: TaskSpec, data_dir: str | os.PathLike | None = None):
        self.spec = spec
        self.data_dir = resolve_data_dir(data_dir)
        self.task_dir = spec.source_file.parent if spec.source_file else None
        self.from_hub = False  # set by documents(): where the evaluated documents came from

    def _local_paths(self) -> dict[str, tuple[str, Path | None]]:
        ds = self.spec.dataset
        named = {"path": ds.path} if ds.path else dict(ds.columns)
        return {key: (rel, resolve_path(rel, self.data_dir, self.task_dir)) for key, rel in named.items()}

    def missing(self) -> list[str]:
        """Relative names of the local files that are not there."""
        return [rel for rel, path in self._local_paths().values() if path is None or not path.is_file()]

    def _missing_error(self, missing: str, hub_failure: str = "") -> EvalkitError:
        ds = self.spec.dataset
        where = f"in {self.data_dir}" if self.data_dir else "(no data dir given)"
        fix = f"pass data_dir=DIR or set {DATA_ENV} to the folder that holds {missing}"
        if ds.hub:
            fix += f", or run with network access so the hub dataset {ds.hub.path} is used"
        if ds.homepage:
            fix += f" (public source: {ds.homepage})"
        return EvalkitError(f"task {self.spec.name!r}: data file {missing} not found {where}{hub_failure}; fix: {fix}")

    def check(self) -> None:
        """Fail now, before any model loads, when the data cannot possibly be found or is not UTF-8 text."""
        missing = self.missing()
        if missing and not self.spec.dataset.hub:
            raise self._missing_error(missing[0])
        if not missing:
            for _, path in self._local_paths().values():
                if "parquet" not in (self.spec.dataset.format, path.suffix.lower().lstrip(".")):
                    check_utf8(path)  # a few ms per MB; a bad byte found after the model loaded would waste the load

    def documents(self) -> list[dict]:
        ds = self.spec.dataset
        missing = self.missing()
        if ds.path or ds.columns:
            if not missing:
                paths = {key: path for key, (_, path) in self._local_paths().items()}
                docs = read_file(paths["path"], ds) if ds.path else read_columns(paths)
                return dedupe(docs, ds.dedupe_by)
            if not ds.hub:
                raise self._missing_error(missing[0])
        docs = dedupe(self._hub(ds.hub, None, missing), ds.dedupe_by)
        self.from_hub = True
        return docs

    def fewshot_documents(self) -> list[dict] | None:
        """The few-shot pool when the task names one, else None (draw from the evaluated documents).

        ``hub_split`` applies only when the documents themselves came from the hub: a run on
        local files never reaches for the network just for examples.
        """
        fs, ds = self.spec.fewshot, self.spec.dataset
        if fs.path:
            path = resolve_path(fs.path, self.data_dir, self.task_dir)
            if path is None or not path.is_file():
                raise self._missing_error(fs.path)
            return read_file(path, ds)
        if fs.hub_split and ds.hub and self.from_hub:
            return self._hub(ds.hub, fs.hub_split, [])
        return None

    def _hub(self, hub: HubSpec, split: str | None, missing: list[str]) -> list[dict]:
        if missing and (self.data_dir is not None or not hub_reachable()):
            # A data dir the user named is where they want the data from; an unreachable hub would only retry.
            raise self._missing_error(missing[0])
        try:
            return load_hub(hub, split)
        except EvalkitError:
            raise
        except Exception as err:  # offline, unknown id, auth: all end the same way for the user
            if missing:
                raise self._missing_error(missing[0], f" and the hub dataset {hub.path} could not be loaded ({type(err).__name__})") from None
            raise EvalkitError(
                f"task {self.spec.name!r}: hub dataset {hub.path} split {split or hub.split} could not be loaded "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); fix: check network access and the dataset id"
            ) from None


def dedupe(docs: list[dict], key: str | None) -> list[dict]:
    """Keep the first document for each value of ``key`` (SummEval has 16 rows per article)."""
    if key is None:
        return docs
    seen: set[Any] = set()
    kept = []
    for doc in docs:
        if key not in doc:
            raise EvalkitError(f"dataset.dedupe_by names {key!r}, which the documents lack; their fields are {sorted(doc)}")
        if doc[key] not in seen:
            seen.add(doc[key])
            kept.append(doc)
    return kept
