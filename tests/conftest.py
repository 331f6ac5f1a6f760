"""Shared fixtures: the real data folder and the real SmolLM2, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"the shared data folder is expected at {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M through the HF adapter (GGUF converted once and cached)."""
    from evalkit.models.registry import load_model

    return load_model("smollm2-135m", batch_size=8)
