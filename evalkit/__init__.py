"""evalkit: evaluate language models on tasks x decoding strategies, with quality and cost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalkit.errors import EvalkitError

if TYPE_CHECKING:
    from evalkit.api import evaluate, flatten
    from evalkit.decoding.config import DecodingConfig

__all__ = ["DecodingConfig", "EvalkitError", "evaluate", "flatten"]
__version__ = "0.1.0"

# evalkit.api imports torch (seconds): loaded on first use, so `evalkit --help` and `import evalkit.cli` stay fast.
_LAZY = {"evaluate": "evalkit.api", "flatten": "evalkit.api", "DecodingConfig": "evalkit.decoding.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
