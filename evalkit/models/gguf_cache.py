"""Convert a GGUF file once into an ordinary transformers folder, and reuse it.

transformers can load a GGUF file directly (``from_pretrained(..., gguf_file=)``),
but it de-quantises every tensor on every load (~25 s for SmolLM2-135M on two
cores) and its tokenizer conversion gets the special tokens wrong. Converting
once into safetensors + config + tokenizer under a cache folder makes the
second load take seconds, and gives lm-evaluation-harness's ``hf`` backend the
very same folder to load, so both harnesses score identical weights and tokens.

The folder is keyed by the file's size and the SHA-256 of its first 16 MiB (the
header, the vocabulary and the first tensors): cheap to compute and distinct
for distinct files in practice. It is written to a temporary sibling and
renamed into place, so a crash mid-conversion never leaves a half folder that
a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.progress import step

_PREFIX_BYTES = 16 * 2**20
_FORMAT = "v1"  # bump when the conversion or the tokenizer normalisation changes


GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: str | os.PathLike) -> None:
    """Fail in one line, before any conversion, when ``path`` is missing or does not start with the GGUF magic bytes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalkitError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    with open(path, "rb") as handle:
        head = handle.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        found = "it is empty" if not head else f"it starts with {head!r}"
        raise EvalkitError(
            f"{path} is not a GGUF model file ({found}, not the magic bytes b'GGUF'); "
            "pass a .gguf file from llama.cpp / the hub, a model folder or a hub id"
        )


def cache_root() -> Path:
    """Where converted models live: ``$EVALKIT_CACHE/models`` or ``~/.cache/evalkit/models``."""
    return Path(os.environ.get("EVALKIT_CACHE", "~/.cache/evalkit")).expanduser() / "models"


def gguf_key(gguf_path: Path) -> str:
    """A content key for a GGUF file: size plus the hash of its first 16 MiB."""
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        digest.update(f.read(_PREFIX_BYTES))
    digest.update(f"{gguf_path.stat().st_size}:{_FORMAT}".encode())
    return digest.hexdigest()[:24]


def cached_folder(gguf_path: str | os.PathLike) -> Path:
    """The folder the converted copy of ``gguf_path`` lives in (whether or not it exists yet)."""
    return cache_root() / gguf_key(Path(gguf_path))


def is_converted(gguf_path: str | os.PathLike) -> bool:
    folder = cached_folder(gguf_path)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """Return a transformers folder holding ``gguf_path``'s weights, converting it on first use.

    Weights are stored in float32: the de-quantised Q4 values are not all
    representable in bf16, and float32 keeps the converted model identical to
    what ``from_pretrained(gguf_file=...)`` gives.
    """
    import torch
    import transformers

    path = Path(gguf_path).expanduser().resolve()
    check_gguf_file(path)
    target = cached_folder(path)
    if is_converted(path):
        return target

    with step(f"converting {path.name} to a transformers folder (first use only; {target})"):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            kwargs = {"gguf_file": path.name}
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
                tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, **kwargs)
                meta = read_gguf_token_metadata(path)
            except (ValueError, KeyError, OSError) as err:  # a truncated file or an architecture transformers cannot read
                first = str(err).splitlines()[0] if str(err) else ""
                raise EvalkitError(
                    f"{path}: transformers could not load it as a GGUF model ({type(err).__name__}: {first}); "
                    "check the file is complete and of an architecture transformers supports, or pass a model folder or hub id"
                ) from None
            normalise_gguf_tokenizer(tokenizer, meta)
            tokenizer.vocab_file = None  # else save_pretrained copies the whole GGUF as "tokenizer.model"
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
            try:
                os.replace(tmp, target)
            except OSError:  # another process finished first: its folder is as good as ours
                if not is_converted(path):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_gguf_token_metadata(gguf_path: Path) -> dict:
    """The tokenizer fields of the GGUF header that transformers' converter does not carry over faithfully."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    wanted = {
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
        "add_bos_token": "tokenizer.ggml.add_bos_token",
        "add_eos_token": "tokenizer.ggml.add_eos_token",
        "context_length": f"{fields['general.architecture'].contents()}.context_length",
    }
    return {key: fields[name].contents() for key, name in wanted.items() if name in fields}


def normalise_gguf_tokenizer(tokenizer, meta: dict) -> None:
    """Make a GGUF-converted tokenizer behave like the original hub tokenizer.

    transformers 4.57 turns a ``gpt2``-model GGUF vocabulary into a
    ``LlamaTokenizerFast`` with Llama's defaults: for SmolLM2 it reports
    ``eos_token='<|im_start|>'`` and ``add_bos_token=True``, although the
    GGUF header says ``eos_token_id=2`` (``<|im_end|>``, also the config's
    ``eos_token_id``), ``padding_token_id=2`` and ``add_bos_token=False``, and
    the hub tokenizer (``HuggingFaceTB/SmolLM2-135M-Instruct``) adds no BOS.
    A stray BOS would shift every loglikelihood and a wrong EOS would make
    generation run to the token budget, so the header is the authority here:
    its special-token ids and add-BOS/EOS flags overwrite the converter's.
    The BOS token itself stays ``<|im_start|>`` (id 1, as in the header and
    the hub tokenizer): lm-evaluation-harness uses it as the prefix token of
    empty contexts and rolling windows, so it must agree with the hub's too.
    """
    ids = {k: meta[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in meta}
    special = {k.removesuffix("_id"): tokenizer.convert_ids_to_tokens(int(v)) for k, v in ids.items()}
    if special:
        tokenizer.add_special_tokens(special)
    for flag in ("add_bos_token", "add_eos_token"):
        if flag in meta and hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(meta[flag]))  # LlamaTokenizerFast rebuilds its post-processor
    tokenizer.clean_up_tokenization_spaces = False  # byte-level BPE decodes exactly; no " ." -> "." edits
    if "context_length" in meta:
        tokenizer.model_max_length = int(meta["context_length"])
