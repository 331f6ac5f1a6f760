"""From loaded runs to what the page shows: overview rows, task sections, comparability flags.

Everything numeric is decided here, in Python, so the HTML templates only
lay values out and the tests can check the numbers without a browser.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalkit.metrics.base import ci_key, is_ci_key
from evalkit.report import stats
from evalkit.report.runs import Run
from evalkit.report.samples import SampleView, view_sample

SCORING_LABEL = "loglikelihood"  # the decoding label of tasks scored by loglikelihood (evalkit.runner)


@dataclass
class Cell:
    """One task under one decoding strategy in one run."""

    run: int
    task: str
    label: str
    values: dict[str, float | None]
    cis: dict[str, tuple[float, float] | None]
    n_items: int | None
    efficiency: dict[str, Any]
    samples: list[SampleView]

    @property
    def key(self) -> str:
        return f"{self.run}|{self.task}|{self.label}"


@dataclass
class Row:
    """An overview row: one (model, backend, prompt format, decoding); scoring tasks show the loglikelihood cell.

    ``runs`` holds more than one run folder when a model was evaluated task by
    task in separate invocations (same model, backend and prompt format, no
    task in common).
    """

    runs: list[int]
    decoding: str
    cells: dict[str, Cell | None]
    ranks: dict[str, float] = field(default_factory=dict)
    mean_rank: float | None = None
    win_rate: float | None = None


@dataclass
class Comparison:
    """A metric's best cell and each other cell's paired p-value against it (None: no per-sample scores)."""

    metric: str
    best: str | None
    pvalues: dict[str, float | None]
    n_paired: dict[str, int]
    approximate: bool  # the corpus score is not the mean of the per-sample scores (BLEU, chrF, ...)


@dataclass
class TaskSection:
    name: str
    headline: str
    metrics: list[str]
    cells: list[Cell]
    comparisons: dict[str, Comparison]

    @property
    def scored_by_loglikelihood(self) -> bool:
        return all(c.label == SCORING_LABEL for c in self.cells)


@dataclass
class Leaderboard:
    runs: list[Run]
    tasks: list[TaskSection]
    rows: list[Row]
    flags: list[str]
    cell_flags: dict[str, str]  # cell key -> why it should not be compared silently


def build_leaderboard(runs: list[Run], resamples: int = 1000, seed: int = 0) -> Leaderboard:
    cells = [_cell(i, run, task, label) for i, run in enumerate(runs) for task, label in run.cells]
    task_names = list(dict.fromkeys(c.task for c in cells))
    tasks = [_task_section(name, [c for c in cells if c.task == name], resamples, seed) for name in task_names]
    rows = _rows(runs, cells, task_names)
    _rank(rows, tasks)
    flags, cell_flags = _comparability(runs, rows, cells, task_names)
    return Leaderboard(runs=runs, tasks=tasks, rows=rows, flags=flags, cell_flags=cell_flags)


def _cell(index: int, run: Run, task: str, label: str) -> Cell:
    raw = run.results[task][label] or {}
    names = [k for k in raw if not is_ci_key(k)]
    metric_names = set(names)
    records = run.samples.get((task, label), [])
    return Cell(
        run=index,
        task=task,
        label=label,
        values={k: float(raw[k]) if stats.is_finite(raw[k]) else None for k in names},
        cis={k: _interval(raw.get(ci_key(k))) for k in names},
        n_items=run.n_items.get(task),
        efficiency=(run.efficiency.get(task) or {}).get(label) or {},
        samples=[view_sample(r, i, metric_names) for i, r in enumerate(records)],
    )


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(stats.is_finite(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _task_section(name: str, cells: list[Cell], resamples: int, seed: int) -> TaskSection:
    metrics = list(dict.fromkeys(m for c in cells for m in c.values))
    comparisons = {m: _compare(cells, m, resamples, seed) for m in metrics}
    return TaskSection(name=name, headline=stats.headline_metric(metrics), metrics=metrics, cells=cells, comparisons=comparisons)


def _compare(cells: list[Cell], metric: str, resamples: int, seed: int) -> Comparison:
    """Best cell by the corpus score; paired bootstrap on the per-sample scores of the items both cells share."""
    scored = [c for c in cells if c.values.get(metric) is not None]
    if not scored:
        return Comparison(metric, None, {}, {}, False)
    best = max(scored, key=lambda c: stats.oriented(c.values[metric], metric))
    best_scores = {s.doc_id: s.scores[metric] for s in best.samples if metric in s.scores}
    pvalues: dict[str, float | None] = {}
    n_paired: dict[str, int] = {}
    groups: dict[tuple[str, ...], list[tuple[Cell, dict[str, float]]]] = defaultdict(list)
    for cell in scored:
        if cell is best:
            continue
        theirs = {s.doc_id: s.scores[metric] for s in cell.samples if metric in s.scores}
        shared = tuple(d for d in best_scores if d in theirs)
        n_paired[cell.key] = len(shared)
        pvalues[cell.key] = None
        if len(shared) >= 2:
            groups[shared].append((cell, theirs))
    for shared, members in groups.items():  # one bootstrap per set of shared items, all cells at once
        mine = np.array([best_scores[d] for d in shared])
        others = np.array([[theirs[d] for _, theirs in members] for d in shared])
        for (cell, _), p in zip(members, _paired_pvalues(mine, others, resamples, seed)):
            pvalues[cell.key] = float(p)
    approximate = bool(best_scores) and not np.isclose(np.mean(list(best_scores.values())), best.values[metric], rtol=1e-6, atol=1e-9)
    return Comparison(metric, best.key, pvalues, n_paired, approximate)


def _paired_pvalues(best: np.ndarray, others: np.ndarray, resamples: int, seed: int) -> list[float]:
    """Two-sided p-values of ``best`` (n,) against each column of ``others`` (n, k), through evalkit.metrics.

    0/1 scores (accuracy, exact match) get McNemar's exact test; other scores a
    paired bootstrap of the mean, with one set of resampled items shared by all
    k comparisons (the same seeded draws evalkit.metrics uses).
    """
    from evalkit.metrics.bootstrap import mcnemar, paired_from_resamples, resample_weights

    if np.isin(best, (0.0, 1.0)).all() and np.isin(others, (0.0, 1.0)).all():
        return [mcnemar(best, others[:, j]).p_value for j in range(others.shape[1])]
    n = best.shape[0]
    columns = np.column_stack([best, others])
    means = np.concatenate([w @ columns for w in resample_weights(n, resamples, seed)]) / n  # (resamples, 1 + k)
    observed = best.mean() - others.mean(axis=0)
    return [paired_from_resamples(float(observed[j]), means[:, 0] - means[:, j + 1]).p_value for j in range(others.shape[1])]


def _row_groups(runs: list[Run]) -> list[list[int]]:
    """Runs that share rows: same model, backend and prompt format, and disjoint task sets; otherwise a run stands alone."""
    groups: list[list[int]] = []
    for i, run in enumerate(runs):
        for group in groups:
            first = runs[group[0]]
            if (first.model, first.backend, first.prompt_key) == (run.model, run.backend, run.prompt_key) and all(
                not set(runs[j].results) & set(run.results) for j in group
            ):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _rows(runs: list[Run], cells: list[Cell], task_names: list[str]) -> list[Row]:
    """A row per generation strategy of each row group; a group with only scoring tasks gets one 'loglikelihood' row."""
    by_key = {(c.run, c.task, c.label): c for c in cells}
    rows = []
    for group in _row_groups(runs):
        labels = [label for i in group for _, label in runs[i].cells if label != SCORING_LABEL]
        for label in list(dict.fromkeys(labels)) or [SCORING_LABEL]:
            shown = {
                t: next((by_key.get((i, t, label)) or by_key.get((i, t, SCORING_LABEL)) for i in group if t in runs[i].results), None)
                for t in task_names
            }
            rows.append(Row(runs=group, decoding=label, cells=shown))
    return rows


def _rank(rows: list[Row], tasks: list[TaskSection]) -> None:
    """Per task, rank the rows on the headline metric; then average ranks and win rates over the tasks a row has."""
    win_totals: dict[int, list[float]] = defaultdict(list)
    for task in tasks:
        present = [(i, r.cells[task.name].values.get(task.headline)) for i, r in enumerate(rows) if r.cells.get(task.name)]
        present = [(i, stats.oriented(v, task.headline)) for i, v in present if v is not None]
        if not present:
            continue
        values = [v for _, v in present]
        for (i, _), rank, win in zip(present, stats.ranks(values), stats.win_rates(values)):
            rows[i].ranks[task.name] = rank
            win_totals[i].append(win)
    for i, row in enumerate(rows):
        if row.ranks:
            row.mean_rank = sum(row.ranks.values()) / len(row.ranks)
            row.win_rate = sum(win_totals[i]) / len(win_totals[i])


def _comparability(runs: list[Run], rows: list[Row], cells: list[Cell], task_names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Differences that make numbers incomparable: task sets, item counts, metric signatures, missing samples."""
    flags: list[str] = []
    cell_flags: dict[str, str] = {}
    groups = list(dict.fromkeys(tuple(row.runs) for row in rows))
    for group in groups if len(groups) > 1 else []:
        missing = [t for t in task_names if not any(t in runs[i].results for i in group)]
        if missing:
            names = ", ".join(runs[i].name for i in group)
            flags.append(f"Run {names} has no results for {', '.join(missing)}; its mean rank and win rate cover only the tasks it ran.")
    for task in task_names:
        counts = {run.name: run.n_items.get(task) for run in runs if task in run.results}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
            flags.append(f"Task {task} was run on different numbers of items ({detail}); its scores are not directly comparable.")
            for cell in cells:
                if cell.task == task:
                    cell_flags[cell.key] = f"item counts differ across runs ({detail})"
        by_metric: dict[str, set[str]] = defaultdict(set)
        for run in runs:
            for metric, signature in (run.signatures.get(task) or {}).items():
                by_metric[metric].add(str(signature))
        for metric, signatures in by_metric.items():
            if len(signatures) > 1:
                flags.append(f"Task {task}, metric {metric}: runs used different metric signatures ({' | '.join(sorted(signatures))}).")
    empty = [f"{runs[c.run].name}: {c.task} [{c.label}]" for c in cells if not c.samples]
    if empty:
        shown = "; ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        flags.append(f"No per-sample records for {len(empty)} cell(s) ({shown}); they have no significance test and no samples to browse.")
    return flags, cell_flags
