"""The grid: every task under every decoding strategy, one model at a time.

Data flows one way: task -> instances (requests) -> model -> responses ->
task.score -> CellResult. The runner adds what a long evaluation needs around
that flow: batching in chunks, the response cache (so a killed run resumes),
sharding across torch.distributed ranks (see :mod:`evalkit.distributed`),
progress reporting, and cost accounting from the responses' timings.
"""

from __future__ import annotations

import resource
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from evalkit.cache import ResponseCache, response_key
from evalkit.decoding.config import DecodingConfig
from evalkit.distributed import SINGLE, Ranks, broadcast, gather
from evalkit.metrics.base import MetricResult
from evalkit.metrics.diversity import diversity_metrics
from evalkit.models.base import LanguageModel
from evalkit.requests import Generate, Loglikelihood, Request, Response, RollingLoglikelihood
from evalkit.results import CellResult, Efficiency

SCORING_LABEL = "loglikelihood"  # the results key of tasks that score text instead of generating it


class Progress(Protocol):
    """What the runner reports to; the CLI passes a rich-backed one, evaluate() a silent one."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, amount: float) -> None: ...

    def finish(self) -> None: ...


class SilentProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: float) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class GridSettings:
    limit: int | None = None
    batch_size: int = 8
    bootstrap: int = 1000
    seed: int = 0


def decoding_label(config: DecodingConfig) -> str:
    return getattr(config, "label", None) or config.name


def run_grid(
    model: LanguageModel,
    tasks: Sequence,
    decodings: Sequence[DecodingConfig],
    settings: GridSettings,
    *,
    cache: ResponseCache | None = None,
    model_id: str | None = None,
    progress: Progress | None = None,
    ranks: Ranks = SINGLE,
) -> dict[str, dict[str, CellResult]]:
    """Run every task (under every decoding for generation tasks) and score it.

    With several ``ranks`` each rank answers its share of the requests; rank 0
    alone scores, so the other ranks return cells without results.
    """
    progress = progress or SilentProgress()
    cells: dict[str, dict[str, CellResult]] = {}
    for task in tasks:
        instances = task_instances(task, settings.limit)
        generating = task.output_type == "generate_until"
        strategies: list[DecodingConfig | None] = list(decodings) if generating else [None]
        cells[task.name] = {}
        for decoding in strategies:
            label = decoding_label(decoding) if decoding is not None else SCORING_LABEL
            progress.start(f"{task.name} [{label}]", total=len(instances))
            responses, efficiency = _respond(
                model, instances, decoding, settings, cache, model_id, progress.advance, ranks
            )
            progress.finish()
            if responses is None:  # not rank 0: its answers went to rank 0
                continue
            scored = task.score(instances, responses, bootstrap=settings.bootstrap, seed=settings.seed)
            metrics = dict(scored.metrics)
            if generating:
                metrics.update(_diversity(responses))
            cells[task.name][label] = CellResult(
                metrics=metrics,
                samples=scored.samples,
                decoding=decoding.to_dict() if decoding is not None else None,
                efficiency=efficiency,
                n_items=len(instances),
            )
    return cells


def _diversity(responses: list[list[Response]]) -> dict[str, MetricResult]:
    """Diversity and degeneration of a strategy's outputs (and of each request's n-best, when there is one)."""
    outputs = [r[0].text for r in responses]
    groups = [[r[0].text] + [a.text for a in r[0].alternatives] for r in responses]
    if not any(text.strip() for text in outputs):
        return {}
    return {m.name: m for m in diversity_metrics(outputs, groups)}


# Instances are pure functions of (task, limit); a training loop evaluating every N steps builds them once.
# Weak keys: the memo lives exactly as long as the caller keeps the Task.
_INSTANCES: "weakref.WeakKeyDictionary[object, dict[int | None, list]]" = weakref.WeakKeyDictionary()


def task_instances(task, limit: int | None) -> list:
    """``task.instances(limit)``, built once per task object and limit."""
    by_limit = _INSTANCES.setdefault(task, {})
    if limit not in by_limit:
        by_limit[limit] = task.instances(limit=limit)
    return by_limit[limit]


def _respond(
    model: LanguageModel,
    instances: Sequence,
    decoding: DecodingConfig | None,
    settings: GridSettings,
    cache: ResponseCache | None,
    model_id: str | None,
    advance: Callable[[float], None],
    ranks: Ranks = SINGLE,
) -> tuple[list[list[Response]] | None, Efficiency]:
    """Answer every request of every instance, from the cache where possible, in chunks that are cached as they finish.

    Sharding happens after the cache lookup: rank 0 reads the cache and
    broadcasts the indices still to compute, and rank r computes chunks r,
    r + size, ... of them (the chunks a single process would form), writing
    each to the cache as it finishes. Rank 0 gathers the rest (and caches
    it too); the other ranks return ``None`` for the responses.
    """
    flat: list[Request] = [request for instance in instances for request in instance.requests]
    per_instance = len(flat) / max(len(instances), 1)
    keys = [response_key(model_id, r, decoding) for r in flat] if cache is not None and model_id else None
    answers: dict[int, Response] = {}
    if keys is not None and ranks.is_main:
        found = cache.get_many(keys)
        answers = {i: found[k] for i, k in enumerate(keys) if k in found}
        advance(len(answers) / per_instance if per_instance else 0)
    cached = len(answers)
    todo = broadcast([i for i in range(len(flat)) if i not in answers], ranks)
    chunk_size = max(settings.batch_size * 4, 32)
    chunks = [todo[start : start + chunk_size] for start in range(0, len(todo), chunk_size)]
    mine: dict[int, Response] = {}
    started = time.perf_counter()
    for chunk in chunks[ranks.rank :: ranks.size]:
        outputs = _call(model, [flat[i] for i in chunk], decoding)
        fresh = dict(zip(chunk, outputs))
        mine.update(fresh)
        if keys is not None:
            cache.put_many({keys[i]: r for i, r in fresh.items()})
        advance(len(chunk) / per_instance)
    parts = gather(mine, ranks)
    if parts is None:
        return None, Efficiency(requests=len(flat))
    for rank, part in enumerate(parts):
        answers.update(part)
        if rank != ranks.rank and part:
            advance(len(part) / per_instance)
            if keys is not None:  # rank 0's cache ends up complete even when each node caches on its own disk
                cache.put_many({keys[i]: r for i, r in part.items()})
    efficiency = Efficiency.from_responses(  # cost is what this run spent; cached answers cost nothing now
        (answers[i] for i in todo),
        wall_s=time.perf_counter() - started,
        requests=len(flat),
        cached=cached,
        peak_memory_mb=_peak_memory_mb(),
    )
    grouped: list[list[Response]] = []
    position = 0
    for instance in instances:
        grouped.append([answers[position + j] for j in range(len(instance.requests))])
        position += len(instance.requests)
    return grouped, efficiency


def _call(model: LanguageModel, requests: list[Request], decoding: DecodingConfig | None) -> list[Response]:
    kinds = {type(r) for r in requests}
    if len(kinds) != 1:  # tasks build one kind of request; keep the order if one ever mixes them
        return [out for r in requests for out in _call(model, [r], decoding)]
    kind = kinds.pop()
    if kind is Loglikelihood:
        return model.loglikelihood(requests)
    if kind is RollingLoglikelihood:
        return model.loglikelihood_rolling(requests)
    if kind is Generate:
        return model.generate(requests, decoding or DecodingConfig())
    raise TypeError(f"unknown request kind {kind.__name__}")


def _peak_memory_mb() -> float | None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
