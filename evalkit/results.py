"""What evalkit writes: results.json (one schema, :class:`ResultsRecord`, for `evalkit run` and `evalkit score`)
and a run's per-sample JSONL files.

Everything is written atomically (temporary file + rename), so a run killed
while writing never leaves a half-written result file behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, not_utf8
from evalkit.metrics.base import MetricResult, flat_values
from evalkit.requests import Response, Timing

RESULTS_FILE = "results.json"
TRACKED_PACKAGES = ("evalkit", "torch", "transformers", "sacrebleu", "rouge-score", "bert-score", "unbabel-comet", "lm-eval")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# Timing's fields that depend on this run: summed over the requests it computed (cached answers cost no time now).
MEASURED_FIELDS = ("prefill_s", "decode_s", "prompt_tokens", "generated_tokens")
# The rest of Timing, deterministic counts: summed over every response of the cell that carries them.
COUNT_FIELDS = tuple(f.name for f in fields(Timing) if f.name not in MEASURED_FIELDS)


@dataclass
class Efficiency(Timing):
    """Cost of one (task, decoding) cell: :class:`evalkit.requests.Timing`'s fields summed over the cell, and a few more.

    Two kinds of figures:

    * Wall clock, summed over the requests this run computed (cached answers
      cost no time now): ``wall_s`` and ``MEASURED_FIELDS`` (``prefill_s``,
      ``decode_s``, ``prompt_tokens``, ``generated_tokens``). ``tokens_per_s``
      is end-to-end throughput (generated tokens over prefill + decode
      seconds); ``decode_tokens_per_s`` leaves the prefill out. Both change
      with the machine and its load.
    * Deterministic counts, ``COUNT_FIELDS`` (``forwards``, ``forward_tokens``,
      ``draft_forwards``, ``draft_tokens``, ``drafted``, ``accepted`` and
      ``cost``, forward-equivalents: target forwards plus draft forwards
      scaled by the draft/target parameter ratio), summed over every response
      of the cell, cached ones included, since they do not depend on the
      machine or on what the cache held. Only responses that carry counts are
      summed (``forwards > 0``; an HTTP API backend, or a cache entry written
      before the counts existed, has none): ``counted_requests`` of them, with
      ``counted_generated_tokens`` generated tokens.

    Derived from the counts (``to_dict``; None where there is nothing to divide):

    * ``cost_per_token``: ``cost / counted_generated_tokens``, forward-equivalents
      per generated token; lower is better. 1.0 for plain greedy decoding,
      about ``num_beams`` for beam search, below 1 when drafts are accepted.
    * ``tokens_per_forward``: ``counted_generated_tokens / forwards``, the mean
      number of tokens each target forward pass yields (1.0 for plain greedy,
      above 1 with accepted drafts, about ``1 / num_beams`` for beam search).
    * ``acceptance_rate``: ``accepted / drafted``, the share of drafted tokens
      the target accepted (None when nothing was drafted).
    """

    wall_s: float = 0.0
    requests: int = 0
    cached: int = 0
    peak_memory_mb: float | None = None
    counted_requests: int = 0
    counted_generated_tokens: int = 0

    @classmethod
    def from_responses(
        cls, responses: Iterable[Response], all_responses: Iterable[Response] | None = None, **extra: Any
    ) -> Efficiency:
        """Wall-clock figures from ``responses`` (those this run computed); counts from ``all_responses``
        (every response of the cell, cached ones included), or from ``responses`` when it is not given."""
        responses = list(responses)
        counted = [r for r in (responses if all_responses is None else all_responses) if r.timing.forwards > 0]
        out = cls(**extra)
        out._add(responses, MEASURED_FIELDS)
        out._add(counted, COUNT_FIELDS)  # no counts recorded: an HTTP backend, or a cache entry from before them
        out.counted_requests = len(counted)
        out.counted_generated_tokens = sum(r.timing.generated_tokens for r in counted)
        return out

    def _add(self, responses: list[Response], names: tuple[str, ...]) -> None:
        for response in responses:
            for name in names:
                setattr(self, name, getattr(self, name) + getattr(response.timing, name))

    @property
    def tokens_per_s(self) -> float | None:
        seconds = self.prefill_s + self.decode_s
        return self.generated_tokens / seconds if seconds > 0 and self.generated_tokens else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 and self.generated_tokens else None

    @property
    def cost_per_token(self) -> float | None:
        return self.cost / self.counted_generated_tokens if self.cost > 0 and self.counted_generated_tokens else None

    @property
    def tokens_per_forward(self) -> float | None:
        return self.counted_generated_tokens / self.forwards if self.forwards > 0 and self.counted_generated_tokens else None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted > 0 else None

    def to_dict(self) -> dict:
        return {
            **self.__dict__,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "cost_per_token": self.cost_per_token,
            "tokens_per_forward": self.tokens_per_forward,
            "acceptance_rate": self.acceptance_rate,
        }


@dataclass
class CellResult:
    """Scores of one task under one decoding strategy."""

    metrics: dict[str, MetricResult]
    samples: list[dict]
    decoding: dict | None
    efficiency: Efficiency
    n_items: int


@dataclass
class ResultsRecord:
    """results.json: the one schema every command that scores writes (``command``: "run" or "score").

    ``results`` is ``{task: {decoding: {metric: value, metric_ci: [low, high]}}}``
    for a run and ``{dataset: {system: {...}}}`` for `evalkit score`: two
    levels of names, then one flat cell per (task or dataset, decoding or
    system). ``n_items`` and ``signatures`` are keyed by the first level;
    ``model`` and ``backend`` name what generated the outputs (None for
    `score`, which scores given outputs). ``sections`` are the command's own
    blocks, written between the common ones and ``meta``: a run's
    ``efficiency`` and ``decoding``, score's ``ranking``, ``pairwise``,
    ``paired_test`` and ``higher_is_better``.
    """

    command: str
    results: dict[str, dict[str, dict[str, Any]]]
    n_items: dict[str, int]
    signatures: dict[str, dict[str, str]]
    meta: dict[str, Any]
    model: str | None = None
    backend: str | None = None
    sections: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metrics(
        cls, command: str, metrics: Mapping[str, Mapping[str, Mapping[str, MetricResult]]], n_items: dict[str, int],
        meta: dict[str, Any], *, model: str | None = None, backend: str | None = None, sections: dict[str, Any] | None = None,
    ) -> ResultsRecord:
        """The record of scored cells ``{task: {decoding: {metric: MetricResult}}}``: flat values and one signature per metric."""
        results = {task: {label: flat_values(cell) for label, cell in by_label.items()} for task, by_label in metrics.items()}
        signatures: dict[str, dict[str, str]] = {}
        for task, by_label in metrics.items():
            for cell in by_label.values():
                for name, result in cell.items():
                    signatures.setdefault(task, {})[name] = result.signature
        return cls(command, results, n_items, signatures, meta, model, backend, sections or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "model": self.model,
            "backend": self.backend,
            "results": self.results,
            "n_items": self.n_items,
            "signatures": self.signatures,
            **self.sections,
            "meta": self.meta,
        }

    def write(self, output_dir: Path) -> Path:
        """``output_dir``/results.json."""
        path = Path(output_dir) / RESULTS_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=_json_default) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> ResultsRecord:
        """A results.json back; files from before ``command`` existed were written by `evalkit run`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise EvalkitError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): rerun the evalkit command that wrote it") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except OSError as error:
            raise EvalkitError(f"cannot read {path}: {error.strerror}; check the path") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise EvalkitError(f"{path} has no 'results' object: it was not written by `evalkit run` or `evalkit score`")
        common = ("command", "model", "backend", "results", "n_items", "signatures", "meta")
        return cls(
            command=str(data.get("command") or "run"),
            results=data["results"],
            n_items=data.get("n_items") or {},
            signatures=data.get("signatures") or {},
            meta=data.get("meta") or {},
            model=None if data.get("model") is None else str(data["model"]),
            backend=None if data.get("backend") is None else str(data["backend"]),
            sections={key: value for key, value in data.items() if key not in common},
        )


