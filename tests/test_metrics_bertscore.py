"""BERTScore with the local MiniLM equals bert_score.score(); the encoder is loaded once per process."""

from __future__ import annotations

from importlib import metadata

import bert_score
import pytest

from evalkit.metrics import bertscore as bertscore_module
from evalkit.metrics import compute_metrics, get_metric

pytestmark = pytest.mark.integration

N = 24


@pytest.fixture(scope="module")
def pairs(data_dir):
    folder = data_dir / "wmt21_news_text"
    read = lambda name: (folder / name).read_text(encoding="utf-8").split("\n")[:N]  # noqa: E731
    return read("newstest2021.de-en.hyp.UEdin.en.txt"), read("newstest2021.de-en.ref.A.en.txt"), read("newstest2021.de-en.ref.B.en.txt")


@pytest.mark.parametrize("idf", [False, True])
def test_equal_to_bert_score(pairs, idf, scipy_percentile_ci, minilm_folder):
    hyps, refs, _ = pairs
    options = {"bertscore": {"model": str(minilm_folder), "num_layers": 4, "idf": idf}}
    ours = compute_metrics(["bertscore"], hyps, refs, options=options, n_resamples=200)["bertscore"]
    p, _r, f = bert_score.score(hyps, refs, model_type=str(minilm_folder), num_layers=4, idf=idf, device="cpu")
    assert ours.per_sample == pytest.approx(f.tolist(), abs=1e-6)
    assert ours.score == pytest.approx(f.mean().item(), abs=1e-6)
    assert ours.extra["precision"] == pytest.approx(p.mean().item(), abs=1e-6)
    scores = f.numpy()  # the interval: scipy's percentile bootstrap of bert_score's mean F1 on evalkit's resamples
    assert ours.ci == pytest.approx(scipy_percentile_ci(lambda items: scores[items].mean(), N, 200), abs=1e-6)
    assert f"layer:4|idf:{'yes' if idf else 'no'}|rescaled:no" in ours.signature
    assert f"version:{metadata.version('bert-score')}" in ours.signature  # bert_score.__version__ lags (0.3.12 in 0.3.13)


def test_multi_reference_and_custom_baseline(pairs, tmp_path, minilm_folder):
    hyps, refs_a, refs_b = pairs
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{k},0.3,0.31,0.32\n" for k in range(7)))
    multi = [[a, b] for a, b in zip(refs_a, refs_b)]
    metric = get_metric("bertscore", model=str(minilm_folder), num_layers=4, rescale_with_baseline=True, baseline_path=str(baseline))
    ours = metric.compute(hyps, multi)
    _, _, f = bert_score.score(hyps, multi, model_type=str(minilm_folder), num_layers=4, lang="en", rescale_with_baseline=True,
                               baseline_path=str(baseline), device="cpu")
    assert ours.per_sample == pytest.approx(f.tolist(), abs=1e-6)
    assert "rescaled:custom|lang:en" in ours.signature


def test_encoder_is_loaded_once(pairs, minilm_folder):
    hyps, refs, _ = pairs
    get_metric("bertscore", model=str(minilm_folder), num_layers=4).compute(hyps[:2], refs[:2])
    model, _ = bertscore_module._ENCODERS[(str(minilm_folder), 4, "cpu")]
    get_metric("bertscore", model=str(minilm_folder), num_layers=4, idf=True).compute(hyps[:2], refs[:2])
    assert bertscore_module._ENCODERS[(str(minilm_folder), 4, "cpu")][0] is model
