"""Score existing system outputs without a model (`evalkit score`) and check metrics against humans (`evalkit meta-eval`).

Inputs are plain text files (one segment per line: one hypothesis file per
system, one or more reference files) or one jsonl file with one row per
(system, segment), the shape of the WMT MQM and SummEval files. Every system
is scored on the same items, so each metric gets a bootstrap interval per
system and a paired significance test per pair of systems.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError, not_utf8
from evalkit.metrics.base import MetricResult, ci_key
from evalkit.metrics.bootstrap import (
    PAIRED_TESTS,
    SACREBLEU_AR_TRIALS,
    PairedTest,
    bootstrap_scores,
    mcnemar,
    paired_from_resamples,
    percentile_ci,
    sacrebleu_paired,
    sacrebleu_seed,
)
from evalkit.metrics.registry import build_metrics, expand_names, score_items
from evalkit.progress import step
from evalkit.results import ResultsRecord, atomic_write_text, run_metadata

QUIET_S = 2.0  # bootstrap and paired-test steps are reported only when one takes longer


@dataclass
class SystemOutputs:
    """Several systems' outputs on the same items, with the references (and sources, human scores) per item.

    ``name`` names the data set in results.json: the input file's name without its extension
    (the jsonl file, or the first reference file).
    """

    systems: dict[str, list[str]]
    references: list[list[str]]
    sources: list[str] | None = None
    human: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # field -> system -> per item
    name: str = "outputs"

    @property
    def n_items(self) -> int:
        return len(self.references)


def _read_lines(path: Path) -> list[str]:
    """Lines split on "\n" only (str.splitlines would also split on U+2028 and break the alignment)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise EvalkitError(f"cannot read {path}: {error.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if not text:
        raise EvalkitError(f"{path} has no lines; give a file with one segment per line")
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def short_names(paths: Sequence[Path]) -> list[str]:
    """System names from file names, dropping the dotted parts all files share (newstest2021.en-de.hyp.X.de -> X)."""
    parts = [Path(p).name.split(".") for p in paths]
    if len(parts) < 2:
        return [Path(p).name for p in paths]
    prefix = 0
    while all(len(p) > prefix + 1 and p[prefix] == parts[0][prefix] for p in parts):
        prefix += 1
    suffix = 0
    while all(len(p) > prefix + suffix + 1 and p[-1 - suffix] == parts[0][-1 - suffix] for p in parts):
        suffix += 1
    names = [".".join(p[prefix : len(p) - suffix]) for p in parts]
    return names if len(set(names)) == len(names) else [Path(p).name for p in paths]


def load_text_outputs(
    hypothesis_files: Sequence[Path], reference_files: Sequence[Path], source_file: Path | None = None
) -> SystemOutputs:
    """One hypothesis file per system and several reference files, all with one segment per line."""
    if not hypothesis_files or not reference_files:
        raise EvalkitError("score: give at least one hypothesis file and one reference file")
    references = [_read_lines(p) for p in reference_files]
    systems = {name: _read_lines(p) for name, p in zip(short_names(hypothesis_files), hypothesis_files)}
    sources = _read_lines(source_file) if source_file else None
    n = len(references[0])
    for label, lines in [*zip(map(str, reference_files), references), *zip(map(str, hypothesis_files), systems.values()), ("sources", sources or [None] * n)]:
        if len(lines) != n:
            raise EvalkitError(f"score: {label} has {len(lines)} lines but the first reference file has {n}; files must be line-aligned")
    return SystemOutputs(systems, [list(r) for r in zip(*references)], sources, name=Path(reference_files[0]).stem)


def load_jsonl_outputs(
    path: Path,
    system_field: str = "system",
    prediction_field: str = "hypothesis",
    reference_field: str = "reference",
    source_field: str | None = None,
    id_field: str | None = None,
    human_fields: Sequence[str] = (),
) -> SystemOutputs:
    """Rows of (system, segment); items are aligned by ``id_field`` when given, else by row order per system."""
    rows_by_system: dict[str, list[dict]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise EvalkitError(f"{path}:{line_no}: not valid JSON; give one JSON object per line") from None
                optional = [f for f in (source_field, id_field) if f]
                needed = [system_field, prediction_field, reference_field, *optional, *human_fields]
                missing = [f for f in needed if f not in row]
                if missing:
                    raise EvalkitError(f"{path}:{line_no}: no field {missing[0]!r}; fields there: {', '.join(row)}")
                rows_by_system.setdefault(str(row[system_field]), []).append(row)
    except OSError as error:
        raise EvalkitError(f"cannot read {path}: {error.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if not rows_by_system:
        raise EvalkitError(f"{path} has no lines; give one JSON object per line with the fields {system_field!r}, {prediction_field!r}, {reference_field!r}")
    first = next(iter(rows_by_system.values()))
    if id_field:
        common = set.intersection(*({r[id_field] for r in rows} for rows in rows_by_system.values()))
        order = [r[id_field] for r in first if r[id_field] in common]
        rows_by_system = {s: sorted((r for r in rows if r[id_field] in common), key=lambda r: order.index(r[id_field])) for s, rows in rows_by_system.items()}
        first = next(iter(rows_by_system.values()))
    else:
        counts = {s: len(rows) for s, rows in rows_by_system.items()}
        if len(set(counts.values())) != 1:
            raise EvalkitError(f"{path}: systems have different row counts {counts}; pass an id field to align them")

    def text(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    return SystemOutputs(
        systems={s: [str(r[prediction_field]) for r in rows] for s, rows in rows_by_system.items()},
        references=[text(r[reference_field]) for r in first],
        sources=[r[source_field] for r in first] if source_field else None,
        human={h: {s: [r[h] for r in rows] for s, rows in rows_by_system.items()} for h in human_fields},
        name=Path(path).stem,
    )


@dataclass
class ScoreReport:
    """Per-system results with intervals, the ranking by the first metric, and pairwise tests."""

    metrics: list[str]
    results: dict[str, dict[str, MetricResult]]
    ranking: list[str]
    pairwise: dict[str, dict[tuple[str, str], PairedTest]]
    higher_is_better: dict[str, bool]
    meta: dict[str, Any] = field(default_factory=dict)
    paired_test: str = "bootstrap"  # one of PAIRED_TESTS
    baseline: str | None = None  # the first system given: sacrebleu's baseline
    paired_seed: int | None = None
    paired_resamples: int | None = None
    dataset: str = "outputs"  # SystemOutputs.name
    n_items: int = 0

    def record(self) -> ResultsRecord:
        """results.json's record: ``results`` is ``{dataset: {system: {metric: value, metric_ci: [lo, hi]}}}``, systems
        in rank order; the ranking, the pairwise tests and how they were run are score's own sections."""
        pairwise = {
            name: [
                {"a": a, "b": b, "method": t.method, "delta": t.delta, "p_value": t.p_value, "delta_ci": list(t.ci) if t.ci else None}
                for (a, b), t in tests.items()
            ]
            for name, tests in self.pairwise.items()
        }
        paired_test = {"test": self.paired_test, "baseline": self.baseline, "seed": self.paired_seed, "resamples": self.paired_resamples}
        return ResultsRecord.from_metrics(
            "score", {self.dataset: {system: self.results[system] for system in self.ranking}}, {self.dataset: self.n_items}, self.meta,
            sections={"ranking": self.ranking, "pairwise": pairwise, "paired_test": paired_test, "higher_is_better": self.higher_is_better},
        )


def score_systems(
    outputs: SystemOutputs,
    metrics: str | Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = None,
    output_dir: Path | None = None,
    config: dict[str, Any] | None = None,
    paired_test: str = "bootstrap",
    paired_resamples: int | None = None,
) -> ScoreReport:
    """Score every system with every metric, rank by the first metric, test every pair of systems.

    All systems share one set of bootstrap resamples (same seed, same items),
    so each system is resampled once and, with ``paired_test="bootstrap"``,
    every paired test is a difference of those resamples (McNemar's exact test
    for 0/1 metrics). ``paired_test="sacrebleu"`` runs sacreBLEU's own
    ``--paired-bs`` code and ``"approximate-randomization"`` its ``--paired-ar``
    code on each pair (any metric: see ``sacrebleu_paired``); their p-values
    equal sacrebleu's for the same seed and count. ``seed`` defaults to 0 for
    ``bootstrap`` and to sacrebleu's ($SACREBLEU_SEED, else 12345) for the
    other two; ``paired_resamples`` defaults to ``n_resamples`` (10000 trials
    for approximate randomization, sacrebleu's default).
    """
    names = expand_names(metrics)
    if not names:
        raise EvalkitError("score: no metrics given; e.g. --metrics bleu,chrf")
    if n_resamples < 1:
        raise EvalkitError("score: intervals and paired tests need at least one bootstrap resample")
    if paired_test not in PAIRED_TESTS:
        raise EvalkitError(f"score: unknown paired test {paired_test!r}; choose one of {', '.join(PAIRED_TESTS)}")
    if paired_resamples is not None and paired_resamples < 1:
        raise EvalkitError(f"score: the paired test needs at least one resample, got {paired_resamples}")
    if seed is None:
        seed = 0 if paired_test == "bootstrap" else sacrebleu_seed()
    if paired_resamples is None:
        paired_resamples = SACREBLEU_AR_TRIALS if paired_test == "approximate-randomization" else n_resamples
    results: dict[str, dict[str, MetricResult]] = {}
    stats: dict[str, dict[str, Any]] = {}
    boots: dict[str, dict[str, np.ndarray]] = {}
    built = build_metrics(names, options)
    for system, predictions in outputs.systems.items():
        scored = score_items(built, predictions, outputs.references, outputs.sources, label=system)  # a progress step per metric
        results[system], stats[system], boots[system] = {}, {}, {}
        for name, item in scored.items():
            result = item.result()
            with step(f"bootstrap {system}: {name} ({n_resamples} resamples)", quiet_below=QUIET_S):
                boots[system][name] = bootstrap_scores(item.metric, item.stats, n_resamples, seed)
            result.ci = percentile_ci(boots[system][name], confidence)
            results[system][name] = result
            stats[system][name] = item
    any_system = next(iter(stats))
    higher = {name: stats[any_system][name].metric.higher_is_better for name in names}
    primary = names[0]
    ranking = sorted(results, key=lambda s: results[s][primary].score, reverse=higher[primary])
    pairwise: dict[str, dict[tuple[str, str], PairedTest]] = {name: {} for name in names}
    if paired_test == "bootstrap" and paired_resamples != n_resamples:
        boots = {s: {n: bootstrap_scores(stats[s][n].metric, stats[s][n].stats, paired_resamples, seed) for n in names} for s in stats}
    for a, b in combinations(ranking, 2):
        for name in names:
            metric = stats[a][name].metric
            if paired_test != "bootstrap":
                # p is symmetric in the two systems: the same bits as sacrebleu with either one as the baseline
                kind = "bs" if paired_test == "sacrebleu" else "ar"
                with step(f"paired {paired_test} test {a} vs {b}: {name}", quiet_below=QUIET_S):
                    pairwise[name][(a, b)] = sacrebleu_paired(metric, stats[a][name].stats, stats[b][name].stats, kind, paired_resamples, seed)
            elif metric.binary_items:
                pairwise[name][(a, b)] = mcnemar(stats[a][name].stats[:, 0], stats[b][name].stats[:, 0])
            else:
                observed = results[a][name].score - results[b][name].score
                pairwise[name][(a, b)] = paired_from_resamples(observed, boots[a][name] - boots[b][name], confidence)
    report = ScoreReport(names, results, ranking, pairwise, higher, paired_test=paired_test, baseline=next(iter(outputs.systems)),
                         paired_seed=seed, paired_resamples=paired_resamples, dataset=outputs.name, n_items=outputs.n_items)
    if output_dir is not None:
        write_report(report, Path(output_dir), {"metrics": names, "n_items": outputs.n_items,
                                                 "bootstrap": n_resamples, "confidence": confidence, "seed": seed,
                                                 "paired_test": paired_test, "paired_resamples": paired_resamples, **(config or {})})
    return report


def write_report(report: ScoreReport, output_dir: Path, config: dict[str, Any]) -> Path:
    """DIR/results.json, the schema and meta block of `evalkit run` (versions, git hash, hardware, settings)."""
    report.meta = run_metadata(config, device="cpu")
    return report.record().write(output_dir)


# ---------------------------------------------------------------- meta-evaluation

KENDALL_VARIANTS = ("b", "c", "acc23")
# Human translations rated like systems: WMT names them ref-A, refB, Human-A.0, reference-C ...; not "Reformer".
_HUMAN_SYSTEM = re.compile(r"(?i:reference|ref|human)(?:$|[-_. ]|[A-Z0-9])")


def is_human_system(name: str) -> bool:
    """True for names that start with "ref"/"reference"/"human" (any case) followed by the end, a separator, a capital or a digit."""
    return bool(_HUMAN_SYSTEM.match(name))


def select_systems(
    outputs: SystemOutputs, exclude: Sequence[str] = (), exclude_human: bool = False
) -> tuple[SystemOutputs, list[str]]:
    """The outputs without the named systems (and, with ``exclude_human``, the human translations); also the dropped names."""
    unknown = [s for s in exclude if s not in outputs.systems]
    if unknown:
        raise EvalkitError(f"--exclude-systems: no system {unknown[0]!r}; systems: {', '.join(outputs.systems)}")
    dropped = [s for s in outputs.systems if s in exclude or (exclude_human and is_human_system(s))]
    kept = [s for s in outputs.systems if s not in dropped]
    if len(kept) < 2:
        raise EvalkitError(f"meta-eval: {len(kept)} system(s) left after excluding {', '.join(dropped)}; correlations need at least two")
    human = {h: {s: by_system[s] for s in kept} for h, by_system in outputs.human.items()}
    return replace(outputs, systems={s: outputs.systems[s] for s in kept}, human=human), dropped


@dataclass
class Correlation:
    metric: str
    human: str
    level: str  # "segment" (all system x item pairs pooled), "item" (per item across systems, averaged), "system"
    pearson: float
    spearman: float
    kendall: float
    n: int
    kendall_variant: str = "b"  # "b", "c" (scipy kendalltau variant) or "acc23" (WMT23 pairwise accuracy with tie calibration)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # statistic -> bootstrap percentile interval
    epsilon: float | None = None  # acc23: the metric-difference tie threshold that maximised the accuracy
    kendall_n: int | None = None  # acc23 at item level: the items with at least one pair (when it differs from n)

    def to_dict(self) -> dict[str, Any]:
        """Every value at full precision; nan (undefined) as null."""

        def clean(value):
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

        row: dict[str, Any] = {"metric": self.metric, "human": self.human, "level": self.level, "n": self.n}
        for name in ("pearson", "spearman", "kendall"):
            row[name] = clean(getattr(self, name))
            if name in self.ci:
                row[ci_key(name)] = [clean(v) for v in self.ci[name]]
        row["kendall_variant"] = self.kendall_variant
        if self.epsilon is not None:
            row["epsilon"] = self.epsilon
        if self.kendall_n is not None:
            row["kendall_n"] = self.kendall_n
        return row


def correlations(x: Sequence[float], y: Sequence[float], kendall: str = "b") -> tuple[float, float, float]:
    """Pearson r, Spearman rho and Kendall tau-b or tau-c (scipy's ``variant``); nan when either side is constant."""
    from scipy import stats

    if kendall not in ("b", "c"):
        raise EvalkitError(f"correlations: Kendall variant must be 'b' or 'c' here, got {kendall!r}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]), float(stats.kendalltau(x, y, variant=kendall)[0])


_CHUNK_CELLS = 4_000_000  # pair-weight cells per chunk of bootstrap resamples (32 MB of float64)


class PairwiseAccuracy:
    """WMT23's segment-level statistic: pairwise accuracy with tie calibration, acc_eq (Deutsch et al. 2023, "Ties Matter").

    Over the pairs inside each group (WMT23: the systems' translations of one
    source segment), a pair is correct when metric and human order it the same
    way or both tie it: acc_eq = (C + T_hm) / (C + D + T_h + T_m + T_hm). The
    metric is first given ties: a pair whose absolute metric difference is at
    most epsilon counts as a metric tie, and one epsilon for all groups is chosen
    from 0 and every observed difference to maximise the mean over groups of
    each group's acc_eq (the smallest such epsilon). This is mt-metrics-eval's
    ``KendallWithTiesOpt(variant="acc23", sample_rate=1.0)``. ``ids`` (optional,
    per group) leaves out pairs of the same id: a system drawn twice by a
    bootstrap is not a pair.
    """

    def __init__(self, groups: Sequence[tuple[np.ndarray, np.ndarray]], ids: Sequence[np.ndarray] | None = None) -> None:
        diffs, owner, correct, gain = [], [], [], []
        self.n_groups = len(groups)
        for g, (human, metric) in enumerate(groups):
            human, metric = np.asarray(human, dtype=np.float64), np.asarray(metric, dtype=np.float64)
            i, j = np.triu_indices(len(human), 1)
            if ids is not None:
                keep = ids[g][i] != ids[g][j]
                i, j = i[keep], j[keep]
            dh, dm = human[i] - human[j], metric[i] - metric[j]
            human_tie = dh == 0
            right = np.where(human_tie, dm == 0, (dm != 0) & (np.sign(dh) == np.sign(dm)))
            diffs.append(np.abs(dm))
            owner.append(np.full(len(i), g))
            correct.append(right.astype(np.float64))
            gain.append(human_tie.astype(np.float64) - right)  # once tied by the metric, a pair is right iff humans tie it
        diff = np.concatenate(diffs) if diffs else np.zeros(0)
        order = np.argsort(diff, kind="stable")
        self.diff = diff[order]
        self.owner = np.concatenate(owner)[order] if owner else np.zeros(0, dtype=int)
        self.correct = np.concatenate(correct)[order] if correct else np.zeros(0)
        self.gain = np.concatenate(gain)[order] if gain else np.zeros(0)
        self.pairs = np.bincount(self.owner, minlength=self.n_groups).astype(np.float64)
        self.run_end = np.r_[np.nonzero(np.diff(self.diff))[0], len(self.diff) - 1] if len(self.diff) else np.zeros(0, dtype=int)
        self.thresholds = np.r_[0.0, self.diff[self.run_end]]

    @property
    def n_rows(self) -> int:
        """Groups with at least one pair (the average runs over these)."""
        return int(np.count_nonzero(self.pairs))

    def __call__(self, counts: np.ndarray | None = None) -> tuple[float, float]:
        """(acc_eq, epsilon); ``counts`` [G] weights the groups (a bootstrap's draw counts), default once each."""
        values = self._values(np.ones((1, self.n_groups)) if counts is None else np.asarray(counts, dtype=np.float64)[None])[0]
        if not len(values):
            return math.nan, math.nan
        best = int(np.argmax(values))
        return float(values[best]), float(self.thresholds[best])

    def many(self, counts: np.ndarray) -> np.ndarray:
        """The optimised acc_eq under each row of ``counts`` [R, G] (epsilon chosen again on each)."""
        out = np.empty(len(counts))
        chunk = max(1, _CHUNK_CELLS // max(len(self.diff), 1))
        for start in range(0, len(counts), chunk):
            values = self._values(np.asarray(counts[start : start + chunk], dtype=np.float64))
            out[start : start + chunk] = values.max(axis=1) if values.shape[1] else math.nan
        return out

    def _values(self, counts: np.ndarray) -> np.ndarray:
        """[R, thresholds]: the mean over groups of acc_eq at each candidate epsilon."""
        if not len(self.diff):
            return np.zeros((len(counts), 0))
        has_pairs = self.pairs > 0
        total = (counts * has_pairs).sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_pair = np.where(has_pairs, counts / np.where(has_pairs, self.pairs, 1.0), 0.0) / total
        weights = per_pair[:, self.owner]
        base = weights @ self.correct
        return np.concatenate([base[:, None], base[:, None] + np.cumsum(weights * self.gain, axis=1)[:, self.run_end]], axis=1)



def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return percentile_ci(finite, confidence) if len(finite) else (math.nan, math.nan)


def _draw_counts(draws: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.bincount(row, minlength=size) for row in draws]).astype(np.float64)


def meta_evaluate(
    outputs: SystemOutputs,
    metrics: str | Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    *,
    kendall: str = "b",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    exclude_systems: Sequence[str] = (),
    exclude_human: bool = False,
    output_dir: Path | None = None,
    config: dict[str, Any] | None = None,
) -> list[Correlation]:
    """Correlation of each metric with each human score at segment, item-grouped and system level, with bootstrap intervals.

    All systems are scored in one call per metric (their items concatenated), so
    model-based metrics batch over everything at once. Items whose human score
    is missing (None) are left out of the segment-level correlations.
    ``kendall``: "b" or "c" (scipy's tau-b / tau-c), or "acc23" (WMT23's
    acc_eq, see ``PairwiseAccuracy``: at item and system level; the pooled
    segment row has none, WMT23 defines it per item). Intervals
    (``n_resamples`` > 0) are percentile bootstrap intervals: items are
    resampled for the segment and item rows (one draw shared by every metric),
    systems for the system rows. ``output_dir``: DIR/meta_eval.json.
    """
    if not outputs.human:
        raise EvalkitError("meta-eval: no human score field given; e.g. --human-field mqm_score")
    if kendall not in KENDALL_VARIANTS:
        raise EvalkitError(f"meta-eval: unknown Kendall variant {kendall!r}; choose one of {', '.join(KENDALL_VARIANTS)}")
    if n_resamples < 0:
        raise EvalkitError(f"meta-eval: the bootstrap needs 0 (no intervals) or more resamples, got {n_resamples}")
    outputs, dropped = select_systems(outputs, exclude_systems, exclude_human)
    names = expand_names(metrics)
    systems = list(outputs.systems)
    n, n_systems = outputs.n_items, len(systems)
    predictions = [p for s in systems for p in outputs.systems[s]]
    references = outputs.references * len(systems)
    sources = outputs.sources * len(systems) if outputs.sources else None
    scored = score_items(names, predictions, references, sources, options, label=f"{n_systems} systems")  # a progress step per metric
    rng = np.random.default_rng(seed)
    item_draws = rng.integers(0, n, size=(n_resamples, n))
    system_draws = rng.integers(0, n_systems, size=(n_resamples, n_systems))
    item_counts = _draw_counts(item_draws, n) if n_resamples else np.zeros((0, n))
    tau = "b" if kendall == "acc23" else kendall
    table: list[Correlation] = []
    for name, item in scored.items():
        segment = np.asarray(item.metric.per_sample(item.stats) or [], dtype=np.float64)
        system_scores = np.array([float(item.metric.score_from_totals(item.stats[k * n : (k + 1) * n].sum(0))) for k in range(n_systems)])
        for human_field, by_system in outputs.human.items():
            with step(f"correlations {name} vs {human_field} ({n_resamples} resamples)", quiet_below=QUIET_S):
                human = np.array([math.nan if v is None else float(v) for s in systems for v in by_system[s]])
                rated = ~np.isnan(human)
                if len(segment):
                    table.append(_segment_row(name, human_field, segment, human, rated, n_systems, n, tau, kendall, item_draws, confidence))
                    row = _item_row(name, human_field, segment, human, rated, n, tau, kendall, item_counts, confidence)
                    if row is not None:
                        table.append(row)
                human_means = np.array([float(np.nanmean(human[k * n : (k + 1) * n])) for k in range(n_systems)])
                table.append(_system_row(name, human_field, system_scores, human_means, tau, kendall, system_draws, confidence))
    if output_dir is not None:
        write_meta_eval(table, Path(output_dir), {
            "command": "meta-eval", "metrics": names, "human_fields": list(outputs.human), "kendall": kendall,
            "bootstrap": n_resamples, "confidence": confidence, "seed": seed, "n_items": n,
            "systems": systems, "excluded_systems": dropped, **(config or {}),
        })
    return table


def _segment_row(name, human_field, segment, human, rated, n_systems, n, tau, kendall, item_draws, confidence) -> Correlation:
    """All rated (system, item) pairs pooled; resamples draw items, each with all its systems' rows."""
    pearson, spearman, tau_value = correlations(segment[rated], human[rated], tau)
    row = Correlation(name, human_field, "segment", pearson, spearman, tau_value if kendall != "acc23" else math.nan,
                      int(rated.sum()), kendall)
    if len(item_draws):
        offsets = (np.arange(n_systems) * n)[:, None]
        boot = []
        for draw in item_draws:
            rows = (offsets + draw[None, :]).ravel()
            rows = rows[rated[rows]]
            boot.append(correlations(segment[rows], human[rows], tau))
        boot = np.array(boot)
        row.ci = {"pearson": _interval(boot[:, 0], confidence), "spearman": _interval(boot[:, 1], confidence)}
        if kendall != "acc23":
            row.ci["kendall"] = _interval(boot[:, 2], confidence)
    return row


def _item_row(name, human_field, segment, human, rated, n, tau, kendall, item_counts, confidence) -> Correlation | None:
    """Per item across systems, then the mean over items; resamples reweight the items."""
    per_item = np.array([correlations(segment[k::n][rated[k::n]], human[k::n][rated[k::n]], tau) for k in range(n)])
    valid = ~np.isnan(per_item[:, 0])
    if not valid.any():
        return None
    values = per_item[valid].mean(axis=0)
    row = Correlation(name, human_field, "item", float(values[0]), float(values[1]), float(values[2]), int(valid.sum()), kendall)
    if kendall == "acc23":
        accuracy = PairwiseAccuracy([(human[k::n][rated[k::n]], segment[k::n][rated[k::n]]) for k in range(n)])
        row.kendall, row.epsilon = accuracy()
        row.kendall_n = accuracy.n_rows
    if len(item_counts):
        weights = item_counts * valid
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (weights @ np.nan_to_num(per_item)) / weights.sum(axis=1, keepdims=True)
        row.ci = {"pearson": _interval(boot[:, 0], confidence), "spearman": _interval(boot[:, 1], confidence),
                  "kendall": _interval(accuracy.many(item_counts) if kendall == "acc23" else boot[:, 2], confidence)}
    return row


def _system_row(name, human_field, system_scores, human_means, tau, kendall, system_draws, confidence) -> Correlation:
    """Corpus metric score against the mean human score per system; resamples draw systems."""
    pearson, spearman, tau_value = correlations(system_scores, human_means, tau)
    row = Correlation(name, human_field, "system", pearson, spearman, tau_value, len(system_scores), kendall)
    if kendall == "acc23":
        row.kendall, row.epsilon = PairwiseAccuracy([(human_means, system_scores)])()
    if len(system_draws):
        boot = np.array([correlations(system_scores[d], human_means[d], tau) for d in system_draws])
        if kendall == "acc23":
            boot[:, 2] = [PairwiseAccuracy([(human_means[d], system_scores[d])], ids=[d])()[0] for d in system_draws]
        row.ci = {"pearson": _interval(boot[:, 0], confidence), "spearman": _interval(boot[:, 1], confidence),
                  "kendall": _interval(boot[:, 2], confidence)}
    return row


def write_meta_eval(table: Sequence[Correlation], output_dir: Path, config: dict[str, Any]) -> Path:
    """DIR/meta_eval.json: every correlation and interval at full precision, the settings, and the run metadata."""
    payload = {"correlations": [row.to_dict() for row in table], "config": config, "meta": run_metadata(config, device="cpu")}
    path = output_dir / "meta_eval.json"
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path
