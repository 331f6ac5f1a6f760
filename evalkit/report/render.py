"""build_report(): run folders in, one self-contained HTML file out.

The page carries its own CSS, script and data, so it opens from disk, from a
mail attachment or from a static host with no network. A Content-Security-Policy
allows only the one inline script (by hash) and no fetches at all, as a second
wall behind the escaping: Jinja autoescapes every string in the markup, the
data block is JSON with ``<``, ``>`` and ``&`` escaped, and the script builds
the sample browser with ``textContent`` only.

The page is a pure function of its run folders and title: it names the runs'
dates, not the moment it was built, and shows run folders as given (or
relative to ``folders_relative_to``), so rebuilding it from the same folders
writes the same bytes (see :mod:`evalkit.report.pages`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from evalkit.report import stats
from evalkit.report.leaderboard import Leaderboard, TaskSection, build_leaderboard
from evalkit.report.payload import sample_payload, script_json
from evalkit.report.plots import Plot, scatter
from evalkit.report.runs import load_runs
from evalkit.results import atomic_write_text


def build_report(run_dirs: list[Path], output: Path, title: str | None = None, folders_relative_to: Path | None = None) -> Path:
    """Write the leaderboard of ``run_dirs`` (run folders, or folders of run folders) to ``output``; return its path.

    ``folders_relative_to`` names each run folder on the page relative to that folder instead of as
    given, so a page rebuilt from anywhere shows the same paths.
    """
    board = build_leaderboard(load_runs([Path(d) for d in run_dirs]))
    output = Path(output)
    folders = [_shown_folder(run.path, folders_relative_to) for run in board.runs]
    atomic_write_text(output, render_html(board, title or _default_title(board), folders))
    return output


def render_html(board: Leaderboard, title: str, folders: list[str] | None = None) -> str:
    """The page; ``folders`` is how each run's folder is named on it (default: its path as loaded)."""
    env = _environment()
    script = env.loader.get_source(env, "report.js")[0]
    css = env.loader.get_source(env, "report.css")[0]
    return env.get_template("report.html.j2").render(
        title=title,
        run_dates=_run_dates(board),
        folders=folders if folders is not None else [str(run.path) for run in board.runs],
        board=board,
        plots={task.name: decoding_plots(board, task) for task in board.tasks},
        css=css,
        script=script,
        script_hash=base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii"),
        data=script_json(sample_payload(board)),
        higher_is_better=stats.higher_is_better,
    )


def decoding_plots(board: Leaderboard, task: TaskSection) -> list[Plot]:
    """Quality vs cost, vs tokens/s and, when the task reports a diversity metric, vs diversity; one series per run.

    The cost plot (forward passes per generated token, lower is better) is the machine-independent
    one: its Pareto front is the same on every machine. It is left out when no cell recorded the
    counts (an HTTP backend, or runs from before them); tokens/s is wall clock, kept as information.
    """
    if task.scored_by_loglikelihood:
        return []
    plots = []
    diversity = next((m for m in task.metrics if stats.is_diversity(m)), None)
    axes = [
        ("cost_per_token", "forward passes / generated token (cost)", False),
        ("tokens_per_s", "generated tokens / s (decode)", True),
    ]
    if diversity is not None:
        axes.append((diversity, diversity, stats.higher_is_better(diversity)))
    for x_name, x_label, x_higher in axes:
        series: dict[str, list[tuple[str, float, float]]] = {}
        for cell in task.cells:
            x = cell.efficiency.get(x_name) if x_name in EFFICIENCY_AXES else cell.values.get(x_name)
            y = cell.values.get(task.headline)
            if stats.is_finite(x) and stats.is_finite(y):
                run = board.runs[cell.run]
                name = f"{run.model} ({run.backend}, {run.prompt_label}) {run.name}"
                series.setdefault(name, []).append((cell.label, float(x), float(y)))
        if series:
            plots.append(
                scatter(
                    f"{task.name}: {task.headline} vs {x_label}",
                    x_label,
                    task.headline,
                    series,
                    x_higher_better=x_higher,
                    y_higher_better=stats.higher_is_better(task.headline),
                )
            )
    return plots


EFFICIENCY_AXES = ("cost_per_token", "tokens_per_s")  # plot axes read from a cell's efficiency, not its metrics


def _shown_folder(path: Path, base: Path | None) -> str:
    """The run folder as the page names it: POSIX separators, relative to ``base`` when given."""
    return Path(os.path.relpath(path, base)).as_posix() if base is not None else str(path)


def _run_dates(board: Leaderboard) -> str:
    """When the runs were made (from their results), the page's only date: a rebuild must not change it."""
    dates = sorted({str(run.meta["date"]) for run in board.runs if run.meta.get("date")})
    if not dates:
        return "run dates unknown"
    return f"run {dates[0]}" if len(dates) == 1 else f"runs {dates[0]} to {dates[-1]}"


def _default_title(board: Leaderboard) -> str:
    models = list(dict.fromkeys(run.model for run in board.runs))
    return f"evalkit leaderboard: {', '.join(models[:3])}{' ...' if len(models) > 3 else ''}"


def _fmt(value: object) -> str:
    """Numbers as a leaderboard prints them: 4 decimals below 1, 2 below 100, 1 above."""
    if not stats.is_finite(value):
        return "–"
    magnitude = abs(value)
    return f"{value:.4f}" if magnitude < 1 else f"{value:.2f}" if magnitude < 100 else f"{value:.1f}"


def _pvalue(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("evalkit.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pvalue"] = _pvalue
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
    env.tests["finite"] = stats.is_finite
    return env
