"""evaluate(): the one public entry. The CLI and training loops both call it.

A training loop calls evaluate() every N steps on the model it is training, so
the repeated call must be cheap and must leave the loop exactly as it was:
the live module is used in place (never copied or reloaded), tasks, their
instances and the tokenized texts are built once per process (see
``_TASKS``, :func:`evalkit.runner.task_instances` and ``_TOKENS``), metric
models are loaded once per process by :mod:`evalkit.metrics`, and the
caller's train/eval flags and RNG states come back untouched.
"""

from __future__ import annotations

import os
import random
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalkit import distributed as dist
from evalkit.cache import ResponseCache, default_cache_dir
from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.metrics.base import is_ci_key
from evalkit.models.base import LanguageModel
from evalkit.progress import Progress
from evalkit.results import RunResult, run_metadata
from evalkit.runner import GridSettings, decoding_label, run_grid


def evaluate(
    model: Any,
    tokenizer: Any = None,
    tasks: str | Sequence[str] = "demo",
    decoding: str | DecodingConfig | Sequence[str | DecodingConfig] = "greedy",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    bootstrap: int = 1000,
    output_dir: str | Path | None = None,
    cache: bool | str | Path = True,
    progress: Progress | None = None,
    flat: bool = False,
    every: int | None = None,
    step: int | None = None,
    distributed: bool | None = None,
    apply_chat_template: bool | str = False,
    system_instruction: str | None = None,
    fewshot_as_multiturn: bool = False,
    draft_model: str | None = None,
) -> dict:
    """Evaluate ``model`` on ``tasks`` under every ``decoding`` strategy; return the results.json structure.

    ``model`` is a registry name or path (``"smollm2-135m"``, a hub id, a folder,
    a .gguf file), an already-loaded transformers model (pass its ``tokenizer``;
    a DDP wrapper is unwrapped), or any :class:`LanguageModel`. Everything the
    user can get wrong (task names, data files, decoding specs) is checked
    before a model is loaded. ``tasks`` may name lm-evaluation-harness tasks as
    ``lm_eval:<name>`` (see :mod:`evalkit.tasks.lm_eval`).

    ``backend``: ``"auto"`` (the default) loads a model given by name on the
    native engine when it runs the model's architecture and ``dtype``, else
    with transformers (``"hf"``); see
    :func:`evalkit.models.registry.resolve_backend`. ``"hf"``, ``"native"`` and
    ``"openai"`` force an adapter. An in-memory transformers model resolves
    ``"auto"`` to ``"hf"``: the live module is evaluated in place, never copied
    (``backend="native"`` takes a copy of its weights into the native engine).
    results.json records the backend that ran, never ``"auto"``.

    Speculative decoding: the ``draftK`` strategies draft with a second,
    smaller model of the same tokenizer, ``draft_model`` (a registry name or
    path, loaded with backend auto on the model's device and ``dtype``); it is
    recorded in each such strategy's settings (and so in its cache key). The
    ``lookupK`` strategies need no draft model.

    For training loops: ``flat=True`` returns :func:`flatten`'s
    ``{"task/metric": value}`` dict for a logger; ``every=N, step=s`` evaluates
    only when ``s % N == 0`` and returns ``{}`` otherwise, touching nothing.
    A live model is never cached on disk (its weights change between calls).

    Chat models: ``apply_chat_template=True`` renders every prompt with the
    model's own chat template (a string: a Jinja file's path, or the name of
    one of the tokenizer's templates), as lm-evaluation-harness's option of the
    same name; ``system_instruction`` opens each conversation (also without a
    template, as plain text before the prompt, as lm-eval does);
    ``fewshot_as_multiturn=True`` makes each few-shot example a user turn and
    an assistant turn. See :mod:`evalkit.tasks.chat`.

    ``distributed``: None shards the requests across the ranks of a
    torch.distributed job when there is one (``torchrun``, or an initialised
    process group); every rank must then call evaluate(). Pass False when only
    one rank calls it. Every rank gets the same results; only rank 0 writes
    ``output_dir``.
    """
    if every is not None:
        if every < 1 or step is None:
            raise EvalkitError(f"evaluate(every={every}) needs a positive every and the current step=...")
        if step % every:
            return {}
    _check_prompt_options(apply_chat_template, system_instruction, fewshot_as_multiturn)
    task_objects = _resolve_tasks(tasks, data_dir)
    decodings = _resolve_decodings(decoding, seed)
    decodings, draft_name = _attach_draft_model(decodings, draft_model)
    ranks = dist.setup(device) if distributed is not False else dist.SINGLE
    device = dist.local_device(device, ranks)
    if draft_name is not None and backend == "openai":
        from evalkit.models.draft import no_logits_error

        raise no_logits_error(str(model))
    with dist.main_first(ranks):
        language_model, model_id, backend = _resolve_model(model, tokenizer, backend, device, dtype, batch_size)
        if draft_name is not None:
            from evalkit.models.draft import load_draft

            load_draft(language_model, draft_name, device=device, dtype=dtype, batch_size=batch_size)
    fmt = _prompt_format(language_model, task_objects, apply_chat_template, system_instruction, fewshot_as_multiturn)
    model_id = model_id + fmt.cache_tag() if model_id else model_id
    response_cache = _open_cache(cache) if model_id else None
    settings = GridSettings(limit=limit, batch_size=batch_size, bootstrap=bootstrap, seed=seed, prompt_format=fmt)
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
        "world_size": ranks.size,
        "draft_model": draft_name,
    }
    if hasattr(language_model, "ignored_fields"):  # black-box servers: which settings they could not honour
        config["ignored_decoding_fields"] = {decoding_label(d): language_model.ignored_fields(d) for d in decodings}
    try:
        with _evaluation_mode(language_model):
            cells = run_grid(
                language_model, task_objects, decodings, settings,
                cache=response_cache, model_id=model_id, progress=progress, ranks=ranks,
            )
    finally:
        if response_cache is not None:
            response_cache.close()
    meta = {**run_metadata(config, device), "prompt": fmt.meta()}
    run = RunResult(model=language_model.name, backend=backend, cells=cells, meta=meta)
    if output_dir is not None and ranks.is_main:
        run.write(Path(output_dir))
    results = dist.broadcast(run.to_dict(), ranks)  # rank 0 scored; the others hold no cells
    return flatten(results) if flat else results


