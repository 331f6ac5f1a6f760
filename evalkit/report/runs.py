"""Reading run folders written by `evalkit run` back into memory for the report.

A run folder holds ``results.json`` and ``samples/<task>__<decoding>.jsonl``
(see :mod:`evalkit.results`); a folder written by `evalkit score` has the same
results.json schema and no samples, its systems in place of decodings. The
report accepts either run folders or a parent folder of run folders
(``evalkit report runs/``), so a whole grid of runs can be published with one
argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.results import RESULTS_FILE, ResultsRecord, safe_filename


@dataclass
class Run:
    """One results.json and its per-sample records, keyed by (task, decoding label)."""

    path: Path
    name: str
    model: str
    backend: str
    results: dict[str, dict[str, dict[str, Any]]]
    n_items: dict[str, int]
    signatures: dict[str, dict[str, str]]
    efficiency: dict[str, dict[str, dict[str, Any]]]
    decoding: dict[str, Any]
    meta: dict[str, Any]
    command: str = "run"
    samples: dict[tuple[str, str], list[dict]] = field(default_factory=dict)

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [(task, label) for task, by_label in self.results.items() for label in by_label]

    @property
    def prompt(self) -> dict[str, Any]:
        """How the run built its prompts (``meta.prompt``); a run from before chat templates existed was plain."""
        prompt = self.meta.get("prompt")
        return prompt if isinstance(prompt, dict) else {}

    @property
    def prompt_key(self) -> tuple:
        """What makes two runs' prompts differ: runs of one model and backend share rows only when it is equal."""
        p = self.prompt
        chat = bool(p.get("chat_template"))
        return (chat, p.get("chat_template_source") if chat else None, p.get("chat_template_sha256") if chat else None,
                p.get("system_instruction") or None, bool(p.get("fewshot_as_multiturn")))  # "" adds no system turn

    @property
    def prompt_label(self) -> str:
        """The prompt format in a few words, e.g. ``chat template (tokenizer, sha256 872be49d…) · system: "Be brief."``."""
        chat, source, sha, system, multiturn = self.prompt_key
        if chat:
            source = str(source or "source unknown")
            if source.startswith("file:"):  # the file's name here; the metadata section has the whole path
                source = "file:" + Path(source[len("file:"):]).name
            parts = [f"chat template ({source}{f', sha256 {str(sha)[:8]}…' if sha else ''})"]
        else:
            parts = ["plain prompt"]
        if system is not None:
            text = " ".join(str(system).split())
            parts.append(f'system: "{text[:60]}{"…" if len(text) > 60 else ""}"')
        if multiturn:
            parts.append("few-shot as multi-turn")
        return " · ".join(parts)


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders as given, or the run folders one level inside a parent folder, in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / RESULTS_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            children = sorted(p for p in path.iterdir() if (p / RESULTS_FILE).is_file())
            if not children:
                raise EvalkitError(f"{path} holds no {RESULTS_FILE} (nor do its subfolders): pass a folder written by `evalkit run`")
            found.extend(children)
        else:
            raise EvalkitError(f"run folder {path} does not exist: pass folders written by `evalkit run --output DIR`")
    if not found:
        raise EvalkitError("no run folders given: pass at least one folder written by `evalkit run`")
    return found


def load_run(path: Path, name: str | None = None) -> Run:
    record = ResultsRecord.read(path / RESULTS_FILE)
    run = Run(
        path=path,
        name=name or path.name,
        model="?" if record.model is None else record.model,
        backend="?" if record.backend is None else record.backend,
        results=record.results,
        n_items=record.n_items,
        signatures=record.signatures,
        efficiency=record.sections.get("efficiency") or {},
        decoding=record.sections.get("decoding") or {},
        meta=record.meta,
        command=record.command,
    )
    for task, label in run.cells:
        run.samples[(task, label)] = _read_samples(path / "samples" / f"{safe_filename(task)}__{safe_filename(label)}.jsonl")
    return run


def load_runs(paths: list[Path]) -> list[Run]:
    """Load every run; folders that share a name get their parent's name prefixed so rows stay distinguishable."""
    dirs = expand_run_dirs(paths)
    names = [d.name for d in dirs]
    return [
        load_run(d, f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name)
        for d in dirs
    ]


def _read_samples(path: Path) -> list[dict]:
    """Per-sample records; a missing file means the run kept no samples for that cell (the report says so)."""
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvalkitError(f"{path} line {number} is not valid JSON ({error.msg}): rerun `evalkit run`") from None
            if isinstance(record, dict):
                records.append(record)
    return records
