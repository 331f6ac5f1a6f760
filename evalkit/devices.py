"""The device work runs on when the user names none: one rule for model loaders and metric encoders alike.

It sits below every layer (metrics cannot import the models layer), and imports
torch only when asked, so importing it costs nothing.
"""

from __future__ import annotations


def default_device() -> str:
    """The GPU if torch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