def flatten(results: dict) -> dict[str, float]:
    """results.json -> ``{"wikitext2/word_perplexity": 21.3, "hellaswag/acc": 0.41, ...}`` for a logger.

    Keys are ``task/metric``; a generation task run under several decoding
    strategies gets ``task/decoding/metric`` (e.g. ``gsm8k/beam4/exact_match``).
    Confidence intervals and non-numeric values are left out.
    """
    out: dict[str, float] = {}
    for task, by_label in results.get("results", {}).items():
        for label, values in by_label.items():
            prefix = f"{task}/{label}/" if len(by_label) > 1 else f"{task}/"
            for metric, value in values.items():
                if not is_ci_key(metric) and isinstance(value, (int, float)):
                    out[prefix + metric] = float(value)
    return out


# Tasks resolved by earlier calls (their documents already read): keyed by the names and where data comes from.
_TASKS: dict[tuple, list] = {}


def _resolve_tasks(tasks: str | Sequence[str], data_dir: str | Path | None) -> list:
    from evalkit.tasks import resolve_tasks

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [n for n in names if n]
    if not names:
        raise EvalkitError("no task given: pass tasks=NAMES (see `evalkit list tasks`)")
    data = str(data_dir) if data_dir is not None else None
    key = (tuple(names), data, os.environ.get("EVALKIT_DATA"))
    if key not in _TASKS:
        _TASKS[key] = resolve_tasks(names, data)
    return _TASKS[key]


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


