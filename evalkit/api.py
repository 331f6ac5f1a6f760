"""evaluate(): the one public entry. The CLI and training loops both call it."""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from evalkit.cache import ResponseCache, default_cache_dir
from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.base import LanguageModel
from evalkit.results import RunResult, run_metadata
from evalkit.runner import GridSettings, Progress, decoding_label, run_grid


def evaluate(
    model: Any,
    tokenizer: Any = None,
    tasks: str | Sequence[str] = "demo",
    decoding: str | DecodingConfig | Sequence[str | DecodingConfig] = "greedy",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    *,
    backend: str = "hf",
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    bootstrap: int = 1000,
    output_dir: str | Path | None = None,
    cache: bool | str | Path = True,
    progress: Progress | None = None,
) -> dict:
    """Evaluate ``model`` on ``tasks`` under every ``decoding`` strategy; return the results.json structure.

    ``model`` is a registry name or path (``"smollm2-135m"``, a hub id, a folder,
    a .gguf file), an already-loaded transformers model (pass its ``tokenizer``),
    or any :class:`LanguageModel`. Everything the user can get wrong (task names,
    data files, decoding specs) is checked before a model is loaded.
    """
    task_objects = _resolve_tasks(tasks, data_dir)
    decodings = _resolve_decodings(decoding, seed)
    language_model, model_id = _resolve_model(model, tokenizer, backend, device, dtype, batch_size)
    response_cache = _open_cache(cache) if model_id else None
    settings = GridSettings(limit=limit, batch_size=batch_size, bootstrap=bootstrap, seed=seed)
    config = {
        "model": language_model.name,
        "backend": backend,
        "tasks": [t.name for t in task_objects],
        "decoding": [decoding_label(d) for d in decodings],
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
        "seed": seed,
        "bootstrap": bootstrap,
        "data_dir": str(data_dir) if data_dir is not None else None,
    }
    try:
        with _evaluation_mode(language_model):
            cells = run_grid(
                language_model, task_objects, decodings, settings, cache=response_cache, model_id=model_id, progress=progress
            )
    finally:
        if response_cache is not None:
            response_cache.close()
    run = RunResult(model=language_model.name, backend=backend, cells=cells, meta=run_metadata(config, device))
    if output_dir is not None:
        run.write(Path(output_dir))
    return run.to_dict()


def _resolve_tasks(tasks: str | Sequence[str], data_dir: str | Path | None) -> list:
    from evalkit.tasks import resolve_tasks

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [n for n in names if n]
    if not names:
        raise EvalkitError("no task given: pass --tasks (see `evalkit list tasks`)")
    return resolve_tasks(names, data_dir=str(data_dir) if data_dir is not None else None)


def _resolve_decodings(decoding: Any, seed: int) -> list[DecodingConfig]:
    from evalkit.decoding import parse_decoding

    items = [decoding] if isinstance(decoding, (str, DecodingConfig)) else list(decoding)
    configs: list[DecodingConfig] = []
    for item in items:
        configs.extend(parse_decoding(item) if isinstance(item, str) else [item])
    configs = [replace(c, seed=seed) if seed and not c.seed else c for c in configs]
    labels = [decoding_label(c) for c in configs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise EvalkitError(f"decoding strategy {duplicates[0]!r} is listed twice: give each strategy once")
    return configs


def _resolve_model(
    model: Any, tokenizer: Any, backend: str, device: str, dtype: str | None, batch_size: int
) -> tuple[LanguageModel, str | None]:
    """Return the adapter and its cache identity (None for live objects, whose weights may change between calls)."""
    if isinstance(model, (str, Path)):
        from evalkit.models.registry import load_model

        adapter = load_model(str(model), backend=backend, device=device, dtype=dtype, batch_size=batch_size)
        return adapter, f"{backend}|{model}|{dtype}|{adapter.max_length}"
    if isinstance(model, LanguageModel):
        return model, None
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise EvalkitError("evaluate() got a model object without its tokenizer: pass tokenizer=...")
        if backend == "native":
            from evalkit.models.native import NativeModel

            return NativeModel.from_hf(model, tokenizer, batch_size=batch_size), None
        from evalkit.models.hf import HFModel

        return HFModel(model, tokenizer, batch_size=batch_size), None
    raise EvalkitError(
        f"evaluate() cannot use a model of type {type(model).__name__}: pass a model name, a path, or a transformers model"
    )


def _open_cache(cache: bool | str | Path) -> ResponseCache | None:
    if cache is False:
        return None
    path = default_cache_dir() / "responses.sqlite" if cache is True else Path(cache)
    return ResponseCache(path)


@contextmanager
def _evaluation_mode(model: LanguageModel) -> Iterator[None]:
    """Inference mode for the duration; the caller's train/eval mode and RNG states come back untouched."""
    module = getattr(model, "model", None)
    was_training = bool(getattr(module, "training", False))
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        if isinstance(module, torch.nn.Module):
            module.eval()
        with torch.inference_mode():
            yield
    finally:
        if isinstance(module, torch.nn.Module) and was_training:
            module.train()
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
