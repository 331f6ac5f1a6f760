"""Statistics a paper can cite: sacreBLEU-exact paired tests in `evalkit score`, and meta-eval's Kendall variants, intervals and JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import sacrebleu
from scipy import stats

from evalkit.cli import format_p_value, main
from evalkit.errors import EvalkitError
from evalkit.scoring import (
    PairwiseAccuracy,
    is_human_system,
    load_jsonl_outputs,
    load_text_outputs,
    meta_evaluate,
    score_systems,
)

pytestmark = pytest.mark.unit

SYSTEMS = ["Facebook-AI", "HuaweiTSC", "Online-W"]  # the first one is sacrebleu's baseline
N_SEGMENTS = 300
N_SAMPLES = 200


@pytest.fixture(scope="module")
def wmt_files(data_dir, tmp_path_factory):
    """The first 300 segments of three WMT21 en-de systems, reference A, and a byte-identical copy of the baseline."""
    folder = data_dir / "wmt21_news_text"
    out = tmp_path_factory.mktemp("wmt21")
    paths = []
    for name in SYSTEMS:
        lines = (folder / f"newstest2021.en-de.hyp.{name}.de.txt").read_text(encoding="utf-8").split("\n")[:N_SEGMENTS]
        paths.append(out / f"{name}.txt")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = out / "ref.txt"
    lines = (folder / "newstest2021.en-de.ref.A.de.txt").read_text(encoding="utf-8").split("\n")[:N_SEGMENTS]
    reference.write_text("\n".join(lines) + "\n", encoding="utf-8")
    copy = out / "copy.txt"
    shutil.copy(paths[0], copy)
    return paths, reference, copy


def sacrebleu_cli(paths, reference, test: str) -> dict[str, list[float | None]]:
    """p-values printed by `python -m sacrebleu REF -i BASELINE SYS... --paired-{bs,ar}` (default seed 12345), per metric."""
    env = {k: v for k, v in os.environ.items() if k != "SACREBLEU_SEED"}
    command = [sys.executable, "-m", "sacrebleu", str(reference), "-i", *map(str, paths), f"--paired-{test}",
               f"--paired-{test}-n", str(N_SAMPLES), "-m", "bleu", "chrf", "-f", "json"]
    rows = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)
    return {"bleu": [r["BLEU"]["p_value"] for r in rows], "chrf": [r["chrF2"]["p_value"] for r in rows]}


def test_sacrebleu_mode_equals_sacrebleu_paired_bs_exactly(wmt_files, tmp_path, monkeypatch):
    paths, reference, copy = wmt_files
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    expected = sacrebleu_cli([*paths, copy], reference, "bs")
    code = main(["score", "--hyp", *map(str, [*paths, copy]), "--ref", str(reference), "--metrics", "bleu,chrf",
                 "--paired-test", "sacrebleu", "--bootstrap", "50", "--paired-n", str(N_SAMPLES), "--output", str(tmp_path)])
    assert code == 0
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["paired_test"] == {"test": "sacrebleu", "baseline": "Facebook-AI", "seed": 12345, "resamples": N_SAMPLES}
    for metric in ("bleu", "chrf"):
        tests = {frozenset((t["a"], t["b"])): t for t in written["pairwise"][metric]}
        for system, p_value in zip([*SYSTEMS[1:], "copy"], expected[metric][1:]):
            test = tests[frozenset(("Facebook-AI", system))]
            assert test["method"] == "sacrebleu-paired-bs"
            assert test["p_value"] == p_value, (metric, system)  # exactly, not approximately
    # a pair without the baseline: the same bits as sacrebleu run with either of the two as its baseline
    for order in ((1, 2), (2, 1)):
        other = sacrebleu_cli([paths[order[0]], paths[order[1]]], reference, "bs")
        tests = {frozenset((t["a"], t["b"])): t for t in written["pairwise"]["chrf"]}
        assert tests[frozenset(SYSTEMS[1:])]["p_value"] == other["chrf"][1]
    # sacrebleu's count is "resampled centred |delta| > observed |delta|": a system against itself has
    # observed 0 and every centred delta 0, so no resample counts and p = 1/(n+1), its smallest value (not 1.0)
    assert expected["bleu"][-1] == expected["chrf"][-1] == 1 / (N_SAMPLES + 1)


def test_approximate_randomization_equals_sacrebleu_paired_ar_exactly(wmt_files):
    paths, reference, copy = wmt_files
    expected = sacrebleu_cli([*paths, copy], reference, "ar")
    outputs = load_text_outputs([*paths, copy], [reference])
    report = score_systems(outputs, ["bleu", "chrf"], n_resamples=20, seed=12345,
                           paired_test="approximate-randomization", paired_resamples=N_SAMPLES)
    for metric in ("bleu", "chrf"):
        for system, p_value in zip([*SYSTEMS[1:], "copy"], expected[metric][1:]):
            pair = ("Facebook-AI", system) if ("Facebook-AI", system) in report.pairwise[metric] else (system, "Facebook-AI")
            assert report.pairwise[metric][pair].p_value == p_value, (metric, system)
    # identical systems: every shuffle gives two identical pseudo-systems, again p = 1/(n+1) as sacrebleu returns
    assert expected["bleu"][-1] == 1 / (N_SAMPLES + 1)


def test_identical_systems_and_default_bootstrap(wmt_files, capsys):
    paths, reference, copy = wmt_files
    outputs = load_text_outputs([paths[0], copy, paths[1]], [reference])
    same = ("Facebook-AI", "copy") if ("Facebook-AI", "copy") in score_systems(outputs, "bleu", n_resamples=20).pairwise["bleu"] else ("copy", "Facebook-AI")
    sacre = score_systems(outputs, "bleu", n_resamples=20, paired_test="sacrebleu", paired_resamples=100).pairwise["bleu"][same]
    assert sacre.delta == 0 and sacre.p_value == 1 / 101  # sacrebleu's convention (see above), reproduced
    ours = score_systems(outputs, "bleu", n_resamples=100).pairwise["bleu"][same]
    assert ours.method == "paired-bootstrap" and ours.p_value == 1.0  # evalkit's two-sided shifted bootstrap
    assert format_p_value(1 / 1001, 1000) == "<0.001" and format_p_value(1 / 201, 200) == "<0.005"
    assert format_p_value(0.0312, 1000) == "0.031" and format_p_value(2e-9) == "2.0e-09"
    # every metric asked gets its pairwise table
    assert main(["score", "--hyp", str(paths[0]), str(paths[1]), "--ref", str(reference), "--metrics", "bleu,chrf",
                 "--bootstrap", "30"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "pairwise bleu" in out and "pairwise chrf" in out and "two-sided shifted paired bootstrap" in out


@pytest.fixture(scope="module")
def mqm_subset(data_dir, tmp_path_factory):
    """The MQM en-de rows of the first 60 rated segments (all 10 systems, 600 rows)."""
    rows = [json.loads(line) for line in (data_dir / "wmt_mqm" / "mqm_newstest2021_ende.joined.jsonl").open(encoding="utf-8")]
    segments = sorted({r["seg_id"] for r in rows})[:60]
    path = tmp_path_factory.mktemp("mqm") / "mqm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["seg_id"] in segments), encoding="utf-8")
    return path


@pytest.mark.parametrize("variant", ["b", "c"])
def test_meta_eval_json_equals_scipy(mqm_subset, tmp_path, variant, capsys, scipy_percentile_ci):
    code = main(["meta-eval", "--jsonl", str(mqm_subset), "--id-field", "seg_id", "--human-field", "mqm_score",
                 "--metrics", "bleu,chrf", "--kendall", variant, "--bootstrap", "40", "--output", str(tmp_path)])
    assert code == 0
    assert f"kendall tau-{variant}" in capsys.readouterr().out
    written = json.loads((tmp_path / "meta_eval.json").read_text())
    rows = {(r["metric"], r["level"]): r for r in written["correlations"]}
    outputs = load_jsonl_outputs(mqm_subset, id_field="seg_id", human_fields=["mqm_score"])
    systems = list(outputs.systems)
    refs = [r[0] for r in outputs.references]
    human = [v for s in systems for v in outputs.human["mqm_score"][s]]
    means = [np.mean(outputs.human["mqm_score"][s]) for s in systems]
    sentence = {"bleu": lambda h, r: sacrebleu.sentence_bleu(h, [r]).score, "chrf": lambda h, r: sacrebleu.sentence_chrf(h, [r]).score}
    corpus = {"bleu": lambda hs: sacrebleu.corpus_bleu(hs, [refs]).score, "chrf": lambda hs: sacrebleu.corpus_chrf(hs, [refs]).score}
    correlation = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": partial(stats.kendalltau, variant=variant)}
    n, seed = len(refs), written["config"]["seed"]
    # intervals: scipy's percentile bootstrap drawing from meta-eval's generator (items first, then systems)
    pooled = np.arange(len(systems))[:, None] * n  # a drawn item brings its row of every system
    draws = {"segment": (n, lambda items: (pooled + items).ravel()), "system": (len(systems), lambda drawn: drawn)}
    for metric in ("bleu", "chrf"):
        segment = [sentence[metric](h, r) for s in systems for h, r in zip(outputs.systems[s], refs)]
        system = [corpus[metric](outputs.systems[s]) for s in systems]
        for level, x, y in (("segment", segment, human), ("system", system, means)):
            row = rows[(metric, level)]
            assert row["kendall_variant"] == variant and row["n"] == len(x)
            assert row["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-12)
            assert row["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)
            assert row["kendall"] == pytest.approx(stats.kendalltau(x, y, variant=variant)[0], rel=1e-12)
            x, y = np.asarray(x), np.asarray(y)
            size, rows_of = draws[level]
            for name, function in correlation.items():
                rng = np.random.default_rng(seed)
                if level == "system":
                    rng.integers(0, n, size=(40, n))  # the item draws come first
                reference = scipy_percentile_ci(lambda drawn: function(x[rows_of(drawn)], y[rows_of(drawn)])[0],  # noqa: B023
                                                size, 40, rng=rng)
                assert row[f"{name}_ci"] == pytest.approx(reference, abs=1e-12), (metric, level, name)
    assert written["config"]["kendall"] == variant and written["config"]["bootstrap"] == 40


def test_meta_eval_intervals_follow_the_seed(mqm_subset):
    outputs = load_jsonl_outputs(mqm_subset, id_field="seg_id", human_fields=["mqm_score"])

    def intervals(seed):
        return [(r.level, r.ci) for r in meta_evaluate(outputs, ["chrf"], n_resamples=30, seed=seed)]

    first, again, other = intervals(3), intervals(3), intervals(4)
    assert first == again
    assert all(a[1][name] != b[1][name] for a, b in zip(first, other) for name in ("pearson", "spearman", "kendall"))


def test_acc23_on_a_hand_computed_example():
    # group 1: human [0, 0, -1, -5], metric [0.50, 0.52, 0.40, 0.10]; its 6 pairs:
    #   (0,1) human tie, metric differs by 0.02 -> wrong (T_h) at eps < 0.02, right (T_hm) from eps = 0.02
    #   the other 5 pairs are concordant (C) with metric gaps 0.10, 0.40, 0.12, 0.42, 0.30 -> right while eps < their gap
    #   acc(eps=0) = 5/6; acc(eps=0.02) = 6/6; acc(eps=0.10) = 5/6 ... so alone: 1.0 at eps = 0.02
    one = ([0.0, 0.0, -1.0, -5.0], [0.50, 0.52, 0.40, 0.10])
    accuracy, epsilon = PairwiseAccuracy([one])()
    assert accuracy == pytest.approx(1.0) and epsilon == pytest.approx(0.02)
    # group 2: human [1, 2, 3], metric [3, 2, 1]: 3 discordant pairs, right at no eps (ties by the metric are T_m) -> 0
    # the mean over the two groups: eps=0: (5/6 + 0)/2 = 5/12; eps=0.02: (1 + 0)/2 = 1/2; eps=1: (1/6 + 0)/2 = 1/12
    two = ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    accuracy, epsilon = PairwiseAccuracy([one, two])()
    assert accuracy == pytest.approx(0.5) and epsilon == pytest.approx(0.02)
    # tau-b of group 1 counts the human tie as neither concordant nor discordant: 5 / sqrt(5 * 6)
    assert stats.kendalltau(*one)[0] == pytest.approx(5 / np.sqrt(30))
    # a bootstrap draw that takes group 2 twice: (1 + 0 + 0)/3 at eps=0.02
    assert PairwiseAccuracy([one, two]).many(np.array([[1, 2]]))[0] == pytest.approx(1 / 3)


def test_acc23_in_meta_eval_equals_brute_force(mqm_subset, tmp_path, scipy_percentile_ci):
    outputs = load_jsonl_outputs(mqm_subset, id_field="seg_id", human_fields=["mqm_score"])
    rows = {r.level: r for r in meta_evaluate(outputs, ["chrf"], kendall="acc23", n_resamples=20, output_dir=tmp_path)}
    assert np.isnan(rows["segment"].kendall) and "kendall" not in rows["segment"].ci
    # brute force over every candidate epsilon, pairs of systems within each item, mean over items
    systems, refs = list(outputs.systems), [r[0] for r in outputs.references]
    metric = np.array([[sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(outputs.systems[s], refs)] for s in systems]).T
    human = np.array([outputs.human["mqm_score"][s] for s in systems], dtype=float).T
    i, j = np.triu_indices(len(systems), 1)
    dh, dm = human[:, i] - human[:, j], metric[:, i] - metric[:, j]
    per_item = []  # [epsilon, item]: each item's share of rightly ordered pairs at that epsilon
    for eps in sorted({0.0, *np.abs(dm).ravel()}):
        tied = np.abs(dm) <= eps
        right = np.where(dh == 0, tied, ~tied & (np.sign(dh) == np.sign(dm)))
        per_item.append(right.mean(axis=1))
    per_item = np.array(per_item)
    best = per_item.mean(axis=1).max()
    assert rows["item"].kendall == pytest.approx(best, abs=1e-12) and rows["item"].kendall_n == 60
    # the interval: the same brute force on each resample of items (epsilon chosen again), meta-eval's seed-0 draws
    reference = scipy_percentile_ci(lambda items: per_item[:, items].mean(axis=1).max(), 60, 20, rng=np.random.default_rng(0))
    assert rows["item"].ci["kendall"] == pytest.approx(reference, abs=1e-12)
    written = json.loads((tmp_path / "meta_eval.json").read_text())
    item = next(r for r in written["correlations"] if r["level"] == "item")
    assert item["kendall_variant"] == "acc23" and item["epsilon"] == rows["item"].epsilon
    assert next(r for r in written["correlations"] if r["level"] == "segment")["kendall"] is None


def test_exclude_systems_and_human_translations(mqm_subset, tmp_path):
    assert all(map(is_human_system, ["ref-C", "ref-D", "refA", "Human-B.0", "reference", "REF_1"]))
    assert not any(map(is_human_system, ["Reformer", "UEdin", "Online-W", "HuaweiTSC", "humane-mt"]))
    code = main(["meta-eval", "--jsonl", str(mqm_subset), "--id-field", "seg_id", "--human-field", "mqm_score", "--metrics", "chrf",
                 "--bootstrap", "0", "--exclude-systems", "Nemo,UEdin", "--exclude-human", "--output", str(tmp_path)])
    assert code == 0
    written = json.loads((tmp_path / "meta_eval.json").read_text())
    assert written["config"]["excluded_systems"] == ["Nemo", "UEdin", "ref-C", "ref-D"]
    assert set(written["config"]["systems"]) == {"Facebook-AI", "HuaweiTSC", "Online-W", "VolcTrans-AT", "VolcTrans-GLAT", "eTranslation"}
    rows = {r["level"]: r for r in written["correlations"]}
    assert rows["system"]["n"] == 6 and rows["segment"]["n"] == 6 * 60 and "pearson_ci" not in rows["system"]
    outputs = load_jsonl_outputs(mqm_subset, id_field="seg_id", human_fields=["mqm_score"])
    with pytest.raises(EvalkitError, match="no system 'Nemo-X'"):
        meta_evaluate(outputs, ["chrf"], exclude_systems=["Nemo-X"])