def _attach_draft_model(decodings: list[DecodingConfig], draft_model: str | None) -> tuple[list[DecodingConfig], str | None]:
    """Every drafting strategy gets ``draft_model`` (so its settings and cache key name it); the one draft model of the run.

    Checked before any model loads: a drafting strategy needs a draft model,
    and a run has one draft model. A draft model no strategy uses is a warning.
    """
    drafting = [c for c in decodings if c.speculative == "draft"]
    if draft_model is not None:
        if not isinstance(draft_model, (str, Path)) or not str(draft_model).strip():
            raise EvalkitError("draft_model must be a model name or path (a smaller model with the same tokenizer)")
        draft_model = str(draft_model)
        if not drafting:
            _warn(
                f"warning: the draft model {draft_model} is not used: no decoding strategy drafts with a model "
                "(draftK strategies do, e.g. draft4)"
            )
            return decodings, None
        decodings = [replace(c, draft_model=draft_model) if c.speculative == "draft" else c for c in decodings]
        return decodings, draft_model
    missing = [c for c in drafting if not c.draft_model]
    if missing:
        label, k = decoding_label(missing[0]), missing[0].num_speculative_tokens
        raise EvalkitError(
            f"decoding {label!r} drafts with a second model: pass draft_model=NAME (a smaller model with the same "
            f"tokenizer), or use lookup{k}, which needs none"
        )
    names = sorted({c.draft_model for c in drafting})
    if len(names) > 1:
        raise EvalkitError(
            f"the decoding strategies draft with {len(names)} different models ({', '.join(names)}): a run has one "
            "draft model; pass draft_model=NAME to use one for all"
        )
    return decodings, (names[0] if names else None)


def _warn(message: str) -> None:
    """One line to the installed progress reporter (the CLI's stderr); a Python warning when none is installed."""
    from evalkit import progress

    reporter = progress.current()
    if reporter is progress._SILENT:
        import warnings

        warnings.warn(message.removeprefix("warning: "), stacklevel=4)
    else:
        reporter.note(message)


def _check_prompt_options(apply_chat_template: bool | str, system_instruction: str | None, multiturn: bool) -> None:
    """Prompt options that contradict each other or name a broken template file fail before any model loads."""
    from evalkit.tasks.chat import read_template_file, template_file

    if not isinstance(apply_chat_template, (bool, str)) or apply_chat_template == "":
        raise EvalkitError("apply_chat_template must be True, False, a Jinja file's path or a template name")
    if multiturn and apply_chat_template is False:
        raise EvalkitError("fewshot_as_multiturn=True needs apply_chat_template: few-shot turns exist only in a chat prompt")
    if system_instruction is not None and not isinstance(system_instruction, str):
        raise EvalkitError("system_instruction must be a string")
    path = template_file(apply_chat_template)
    if path is not None:
        read_template_file(path)


def _prompt_format(
    model: LanguageModel, tasks: list, apply_chat_template: bool | str, system_instruction: str | None, multiturn: bool
) -> Any:
    """How this run's prompts are built, with the chat template resolved against the loaded model.

    An HTTP adapter in chat mode sends messages and the server renders them
    with its own template; evalkit can then only score generation tasks (a
    chat endpoint returns no prompt log-probabilities).
    """
    from evalkit.tasks.chat import PromptFormat, resolve_template, template_file

    if apply_chat_template is False:
        return PromptFormat(system_instruction=system_instruction)
    server_renders = getattr(model, "chat", False) is True and model.tokenizer is None
    if server_renders:
        if template_file(apply_chat_template) is not None:
            raise EvalkitError(
                f"model {model.name} is a chat endpoint that applies its own template; drop ::chat from the model "
                "spec to send prompts rendered with the given file to /v1/completions"
            )
        scoring = [t.name for t in tasks if t.output_type != "generate_until"]
        if scoring:
            raise EvalkitError(
                f"task {scoring[0]!r} scores log-likelihoods, which a chat endpoint cannot return; run it without "
                "::chat and with apply_chat_template=PATH to a Jinja file of the model's template"
            )
        return PromptFormat(chat=True, system_instruction=system_instruction, fewshot_as_multiturn=multiturn)
    if model.tokenizer is None and template_file(apply_chat_template) is None:
        raise EvalkitError(
            f"model {model.name}: evalkit cannot read the server's chat template; add ::chat to the model spec so "
            "the server renders it, or pass apply_chat_template=PATH to a Jinja file"
        )
    template = resolve_template(apply_chat_template, model.tokenizer, model.name)
    return PromptFormat(
        chat=True, chat_template=template, system_instruction=system_instruction,
        fewshot_as_multiturn=multiturn,
    )


