"""`evalkit score` and `evalkit meta-eval` on the real ASR, WMT21 and MQM data."""

from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest
import sacrebleu
from scipy import stats

from evalkit.cli import main
from evalkit.errors import EvalkitError
from evalkit.scoring import load_jsonl_outputs, load_text_outputs, meta_evaluate, score_systems, short_names

pytestmark = pytest.mark.unit


def test_asr_systems_ranked_by_wer_with_results_json(data_dir, tmp_path, scipy_percentile_ci):
    outputs = load_jsonl_outputs(data_dir / "asr_librispeech_test_clean" / "hypotheses.jsonl", id_field="utt_id")
    assert outputs.n_items == 2620 and len(outputs.systems) == 4
    options = {"wer": {"lowercase": True, "remove_punctuation": True}}
    report = score_systems(outputs, ["wer"], options, n_resamples=200, output_dir=tmp_path)
    assert report.ranking[:2] == ["mozilla-deepspeech", "google-cloud-speech"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["command"] == "score" and written["n_items"] == {"hypotheses": 2620}  # results.json's schema, keyed by the data set
    best = written["results"]["hypotheses"]["mozilla-deepspeech"]
    # the reference interval: jiwer's edits and reference words per utterance, corpus WER of each resample (seed 0)
    words = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                           jiwer.ReduceToListOfListOfWords()])
    alignments = [jiwer.process_words(r[0], h, reference_transform=words, hypothesis_transform=words)
                  for h, r in zip(outputs.systems["mozilla-deepspeech"], outputs.references)]
    edits = np.array([a.substitutions + a.deletions + a.insertions for a in alignments])
    reference_words = np.array([a.substitutions + a.deletions + a.hits for a in alignments])
    assert best["wer"] == pytest.approx(edits.sum() / reference_words.sum())
    corpus_wer = lambda items: edits[items].sum() / reference_words[items].sum()  # noqa: E731
    assert best["wer_ci"] == pytest.approx(scipy_percentile_ci(corpus_wer, outputs.n_items, 200, seed=0), abs=1e-9)
    assert "lc:yes" in written["signatures"]["hypotheses"]["wer"] and "versions" in written["meta"]
    assert written["pairwise"]["wer"][0]["p_value"] < 0.05


def test_wmt_systems_ranked_by_bleu_from_text_files(data_dir):
    folder = data_dir / "wmt21_news_text"
    hyp_files = sorted(folder.glob("newstest2021.en-de.hyp.*"))
    outputs = load_text_outputs(hyp_files, [folder / "newstest2021.en-de.ref.A.de.txt"])
    assert len(outputs.systems) == 8 and "NVIDIA-NeMo" in outputs.systems
    report = score_systems(outputs, "bleu", n_resamples=100)
    refs = [[r[0] for r in outputs.references]]
    expected = {s: sacrebleu.corpus_bleu(h, refs).score for s, h in outputs.systems.items()}
    assert report.ranking == sorted(expected, key=expected.get, reverse=True)
    assert all(report.results[s]["bleu"].score == pytest.approx(expected[s]) for s in expected)


def test_meta_eval_correlations_equal_scipy(data_dir, tmp_path):
    rows = [json.loads(line) for line in (data_dir / "wmt_mqm" / "mqm_newstest2021_ende.joined.jsonl").open(encoding="utf-8")]
    segments = sorted({r["seg_id"] for r in rows})[:60]
    subset = [r for r in rows if r["seg_id"] in segments]
    path = tmp_path / "mqm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in subset))
    outputs = load_jsonl_outputs(path, id_field="seg_id", source_field="source", human_fields=["mqm_score"])
    table = {(c.level, c.metric): c for c in meta_evaluate(outputs, ["chrf"])}
    systems = list(outputs.systems)
    sentence = [sacrebleu.sentence_chrf(h, [r[0]]).score for s in systems for h, r in zip(outputs.systems[s], outputs.references)]
    human = [v for s in systems for v in outputs.human["mqm_score"][s]]
    segment = table[("segment", "chrf")]
    assert segment.pearson == pytest.approx(stats.pearsonr(sentence, human)[0])
    assert segment.kendall == pytest.approx(stats.kendalltau(sentence, human)[0])
    assert segment.n == len(human)
    corpus = [sacrebleu.corpus_chrf(outputs.systems[s], [[r[0] for r in outputs.references]]).score for s in systems]
    means = [np.mean(outputs.human["mqm_score"][s]) for s in systems]
    assert table[("system", "chrf")].spearman == pytest.approx(stats.spearmanr(corpus, means)[0])
    assert table[("item", "chrf")].n <= len(segments)


def test_cli_score_and_errors(data_dir, tmp_path, capsys):
    folder = data_dir / "wmt21_news_text"
    hyps = [str(p) for p in sorted(folder.glob("newstest2021.de-en.hyp.*"))[:2]]
    code = main(["score", "--hyp", *hyps, "--ref", str(folder / "newstest2021.de-en.ref.A.en.txt"),
                 "--metrics", "chrf", "--bootstrap", "50", "--output", str(tmp_path)])
    assert code == 0 and "ranked by chrf" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "results.json").read_text())["results"]["newstest2021.de-en.ref.A.en"]) == {"Facebook-AI", "HuaweiTSC"}
    assert main(["score", "--hyp", *hyps, "--ref", hyps[0], "--metrics", "blue"]) == 2
    assert "unknown metric 'blue'" in capsys.readouterr().err
    assert main(["score", "--hyp", *hyps, "--ref", hyps[0], "--option", "bleu"]) == 2


def test_misaligned_inputs_fail_with_one_line(tmp_path):
    a, b = tmp_path / "sys.a.txt", tmp_path / "sys.b.txt"
    a.write_text("one\ntwo\n")
    b.write_text("one\n")
    with pytest.raises(EvalkitError, match="line-aligned"):
        load_text_outputs([a], [b])
    assert short_names([tmp_path / "t.en-de.hyp.X.de", tmp_path / "t.en-de.hyp.Y.de"]) == ["X", "Y"]
