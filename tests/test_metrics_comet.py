"""COMET: a checkpoint built with unbabel-comet's own classes over the local MiniLM loads through evalkit
and scores exactly as comet's own load_from_checkpoint + predict (the path real users take with
Unbabel/wmt22-comet-da)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evalkit.errors import EvalkitError
from evalkit.metrics import comet as comet_module
from evalkit.metrics import compute_metrics, get_metric


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_folder) -> Path:
    """A comet RegressionMetric (BERT encoder = the local MiniLM, random head) saved in comet's folder layout."""
    import pytorch_lightning as pl
    from comet.models import RegressionMetric

    torch.manual_seed(0)
    model = RegressionMetric(encoder_model="BERT", pretrained_model=str(minilm_folder), hidden_sizes=[64], layer="mix")
    folder = tmp_path_factory.mktemp("comet-minilm")
    (folder / "checkpoints").mkdir()
    hparams = dict(model.hparams)
    (folder / "hparams.yaml").write_text(yaml.safe_dump({**hparams, "class_identifier": "regression_metric"}))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": pl.__version__},
               folder / "checkpoints" / "model.ckpt")
    return folder


@pytest.fixture(scope="module")
def segments(data_dir):
    rows = [json.loads(line) for line in (data_dir / "wmt_mqm" / "mqm_newstest2021_ende.joined.jsonl").open(encoding="utf-8")][:16]
    return [r["source"] for r in rows], [r["hypothesis"] for r in rows], [r["reference"] for r in rows]


@pytest.mark.integration
def test_equal_to_comet_predict(checkpoint, segments, scipy_percentile_ci):
    from comet import load_from_checkpoint

    sources, hyps, refs = segments
    ours = compute_metrics(["comet"], hyps, refs, sources, options={"comet": {"model": str(checkpoint), "batch_size": 8}}, n_resamples=200)["comet"]
    reference_model = load_from_checkpoint(str(checkpoint / "checkpoints" / "model.ckpt"))
    expected = reference_model.predict([{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)], batch_size=8, gpus=0, progress_bar=False)
    assert ours.per_sample == pytest.approx(expected.scores, abs=1e-6)
    assert ours.score == pytest.approx(expected.system_score, abs=1e-6)
    scores = np.array(expected.scores)  # the interval: scipy's percentile bootstrap of COMET's mean on evalkit's resamples
    assert ours.ci == pytest.approx(scipy_percentile_ci(lambda items: scores[items].mean(), len(scores), 200), abs=1e-6)
    ckpt_hash = hashlib.sha256((checkpoint / "checkpoints" / "model.ckpt").read_bytes()).hexdigest()[:12]
    assert f"model:local:regression_metric/BERT@{ckpt_hash}|" in ours.signature and "batch:8" in ours.signature
    assert f"version:{metadata.version('unbabel-comet')}" in ours.signature


@pytest.mark.integration
def test_checkpoint_loaded_once_and_sources_required(checkpoint, segments):
    sources, hyps, refs = segments
    metric = get_metric("comet", model=str(checkpoint))
    metric.compute(hyps[:2], refs[:2], sources[:2])
    loaded = comet_module._MODELS[(str(checkpoint), "cpu")]
    metric.compute(hyps[:2], refs[:2], sources[:2])
    assert comet_module._MODELS[(str(checkpoint), "cpu")] is loaded
    with pytest.raises(EvalkitError, match="source"):
        metric.compute(hyps[:2], refs[:2])
    with pytest.raises(EvalkitError, match="checkpoints"):
        get_metric("comet", model=str(checkpoint / "checkpoints")).compute(hyps[:1], refs[:1], sources[:1])


@pytest.mark.gpu
def test_gpu_scores_match_cpu(checkpoint, segments):
    sources, hyps, refs = segments
    cpu = get_metric("comet", model=str(checkpoint), device="cpu").compute(hyps, refs, sources)
    gpu = get_metric("comet", model=str(checkpoint), device="cuda").compute(hyps, refs, sources)
    assert gpu.per_sample == pytest.approx(cpu.per_sample, abs=1e-4)


@pytest.mark.integration
def test_folder_named_like_the_hub_model_is_recorded_by_content(checkpoint, tmp_path):
    """A local folder called wmt22-comet-da is not Unbabel/wmt22-comet-da: its identity is the class, encoder and .ckpt hash."""
    renamed = tmp_path / "wmt22-comet-da"
    shutil.copytree(checkpoint, renamed)
    ckpt_hash = hashlib.sha256((checkpoint / "checkpoints" / "model.ckpt").read_bytes()).hexdigest()[:12]
    for model in (renamed, checkpoint, renamed / "checkpoints" / "model.ckpt"):
        signature = get_metric("comet", model=str(model)).signature()
        assert signature.startswith(f"comet|model:local:regression_metric/BERT@{ckpt_hash}|")
        assert "wmt22" not in signature


LIBRARY_NOISE = ("GPU available", "TPU available", "Tip:", "Encoder model frozen", "LeafSpec", "pkg_resources")


@pytest.mark.integration
def test_cli_scores_eight_systems_without_library_noise_unless_verbose(checkpoint, segments, tmp_path):
    """`evalkit score` over 8 systems prints only its own tables and progress lines; `--verbose` shows Lightning's banners. (A subprocess:
    inside pytest Lightning's log records go to pytest's handlers, not to the terminal.)"""
    sources, hyps, refs = segments
    rows = [{"system": f"sys{k}", "source": s, "hypothesis": hyps[(i + k) % len(hyps)], "reference": r}
            for k in range(8) for i, (s, r) in enumerate(zip(sources[:2], refs[:2]))]
    data = tmp_path / "outputs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    command = [sys.executable, "-m", "evalkit", "score", "--jsonl", str(data), "--source-field", "source", "--metrics", "comet",
               "--option", f"comet.model={checkpoint}", "--option", "comet.batch_size=8", "--bootstrap", "20"]
    env = {k: v for k, v in os.environ.items() if k != "EVALKIT_VERBOSE"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "sys7" in quiet.stdout
    assert not [line for line in (quiet.stdout + quiet.stderr).splitlines() if any(n in line for n in LIBRARY_NOISE)], quiet.stderr
    progress = re.compile(r".*( \.\.\.|: done in [0-9.]+ s)$")  # evalkit's own step lines are all stderr holds
    assert all(progress.match(line) for line in quiet.stderr.strip().splitlines()), quiet.stderr
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=600, env=env)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stderr.count("GPU available") == 8  # one predict per system
