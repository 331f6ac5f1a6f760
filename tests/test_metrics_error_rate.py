"""WER / CER / MER / WIL on the LibriSpeech outputs of all 4 ASR systems equal jiwer's."""

from __future__ import annotations

import json

import jiwer
import pytest

from evalkit.metrics import compute_metrics, get_metric

pytestmark = pytest.mark.unit

N_UTTERANCES = 600  # per system; CER alignment over all 2,620 x 4 is slow under a shared CPU


@pytest.fixture(scope="module")
def asr(data_dir):
    rows = [json.loads(line) for line in (data_dir / "asr_librispeech_test_clean" / "hypotheses.jsonl").open(encoding="utf-8")]
    systems: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        hyps, refs = systems.setdefault(row["system"], ([], []))
        hyps.append(row["hypothesis"])
        refs.append(row["reference"])
    assert len(systems) == 4
    return systems


def test_word_measures_equal_jiwer_without_normalisation(asr):
    for system, (hyps, refs) in asr.items():
        ours = compute_metrics(["wer", "mer", "wil"], hyps, refs, n_resamples=0)
        expected = jiwer.process_words(refs, hyps)
        assert ours["wer"].score == pytest.approx(expected.wer, abs=1e-12), system
        assert ours["mer"].score == pytest.approx(expected.mer, abs=1e-12), system
        assert ours["wil"].score == pytest.approx(expected.wil, abs=1e-12), system
        assert ours["wer"].extra["substitutions"] == expected.substitutions
        assert ours["wer"].extra["insertions"] == expected.insertions


def test_normalised_wer_and_cer_equal_jiwer(asr):
    words = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    chars = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.Strip(), jiwer.ReduceToListOfListOfChars()])
    options = {"wer": {"lowercase": True, "remove_punctuation": True}, "cer": {"lowercase": True, "remove_punctuation": True}}
    scores = {}
    for system, (hyps, refs) in asr.items():
        hyps, refs = hyps[:N_UTTERANCES], refs[:N_UTTERANCES]
        ours = compute_metrics(["wer", "cer"], hyps, refs, options=options, n_resamples=0)
        assert ours["wer"].score == pytest.approx(jiwer.wer(refs, hyps, reference_transform=words, hypothesis_transform=words), abs=1e-12)
        assert ours["cer"].score == pytest.approx(jiwer.cer(refs, hyps, reference_transform=chars, hypothesis_transform=chars), abs=1e-12)
        assert "lc:yes|punct:removed" in ours["wer"].signature
        scores[system] = ours["wer"].score
    assert min(scores, key=scores.get) == "mozilla-deepspeech"  # lower-case only system wins once case is normalised


def test_default_is_no_normalisation_and_recorded():
    result = get_metric("wer").compute(["Hello, world"], ["hello world"])
    assert result.score == 0.5 and "lc:no|punct:kept" in result.signature
    assert get_metric("wer", lowercase=True, remove_punctuation=True).compute(["Hello, world"], ["hello world"]).score == 0.0
