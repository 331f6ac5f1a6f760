"""Model identities in metric signatures: a local folder is its architecture and the SHA-256 of its weights (the real
MiniLM's file, hashed here with hashlib as the reference), never its name; a hub id keeps the cached commit; versions
come from the installed packages' metadata."""

from __future__ import annotations

import hashlib
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from evalkit.metrics import artefacts, get_metric


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="module")
def renamed(tmp_path_factory, minilm_folder) -> Path:
    """A copy of the MiniLM folder under a hub model's name."""
    folder = tmp_path_factory.mktemp("copies") / "roberta-large"
    shutil.copytree(minilm_folder, folder)
    return folder


@pytest.mark.integration
def test_signature_holds_architecture_weight_hash_and_installed_versions(minilm_folder):
    signature = get_metric("bertscore", model=str(minilm_folder), num_layers=4).signature()
    assert f"model:local:BertModel@{sha12(minilm_folder / 'model.safetensors')}|layer:4|" in signature
    assert f"|version:{metadata.version('bert-score')}|" in signature
    assert signature.endswith(f"|transformers:{metadata.version('transformers')}")
    assert "model:local:model" not in signature


@pytest.mark.integration
def test_renamed_copy_is_the_same_artefact_not_the_hub_model(renamed, minilm_folder):
    original = get_metric("bertscore", model=str(minilm_folder), num_layers=4).signature()
    copy = get_metric("bertscore", model=str(renamed), num_layers=4).signature()
    assert copy == original
    assert "roberta-large" not in copy
    assert artefacts.model_identity(str(renamed)) == f"local:BertModel@{sha12(minilm_folder / 'model.safetensors')}"


@pytest.mark.integration
def test_changed_weight_byte_changes_the_hash(tmp_path, minilm_folder):
    folder = tmp_path / "wmt22-comet-da"
    shutil.copytree(minilm_folder, folder)
    before = artefacts.model_identity(folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    after = artefacts.model_identity(folder)
    assert after == f"local:BertModel@{sha12(weights)}" != before


@pytest.mark.unit
def test_file_hash_is_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    assert artefacts.file_sha256(path) == hashlib.sha256(b"x" * 100).hexdigest()
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    artefacts._DIGESTS[key] = "cached"
    assert artefacts.file_sha256(path) == "cached"  # not read again


@pytest.mark.unit
def test_several_weight_files_hash_their_sha256sum_lines(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    for name, data in (("model-00002-of-00002.safetensors", b"b"), ("model-00001-of-00002.safetensors", b"a"), ("pytorch_model.bin", b"c")):
        (tmp_path / name).write_bytes(data)
    lines = "".join(f"{hashlib.sha256(d).hexdigest()}  model-0000{i}-of-00002.safetensors\n" for i, d in ((1, b"a"), (2, b"b")))
    assert artefacts.model_identity(tmp_path) == f"local:llama@{hashlib.sha256(lines.encode()).hexdigest()[:12]}"


@pytest.mark.integration
def test_hub_id_keeps_the_cached_commit(tmp_path, monkeypatch, minilm_folder):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert artefacts.model_identity("org/some-model") == "org/some-model"
    refs = tmp_path / "hub" / "models--org--some-model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    assert artefacts.model_identity("org/some-model") == "org/some-model@0123456789ab"
    shutil.copytree(minilm_folder, tmp_path / "org" / "some-model")  # a folder at that relative path is what loaders load
    assert artefacts.model_identity("org/some-model").startswith("local:BertModel@")


@pytest.mark.unit
def test_library_output_is_captured_unless_verbose(capfd, monkeypatch):
    import logging
    import sys

    from evalkit import quiet

    monkeypatch.delenv("EVALKIT_VERBOSE", raising=False)
    monkeypatch.setattr(quiet, "_VERBOSE", False)
    lightning = logging.getLogger("pytorch_lightning")
    with quiet.library_output():
        print("GPU available: False, used: False")
        sys.stderr.write("Tip: install litlogger\n")
        assert lightning.getEffectiveLevel() == logging.ERROR
        handler = logging.StreamHandler()  # as pytorch_lightning's import adds one, bound to the captured stream
        logging.getLogger("some_library").addHandler(handler)
    logging.getLogger("some_library").removeHandler(handler)
    assert capfd.readouterr() == ("", "")
    assert handler.stream is sys.stderr  # pointed back at the real stderr, not the dead buffer
    with pytest.raises(RuntimeError), quiet.library_output():
        print("loading banner")
        raise RuntimeError("load failed")
    assert "loading banner" in capfd.readouterr().err  # shown when the call fails
    quiet.set_verbose(True)
    with quiet.library_output():
        print("GPU available: False, used: False")
    assert "GPU available" in capfd.readouterr().out