def _resolve_model(
    model: Any, tokenizer: Any, backend: str, device: str, dtype: str | None, batch_size: int
) -> tuple[LanguageModel, str | None, str]:
    """Return the adapter, its cache identity (None for live objects, whose weights may change between calls) and
    the backend that runs it (``auto`` resolved)."""
    from evalkit.models.registry import BACKENDS

    if backend not in BACKENDS:
        raise EvalkitError(f"unknown backend {backend!r}; use {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
    if isinstance(model, (str, Path)):
        from evalkit.models.registry import load_model, resolve_backend

        if backend != "openai":
            backend, _ = resolve_backend(str(model), backend, dtype)  # auto: decided and announced here
        adapter = load_model(str(model), backend=backend, device=device, dtype=dtype, batch_size=batch_size)
        return adapter, f"{backend}|{model}|{dtype}|{adapter.max_length}", backend
    if isinstance(model, LanguageModel):
        return model, None, _adapter_backend(model) if backend == "auto" else backend
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise EvalkitError("evaluate() got a model object without its tokenizer: pass tokenizer=...")
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        if backend == "openai":
            raise EvalkitError("backend='openai' evaluates a model served over HTTP: pass its URL, not a model object")
        if backend == "native":  # the native engine holds its own copy of the weights, taken now
            from evalkit.models.native import NativeModel

            return NativeModel.from_hf(model, tokenizer, batch_size=batch_size), None, "native"
        from evalkit.models.hf import HFModel, HFSeq2SeqModel

        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        adapter = (HFSeq2SeqModel if seq2seq else HFModel)(model, tokenizer, batch_size=batch_size)
        adapter.encode = _memoized_encode(adapter.encode, tokenizer)
        return adapter, None, "hf"  # auto too: the live module is evaluated in place
    raise EvalkitError(
        f"evaluate() cannot use a model of type {type(model).__name__}: pass a model name, a path, or a transformers model"
    )


def _adapter_backend(model: LanguageModel) -> str:
    """The backend an already-built adapter is: hf, native or openai by its module, else its class name."""
    module = type(model).__module__
    for prefix, name in (("evalkit.models.native", "native"), ("evalkit.models.openai", "openai"), ("evalkit.models.hf", "hf")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return type(model).__name__


def _open_cache(cache: bool | str | Path) -> ResponseCache | None:
    if cache is False:
        return None
    path = default_cache_dir() / "responses.sqlite" if cache is True else Path(cache)
    return ResponseCache(path)


# Token ids of every text a tokenizer has encoded for evaluate(): a training loop scores the same texts
# every N steps. Weak keys: the memo goes when the tokenizer does, and nothing in it holds the model.
_TOKENS: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool | None], list[int]]] = weakref.WeakKeyDictionary()
_TOKENS_PER_TOKENIZER = 200_000


def _memoized_encode(encode: Callable[..., list[int]], tokenizer: Any) -> Callable[..., list[int]]:
    """``encode`` answered from the tokenizer's memo (the adapter is rebuilt per call: keeping it would pin the model)."""
    memo = _TOKENS.setdefault(tokenizer, {})

    def cached(text: str, add_special_tokens: bool | None = None) -> list[int]:
        key = (text, add_special_tokens)
        if key not in memo:
            if len(memo) >= _TOKENS_PER_TOKENIZER:
                memo.clear()
            memo[key] = encode(text, add_special_tokens)
        return list(memo[key])  # a copy: callers may extend it

    return cached


@contextmanager
def _evaluation_mode(model: LanguageModel) -> Iterator[None]:
    """Inference mode for the duration; the caller's train/eval flags (per submodule) and RNG states come back untouched."""
    module = getattr(model, "model", None)
    modes = [(m, m.training) for m in module.modules()] if isinstance(module, torch.nn.Module) else []
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        if modes:
            module.eval()
        with torch.inference_mode():
            yield
    finally:
        for submodule, training in modes:  # exact flags: a frozen submodule the caller keeps in eval stays so
            submodule.training = training
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