@dataclass
class RunResult:
    """What `evalkit run` scored: every (task, decoding) cell, with its samples, efficiency and decoding config."""

    model: str
    backend: str
    cells: dict[str, dict[str, CellResult]] = field(default_factory=dict)  # task -> decoding label -> cell
    meta: dict[str, Any] = field(default_factory=dict)

    def record(self) -> ResultsRecord:
        """results.json's record; per-cell efficiency and the full decoding configs go in the run's own sections."""
        n_items = {task: cell.n_items for task, by_label in self.cells.items() for cell in by_label.values()}
        efficiency = {task: {label: cell.efficiency.to_dict() for label, cell in by_label.items()} for task, by_label in self.cells.items()}
        decodings = {label: cell.decoding for by_label in self.cells.values() for label, cell in by_label.items()}
        metrics = {task: {label: cell.metrics for label, cell in by_label.items()} for task, by_label in self.cells.items()}
        return ResultsRecord.from_metrics(
            "run", metrics, n_items, self.meta, model=self.model, backend=self.backend,
            sections={"efficiency": efficiency, "decoding": decodings},
        )

    def to_dict(self) -> dict:
        """The results.json structure (see :class:`ResultsRecord`)."""
        return self.record().to_dict()

    def write(self, output_dir: Path) -> Path:
        """Write results.json and samples/<task>__<decoding>.jsonl under ``output_dir``."""
        output_dir = Path(output_dir)
        for task, by_decoding in self.cells.items():
            for label, cell in by_decoding.items():
                write_jsonl(output_dir / "samples" / f"{safe_filename(task)}__{safe_filename(label)}.jsonl", cell.samples)
        return self.record().write(output_dir)


def safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_hash() -> str | None:
    """The commit of the evalkit checkout, when evalkit runs from one (editable installs)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_metadata(config: dict[str, Any], device: str) -> dict[str, Any]:
    """Versions, code revision, hardware and settings: what is needed to reproduce a number."""
    import torch

    hardware = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
    return {
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "git_hash": git_hash(),
        "hardware": hardware,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "seed": config.get("seed"),
    }
