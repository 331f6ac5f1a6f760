"""The native Transformer: a KV-cached LLaMA-family engine (``--backend native``).

``load_native`` takes what the HF adapter takes (a local folder, a ``.gguf``
file, a hub id); the weights always arrive as a transformers-layout state
dict, so the native model and transformers run identical numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evalkit.errors import EvalkitError
from evalkit.models.eos import eos_token_ids
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.engine import NativeModel
from evalkit.models.native.weights import build_model, read_safetensors_folder
from evalkit.models.placement import check_device, load_dtype, native_dtype_refusal

__all__ = ["NativeConfig", "NativeModel", "load_native"]


def load_native(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    batch_size: int = 8,
    gguf_file: str | None = None,
    **kw: Any,
) -> NativeModel:
    """Load a LLaMA-family checkpoint into the native engine.

    ``dtype`` defaults to float32 on CPU and bfloat16 on CUDA. Extra keywords
    (``max_length``, ``stride``, ``token_budget``, ``compile``) go to
    :class:`NativeModel`.
    """
    import transformers

    dev = check_device(device)
    dtype = load_dtype(dtype, dev, accelerated=torch.bfloat16)
    refusal = native_dtype_refusal(dtype)
    if refusal is not None:
        raise EvalkitError(f"{refusal}; use backend='hf'")
    kw.pop("trust_remote_code", None)  # LLaMA-family code is built in; nothing remote to trust
    folder = _resolve_folder(str(Path(name_or_path) / gguf_file) if gguf_file else name_or_path)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise EvalkitError(f"cannot read a transformers config and tokenizer from {folder}: {e}".splitlines()[0]) from e
    config = NativeConfig.from_hf(hf_config)
    model = build_model(config, read_safetensors_folder(folder), dev, dtype)
    has_generation_config = (folder / "generation_config.json").exists()
    generation = transformers.GenerationConfig.from_pretrained(folder) if has_generation_config else None
    eos = eos_token_ids(generation, hf_config, tokenizer)
    kw.setdefault("name", str(name_or_path))
    return NativeModel(model, tokenizer, batch_size=batch_size, eos_token_ids=eos, **kw)


def _resolve_folder(name_or_path: str) -> Path:
    """A local transformers folder for a folder, a GGUF file (converted once and cached) or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from evalkit.models.gguf_cache import convert_gguf

        return convert_gguf(path)
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise EvalkitError(f"{name_or_path} is neither a model folder nor a .gguf file")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:  # offline, unknown id, gated repo: one line, not a traceback
        raise EvalkitError(f"cannot fetch {name_or_path!r} from the Hugging Face hub: {type(e).__name__}") from e

