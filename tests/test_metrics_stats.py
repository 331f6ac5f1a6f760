"""Bootstrap intervals and paired significance tests on real system outputs."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from scipy.stats import binomtest

from evalkit.metrics import bootstrap_ci, get_metric, paired_bootstrap, paired_test, score_items
from evalkit.metrics.bootstrap import bootstrap_scores, mcnemar
from evalkit.scoring import load_jsonl_outputs

pytestmark = pytest.mark.unit


def _lines(path, n=None):
    return path.read_text(encoding="utf-8").split("\n")[:-1][:n]


def test_ci_is_scipys_percentile_interval_of_corpus_bleu_and_shrinks_with_more_items(data_dir, scipy_percentile_ci):
    folder = data_dir / "wmt21_news_text"
    hyps = _lines(folder / "newstest2021.en-de.hyp.UEdin.de.txt")
    refs = _lines(folder / "newstest2021.en-de.ref.A.de.txt")
    # the reference statistic: sacrebleu's per-segment counts, summed over the drawn segments, scored by sacrebleu
    segments = [sacrebleu.sentence_bleu(h, [r]) for h, r in zip(hyps, refs)]
    counts, totals = np.array([s.counts for s in segments]), np.array([s.totals for s in segments])
    lengths = np.array([(s.sys_len, s.ref_len) for s in segments])

    def corpus_bleu(items: np.ndarray) -> float:
        sys_len, ref_len = lengths[items].sum(0)
        return BLEU.compute_bleu(counts[items].sum(0), totals[items].sum(0), sys_len, ref_len, smooth_method="exp").score

    assert corpus_bleu(np.arange(len(hyps))) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    widths = []
    for n in (150, 1002):
        scored = score_items(["bleu"], hyps[:n], refs[:n])["bleu"]
        low, high = bootstrap_ci(scored.metric, scored.stats, n_resamples=300, seed=1)
        assert (low, high) == pytest.approx(scipy_percentile_ci(corpus_bleu, n, 300, seed=1), abs=1e-9)
        widths.append(high - low)
    assert widths[1] < widths[0] / 1.5  # ~ 1/sqrt(n): 2.6x narrower expected


def test_bootstrap_recomputes_the_corpus_statistic_and_is_seeded():
    metric = get_metric("wer")
    stats = metric.item_stats(["a b c d", "x"], ["a b c d", "y z w v u t"])
    # corpus WER pools edits over words: resamples are ratios of sums, not means of sentence WERs
    boot = bootstrap_scores(metric, stats, n_resamples=200, seed=3)
    possible = {0.0, 1.0, 6 / 10, 12 / 16, 6 / 14, 18 / 22}
    assert set(np.round(boot, 12)) <= {round(p, 12) for p in possible}
    assert np.array_equal(boot, bootstrap_scores(metric, stats, n_resamples=200, seed=3))


def test_mcnemar_is_the_exact_binomial_on_discordant_items():
    a = np.array([1] * 30 + [0] * 10 + [1] * 50 + [0] * 10)
    b = np.array([0] * 30 + [1] * 10 + [1] * 50 + [0] * 10)
    test = mcnemar(a, b)
    assert test.p_value == pytest.approx(binomtest(30, 40, 0.5).pvalue)
    assert test.delta == pytest.approx(0.2)
    acc = get_metric("acc")
    chosen = paired_test(acc, acc.item_stats(a, np.ones_like(a)), acc.item_stats(b, np.ones_like(b)))
    assert chosen.method == "mcnemar-exact"


def test_paired_bootstrap_agrees_with_mqm_where_differences_are_large(data_dir):
    outputs = load_jsonl_outputs(
        data_dir / "wmt_mqm" / "mqm_newstest2021_ende.joined.jsonl",
        id_field="seg_id", source_field="source", human_fields=["mqm_score"],
    )
    systems = [s for s in outputs.systems if not s.startswith("ref-")]
    mqm = {s: float(np.mean(outputs.human["mqm_score"][s])) for s in systems}
    stats = {s: score_items(["chrf"], outputs.systems[s], outputs.references)["chrf"] for s in systems}
    checked = 0
    for i, a in enumerate(systems):
        for b in systems[i + 1 :]:
            if abs(mqm[a] - mqm[b]) < 0.5:
                continue
            test = paired_bootstrap(stats[a].metric, stats[a].stats, stats[b].stats, n_resamples=500, seed=0)
            if test.p_value < 0.05:
                assert np.sign(test.delta) == np.sign(mqm[a] - mqm[b]), (a, b, test, mqm[a], mqm[b])
                checked += 1
    assert checked >= 2
    same = paired_bootstrap(stats[systems[0]].metric, stats[systems[0]].stats, stats[systems[0]].stats, n_resamples=100)
    assert same.delta == 0 and same.p_value == 1.0
