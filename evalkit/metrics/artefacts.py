"""Which model a metric used: a hub id (with the commit the cache holds) or a local checkpoint named by its content.

A local file or folder is recorded as ``local:<architecture>@<hash>``: the
architecture its config names (config.json ``architectures``/``model_type``;
for a COMET checkpoint, hparams.yaml's class and encoder) and the first 12 hex
digits of the SHA-256 of its weight files. Its name is never recorded, so a
folder called ``roberta-large`` or ``wmt22-comet-da`` does not pass for the hub
model of that name, and new weights saved to the same folder give a new
identity. Each weight file is hashed once per process (keyed by path, size and
modification time), streaming, so large checkpoints do not fill memory.

A name that is not a local path is a hub id, recorded as ``<id>@<commit>``
(12 hex digits) when the Hugging Face cache knows which commit ``main`` was
when it downloaded it, else as the bare id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

HASH_CHARS = 12
_CHUNK = 8 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}

# Preference order, as loaders pick them: transformers reads *.safetensors before *.bin.
WEIGHT_PATTERNS = (("*.safetensors",), ("*.bin",), ("*.ckpt", "*.pt", "*.pth"))
NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "scheduler.bin"}


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in chunks; computed once per (path, size, mtime) per process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a model folder: its *.safetensors, else its *.bin, else *.ckpt/*.pt/*.pth
    (top level first, then ``checkpoints/`` as COMET lays them out)."""
    folder = Path(folder)
    for where in (folder, folder / "checkpoints"):
        for patterns in WEIGHT_PATTERNS:
            found = sorted(p for pattern in patterns for p in where.glob(pattern) if p.is_file() and p.name not in NOT_WEIGHTS)
            if found:
                return found
    return []


def weights_hash(files: Sequence[str | Path], root: str | Path | None = None) -> str:
    """12 hex digits: one file's own SHA-256 (as ``sha256sum`` prints it); several files: the SHA-256 of their
    ``sha256sum``-style lines (``<digest>  <path relative to root>``), sorted by path."""
    if not files:
        return "noweights"
    if len(files) == 1:
        return file_sha256(files[0])[:HASH_CHARS]
    base = Path(root) if root is not None else Path(files[0]).parent
    names = sorted((Path(f).relative_to(base).as_posix(), Path(f)) for f in files)
    lines = "".join(f"{file_sha256(path)}  {name}\n" for name, path in names)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:HASH_CHARS]


def config_architecture(folder: str | Path) -> str:
    """``architectures`` (joined with +) or ``model_type`` of a folder's config.json; "unknown" without one."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    architectures = config.get("architectures") or []
    if architectures:
        return "+".join(str(a) for a in architectures)
    return str(config.get("model_type") or "unknown")


def comet_architecture(checkpoint: str | Path) -> str:
    """``<class>/<encoder>`` from the hparams.yaml next to a COMET checkpoint (``<dir>/checkpoints/x.ckpt`` reads
    ``<dir>/hparams.yaml``, where comet's ``load_from_checkpoint`` reads it), e.g. ``regression_metric/XLM-RoBERTa``."""
    import yaml

    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent.parent
    try:
        hparams = yaml.safe_load((folder / "hparams.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "comet"
    parts = [str(hparams[k]) for k in ("class_identifier", "encoder_model") if hparams.get(k)]
    return "/".join(parts) or "comet"


def hub_revision(repo_id: str) -> str | None:
    """The commit the Hugging Face cache holds for ``repo_id`` (what ``main`` pointed to when it was downloaded)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / "main"
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip() or None
    snapshots = [p.name for p in (folder / "snapshots").glob("*") if p.is_dir()]
    return snapshots[0] if len(snapshots) == 1 else None


def is_local(model: str | Path) -> bool:
    """A path that exists is what loaders (transformers, comet) load, even when its name looks like a hub id."""
    return Path(model).exists()


def hub_identity(repo_id: str) -> str:
    revision = hub_revision(repo_id)
    return f"{repo_id}@{revision[:HASH_CHARS]}" if revision else repo_id


def local_identity(architecture: str, files: Sequence[str | Path], root: str | Path | None = None) -> str:
    return f"local:{architecture}@{weights_hash(files, root)}"


def model_identity(model: str | Path) -> str:
    """A transformers model: ``local:<architecture>@<hash>`` for a folder, else the hub id (``@<commit>`` when cached)."""
    if is_local(model):
        path = Path(model)
        if path.is_file():
            return local_identity("unknown", [path])
        return local_identity(config_architecture(path), weight_files(path), path)
    return hub_identity(str(model))


def comet_identity(checkpoint: str | Path) -> str:
    """A local COMET checkpoint: ``local:<class>/<encoder>@<hash of the .ckpt file comet loads>``."""
    return local_identity(comet_architecture(checkpoint), [checkpoint])
