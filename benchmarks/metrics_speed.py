"""Speed: evalkit's BLEU + chrF + ROUGE on 5,000 segments vs calling the three libraries directly.

    python benchmarks/metrics_speed.py [--segments 5000] [--repeats 3]

The direct baseline is what a careful user would write: sacrebleu.corpus_bleu,
sacrebleu.corpus_chrf, and rouge-score over the four ROUGE types with the
summaries split into newline-joined sentences for ROUGE-Lsum (without that
split Lsum silently equals ROUGE-L). evalkit is timed without and with the
bootstrap intervals (1000 resamples), which the direct calls do not compute.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import sacrebleu
from rouge_score import rouge_scorer

from evalkit.metrics import compute_metrics
from evalkit.metrics.rouge import for_lsum

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt21_news_text"
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def load(n: int) -> tuple[list[str], list[str]]:
    refs = (DATA / "newstest2021.de-en.ref.A.en.txt").read_text(encoding="utf-8").split("\n")[:-1]
    hyps: list[str] = []
    references: list[str] = []
    for path in sorted(DATA.glob("newstest2021.de-en.hyp.*")):
        hyps += path.read_text(encoding="utf-8").split("\n")[:-1]
        references += refs
    return hyps[:n], references[:n]


def direct(hyps: list[str], refs: list[str]) -> None:
    sacrebleu.corpus_bleu(hyps, [refs])
    sacrebleu.corpus_chrf(hyps, [refs])
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=True)
    scores = [scorer.score(for_lsum(r), for_lsum(h)) for h, r in zip(hyps, refs)]
    {t: sum(s[t].fmeasure for s in scores) / len(scores) for t in TYPES}


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hyps, refs = load(args.segments)
    names = ["bleu", "chrf", *TYPES]
    rows = {
        "libraries directly": best_of(args.repeats, lambda: direct(hyps, refs)),
        "evalkit (no CI)": best_of(args.repeats, lambda: compute_metrics(names, hyps, refs, n_resamples=0)),
        "evalkit (+1000-resample CIs)": best_of(args.repeats, lambda: compute_metrics(names, hyps, refs, n_resamples=1000)),
    }
    print(f"{len(hyps)} segments, BLEU + chrF + ROUGE-1/2/L/Lsum, best of {args.repeats}")
    for label, seconds in rows.items():
        print(f"  {label:30s} {seconds:7.2f} s  ({seconds / rows['libraries directly']:.2f}x)")


if __name__ == "__main__":
    main()
