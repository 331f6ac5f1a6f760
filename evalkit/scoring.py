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
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.metrics.bootstrap import PairedTest, bootstrap_scores, mcnemar, paired_from_resamples, percentile_ci
from evalkit.metrics.registry import build_metrics, expand_names, score_items


@dataclass
class SystemOutputs:
    """Several systems' outputs on the same items, with the references (and sources, human scores) per item."""

    systems: dict[str, list[str]]
    references: list[list[str]]
    sources: list[str] | None = None
    human: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # field -> system -> per item

    @property
    def n_items(self) -> int:
        return len(self.references)


def _read_lines(path: Path) -> list[str]:
    """Lines split on "\n" only (str.splitlines would also split on U+2028 and break the alignment)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise EvalkitError(f"cannot read {path}: {error.strerror}; check the path") from None
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
    return SystemOutputs(systems, [list(r) for r in zip(*references)], sources)


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
                needed = [system_field, prediction_field, reference_field, *([source_field] if source_field else []), *([id_field] if id_field else []), *human_fields]
                missing = [f for f in needed if f not in row]
                if missing:
                    raise EvalkitError(f"{path}:{line_no}: no field {missing[0]!r}; fields there: {', '.join(row)}")
                rows_by_system.setdefault(str(row[system_field]), []).append(row)
    except OSError as error:
        raise EvalkitError(f"cannot read {path}: {error.strerror}; check the path") from None
    if not rows_by_system:
        raise EvalkitError(f"{path}: no rows")
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

    def to_dict(self) -> dict:
        """The results.json structure: ``{"results": {system: {metric: value, metric_ci: [lo, hi]}}, ...}``."""
        results = {}
        for system in self.ranking:
            values: dict[str, Any] = {}
            for name, result in self.results[system].items():
                values[name] = result.score
                if result.ci is not None:
                    values[f"{name}_ci"] = list(result.ci)
            results[system] = values
        first = self.results[self.ranking[0]]
        return {
            "results": results,
            "ranking": self.ranking,
            "signatures": {name: first[name].signature for name in self.metrics},
            "pairwise": {
                name: [
                    {"a": a, "b": b, "method": t.method, "delta": t.delta, "p_value": t.p_value, "delta_ci": list(t.ci) if t.ci else None}
                    for (a, b), t in tests.items()
                ]
                for name, tests in self.pairwise.items()
            },
            "higher_is_better": self.higher_is_better,
            "meta": self.meta,
        }


def score_systems(
    outputs: SystemOutputs,
    metrics: str | Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    output_dir: Path | None = None,
    config: dict[str, Any] | None = None,
) -> ScoreReport:
    """Score every system with every metric, rank by the first metric, test every pair of systems.

    All systems share one set of bootstrap resamples (same seed, same items),
    so each system is resampled once and every paired test is a difference.
    """
    names = expand_names(metrics)
    if not names:
        raise EvalkitError("score: no metrics given; e.g. --metrics bleu,chrf")
    if n_resamples < 1:
        raise EvalkitError("score: intervals and paired tests need at least one bootstrap resample")
    results: dict[str, dict[str, MetricResult]] = {}
    stats: dict[str, dict[str, Any]] = {}
    boots: dict[str, dict[str, np.ndarray]] = {}
    built = build_metrics(names, options)
    for system, predictions in outputs.systems.items():
        scored = score_items(built, predictions, outputs.references, outputs.sources)
        results[system], stats[system], boots[system] = {}, {}, {}
        for name, item in scored.items():
            result = item.result()
            boots[system][name] = bootstrap_scores(item.metric, item.stats, n_resamples, seed)
            result.ci = percentile_ci(boots[system][name], confidence)
            results[system][name] = result
            stats[system][name] = item
    any_system = next(iter(stats))
    higher = {name: stats[any_system][name].metric.higher_is_better for name in names}
    primary = names[0]
    ranking = sorted(results, key=lambda s: results[s][primary].score, reverse=higher[primary])
    pairwise: dict[str, dict[tuple[str, str], PairedTest]] = {name: {} for name in names}
    for a, b in combinations(ranking, 2):
        for name in names:
            metric = stats[a][name].metric
            if metric.binary_items:
                pairwise[name][(a, b)] = mcnemar(stats[a][name].stats[:, 0], stats[b][name].stats[:, 0])
            else:
                observed = results[a][name].score - results[b][name].score
                pairwise[name][(a, b)] = paired_from_resamples(observed, boots[a][name] - boots[b][name], confidence)
    report = ScoreReport(names, results, ranking, pairwise, higher)
    if output_dir is not None:
        write_report(report, Path(output_dir), {"command": "score", "metrics": names, "n_items": outputs.n_items,
                                                 "bootstrap": n_resamples, "confidence": confidence, "seed": seed, **(config or {})})
    return report


def write_report(report: ScoreReport, output_dir: Path, config: dict[str, Any]) -> Path:
    """DIR/results.json with the same meta block as `evalkit run` (versions, git hash, hardware, settings)."""
    from evalkit.results import atomic_write_text, run_metadata

    report.meta = run_metadata(config, device="cpu")
    path = output_dir / "results.json"
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------- meta-evaluation


@dataclass
class Correlation:
    metric: str
    human: str
    level: str  # "segment" (all system x item pairs pooled), "item" (per item across systems, averaged), "system"
    pearson: float
    spearman: float
    kendall: float
    n: int


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Pearson r, Spearman rho and Kendall tau-b (nan when either side is constant)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]), float(stats.kendalltau(x, y)[0])


def meta_evaluate(
    outputs: SystemOutputs,
    metrics: str | Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Correlation]:
    """Correlation of each metric with each human score at segment, item-grouped and system level.

    All systems are scored in one call per metric (their items concatenated), so
    model-based metrics batch over everything at once. Items whose human score
    is missing (None) are left out of the segment-level correlations.
    """
    if not outputs.human:
        raise EvalkitError("meta-eval: no human score field given; e.g. --human-field mqm_score")
    names = expand_names(metrics)
    systems = list(outputs.systems)
    n = outputs.n_items
    predictions = [p for s in systems for p in outputs.systems[s]]
    references = outputs.references * len(systems)
    sources = outputs.sources * len(systems) if outputs.sources else None
    scored = score_items(names, predictions, references, sources, options)
    table: list[Correlation] = []
    for name, item in scored.items():
        segment = np.asarray(item.metric.per_sample(item.stats) or [], dtype=np.float64)
        system_scores = [float(item.metric.score_from_totals(item.stats[k * n : (k + 1) * n].sum(0))) for k in range(len(systems))]
        for human_field, by_system in outputs.human.items():
            human = np.array([math.nan if v is None else float(v) for s in systems for v in by_system[s]])
            rated = ~np.isnan(human)
            if len(segment):
                table.append(Correlation(name, human_field, "segment", *correlations(segment[rated], human[rated]), int(rated.sum())))
                grouped = [correlations(segment[k::n][rated[k::n]], human[k::n][rated[k::n]]) for k in range(n)]
                grouped = np.array([g for g in grouped if not math.isnan(g[0])])
                if len(grouped):
                    table.append(Correlation(name, human_field, "item", *map(float, grouped.mean(axis=0)), len(grouped)))
            human_means = [float(np.nanmean(human[k * n : (k + 1) * n])) for k in range(len(systems))]
            table.append(Correlation(name, human_field, "system", *correlations(system_scores, human_means), len(systems)))
    return table
