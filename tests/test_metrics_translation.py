"""BLEU / chrF / chrF++ / TER equal sacrebleu's on the real WMT21 system outputs, signatures included."""

from __future__ import annotations

import importlib.util

import pytest
import sacrebleu

from evalkit.errors import EvalkitError
from evalkit.metrics import compute_metrics, get_metric
from evalkit.metrics.translation import detect_cjk

pytestmark = pytest.mark.unit


N_SEGMENTS = 250  # a subsample keeps the test fast; equality is per-statistic, so the point stands


def _read(path):
    return path.read_text(encoding="utf-8").split("\n")[:N_SEGMENTS]


@pytest.fixture(scope="module")
def wmt(data_dir):
    folder = data_dir / "wmt21_news_text"
    return {
        "en-de": (
            {p.name.split(".")[3]: _read(p) for p in sorted(folder.glob("newstest2021.en-de.hyp.*"))[:2]},
            [_read(folder / f"newstest2021.en-de.ref.{r}.de.txt") for r in "ACD"],
        ),
        "de-en": (
            {p.name.split(".")[3]: _read(p) for p in sorted(folder.glob("newstest2021.de-en.hyp.*"))[:2]},
            [_read(folder / f"newstest2021.de-en.ref.{r}.en.txt") for r in "AB"],
        ),
    }


@pytest.mark.parametrize("pair", ["en-de", "de-en"])
def test_equal_to_sacrebleu_with_several_references(wmt, pair):
    systems, streams = wmt[pair]
    per_segment = [list(refs) for refs in zip(*streams)]
    libraries = {
        "bleu": sacrebleu.BLEU(),
        "chrf": sacrebleu.CHRF(),
        "chrf++": sacrebleu.CHRF(word_order=2),
        "ter": sacrebleu.TER(),
    }
    for system, hyps in systems.items():
        ours = compute_metrics(list(libraries), hyps, per_segment, n_resamples=0)
        for name, library in libraries.items():
            expected = library.corpus_score(hyps, streams)
            assert ours[name].score == pytest.approx(expected.score, abs=1e-9), (pair, system, name)
            assert ours[name].extra["formatted"] == expected.format()  # the last printed digit
            signature = str(library.get_signature())
            assert ours[name].signature == f"{name}|{signature}|lang:none(auto)"
            assert f"nrefs:{len(streams)}" in ours[name].signature


def test_sentence_bleu_per_sample(wmt):
    systems, streams = wmt["de-en"]
    hyps = next(iter(systems.values()))[:50]
    refs = [[s[i] for s in streams] for i in range(50)]
    result = get_metric("bleu").compute(hyps, refs)
    expected = [sacrebleu.sentence_bleu(h, r).score for h, r in zip(hyps, refs)]
    assert result.per_sample == pytest.approx(expected)


def test_tokenizer_follows_target_language():
    hyps, refs = ["我 喜欢 猫。", "今天天气很好"], ["我喜欢猫。", "今天天气不错"]
    auto = get_metric("bleu").compute(hyps, refs)
    expected = sacrebleu.BLEU(tokenize="zh").corpus_score(hyps, [refs])
    assert auto.score == pytest.approx(expected.score)
    assert "tok:zh" in auto.signature and "lang:zh(auto)" in auto.signature
    assert "asian:yes" in get_metric("ter").compute(hyps, refs).signature
    assert "lang:zh(given)" in get_metric("bleu", lang="zh").compute(["a"], ["a"]).signature
    assert detect_cjk(["これは日本語です"]) == "ja" and detect_cjk(["한국어 문장"]) == "ko" and detect_cjk(["plain text"]) is None


def test_japanese_uses_mecab_or_says_how_to_install_it():
    if importlib.util.find_spec("MeCab") is None:
        with pytest.raises(EvalkitError, match=r"ja-mecab.*pip install 'sacrebleu\[ja\]'"):
            get_metric("bleu").compute(["これはペンです"], ["これはペンです"])
    else:
        assert "tok:ja-mecab" in get_metric("bleu").compute(["これはペンです"], ["これはペンです"]).signature


def test_bad_input_is_one_line():
    with pytest.raises(EvalkitError, match="2 predictions but 1 references"):
        get_metric("bleu").compute(["a", "b"], ["a"])
    with pytest.raises(EvalkitError, match="same number of references"):
        get_metric("chrf").compute(["a", "b"], [["a"], ["b", "c"]])
