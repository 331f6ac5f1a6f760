"""The command line: evalkit run | list | report | compare-decoding | score | meta-eval.

Each command is a small function over the Python API; errors the user can fix
are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evalkit.errors import EvalkitError
from evalkit.progress import current as current_progress
from evalkit.progress import duration, reporting

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class RichProgress:
    """rich's live bars on a terminal: a bar per (task, decoding) cell with count, items/s, elapsed time and ETA.

    The description is shown as plain text (``gsm8k [beam4]``: as markup the
    strategy in brackets would vanish). Notes (a step's start and done lines)
    print above the bars. ``close()`` stops the live display; a later
    ``start()`` opens a fresh one.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task_id = None

    def _live(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                _RateColumn(),
                TimeElapsedColumn(),
                _RateColumn(eta=True),
                console=err_console,
                transient=False,
            )
            self._progress.start()
        return self._progress

    def start(self, description: str, total: int) -> None:
        self._task_id = self._live().add_task(description, total=total, skipped=0.0)

    def skip(self, amount: float) -> None:
        """Cached items: counted, but left out of the rate, so the ETA is about the work still to do."""
        task = self._progress.tasks[self._task_id]
        self._progress.update(self._task_id, advance=amount, skipped=task.fields["skipped"] + amount)

    def advance(self, amount: float) -> None:
        self._progress.advance(self._task_id, amount)

    def finish(self) -> None:
        self._progress.stop_task(self._task_id)  # its clock stops, also when it ended short of its total

    def note(self, message: str) -> None:
        (self._progress.console if self._progress is not None else err_console).print(message, markup=False, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task_id = None


class _RateColumn(ProgressColumn):
    """Items/s (or the ETA) from the fresh items over the time since the cell started, recomputed at each refresh.

    rich's own speed estimate divides by the spread of recent updates, which is
    near zero when a whole batch finishes at once (thousands of it/s).
    """

    def __init__(self, eta: bool = False) -> None:
        super().__init__()
        self.eta = eta

    def render(self, task) -> Text:
        fresh = task.completed - task.fields.get("skipped", 0.0)
        seconds = (task.finished_time if task.finished else task.elapsed) or 0.0
        if fresh <= 0 or seconds <= 0:
            return Text("")
        rate = fresh / seconds
        if not self.eta:
            return Text(f"{rate:.2f} it/s")
        left = (task.total or 0) - task.completed
        return Text(f"ETA {duration(left / rate)}" if left > 0 and not task.finished else "")


def progress_reporter():
    """What the CLI reports progress to: rich's live bars on a terminal, one plain line per update otherwise
    (CI logs, ``| tee``), nothing on ranks other than 0 of a torchrun job."""
    from evalkit.distributed import is_main_process
    from evalkit.progress import PlainProgress, SilentProgress

    if not is_main_process():
        return SilentProgress()
    return RichProgress() if err_console.is_terminal else PlainProgress()


# ---------------------------------------------------------------- run


def add_run_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="evaluate a model on tasks under decoding strategies")
    p.add_argument("--model", required=True, help="registry alias (see `evalkit list models`), hub id, folder or .gguf file")
    p.add_argument("--backend", default="auto", choices=["auto", "hf", "native", "openai"],
                   help="model adapter (default: auto, the native engine where it runs the model, else hf)")
    p.add_argument("--tasks", required=True, help="comma-separated task names, suites or YAML files (see `evalkit list tasks`)")
    p.add_argument("--decoding", default=None, help="comma-separated strategies, e.g. greedy,beam4,top-p0.9 (default: greedy)")
    p.add_argument("--decoding-file", type=Path, help="YAML file with a grid of decoding configs (added to --decoding)")
    p.add_argument("--draft-model", default=None, metavar="MODEL",
                   help="draft model of the draftK strategies (speculative decoding): a smaller model with the same tokenizer")
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N items of each task")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts scored or generated together (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling strategies and bootstrap resamples (default: 0)")
    p.add_argument("--bootstrap", type=_resamples(allow_zero=True), default=1000,
                   help="bootstrap resamples for confidence intervals (default: 1000; 0: no intervals)")
    p.add_argument("--data-dir", default=os.environ.get("EVALKIT_DATA"), help="folder with task data (default: $EVALKIT_DATA)")
    p.add_argument("--output", type=Path, default=None,
                   help="results folder (default: a fresh runs/<model>-<backend>-YYYYmmdd-HHMMSS)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --output replace the run already in that folder (its old samples/ files are removed)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    p.add_argument("--report", type=Path, metavar="HTML", help="also write the run's HTML leaderboard to this file")
    chat = p.add_argument_group("chat models (as lm-evaluation-harness's options of the same names)")
    chat.add_argument(
        "--apply-chat-template", nargs="?", const=True, default=False, metavar="NAME_OR_PATH",
        help="render every prompt with the model's chat template (or a Jinja file, or a named template of the tokenizer)",
    )
    chat.add_argument("--system-instruction", default=None, metavar="TEXT", help="a system message that opens every prompt")
    chat.add_argument(
        "--fewshot-as-multiturn", action="store_true",
        help="each few-shot example becomes a user turn and an assistant turn (needs --apply-chat-template)",
    )
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    check_output_dir(args.output, "--output", overwrite=args.overwrite)
    if args.report is not None:
        _check_writable(args.report, "--report", file=True)
    from evalkit.api import evaluate
    from evalkit.distributed import is_main_process

    if args.fewshot_as_multiturn and args.apply_chat_template is False:
        raise EvalkitError("--fewshot-as-multiturn needs --apply-chat-template: few-shot turns exist only in a chat prompt")
    decoding: list = [d for d in args.decoding.split(",") if d.strip()] if args.decoding else []
    if args.decoding_file is not None:
        from evalkit.decoding import load_decoding_file

        decoding.extend(load_decoding_file(args.decoding_file))
    from evalkit.models.registry import resolve_backend

    backend, _ = resolve_backend(args.model, args.backend, args.dtype)  # auto: chosen (and said) once, here
    output = args.output or fresh_run_dir(args.model, backend)
    if args.output is None:
        check_output_dir(output, "the default results folder (pass --output DIR)")
    main = is_main_process()  # under torchrun only rank 0 shows progress and prints
    replaced = _run_files(output) if main and args.overwrite else {}
    progress = current_progress() if main else None  # main() installed it (progress_reporter)
    try:
        results = evaluate(
            args.model,
            tasks=args.tasks,
            decoding=decoding or "greedy",
            limit=args.limit,
            data_dir=args.data_dir,
            backend=backend,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            seed=args.seed,
            bootstrap=args.bootstrap,
            output_dir=output,
            cache=not args.no_cache,
            progress=progress,
            apply_chat_template=args.apply_chat_template,
            system_instruction=args.system_instruction,
            fewshot_as_multiturn=args.fewshot_as_multiturn,
            draft_model=args.draft_model,
        )
    finally:
        if progress is not None:
            progress.close()
    if not main:
        return 0
    for path, stat in replaced.items():  # --overwrite: what the new run did not rewrite belongs to the old one
        if _file_id(path) == stat:
            path.unlink(missing_ok=True)
    console.print(results_table(results))
    for table in comparison_tables(results):
        console.print(table)
    console.print(f"prompts: {describe_prompt(results['meta'].get('prompt') or {})}", highlight=False)
    console.print(f"results: {output / 'results.json'}  samples: {output / 'samples'}")
    if args.report is not None:
        from evalkit.report import build_report

        console.print(f"report: {build_report([output], args.report)}")
    return 0


def check_output_dir(path: Path | None, flag: str = "--output", *, overwrite: bool | None = None) -> None:
    """Refuse, before any evaluation, a results folder that cannot be written or would mix two runs.

    A file in the folder's place, an ancestor that is a file, or a place without
    write permission always fail; ``overwrite=False`` also refuses a folder that
    already holds a run (results.json or samples/*.jsonl), ``None`` skips that check.
    """
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EvalkitError(f"{flag} {path} is a file, not a folder; give a new or empty folder to hold results.json")
    _check_writable(path, flag)
    if overwrite is False and path.is_dir() and _run_files(path):
        held = "results.json" if (path / "results.json").exists() else "samples/ files"
        raise EvalkitError(
            f"{flag} {path} already holds a run ({held}); add --overwrite to replace it, choose another folder, "
            f"or leave out {flag} for a fresh runs/ folder"
        )


def _check_writable(path: Path, flag: str, *, file: bool = False) -> None:
    """``path`` (a folder, or a ``file``) can be created or replaced: its nearest existing ancestor is a writable folder."""
    path = Path(path)
    if file and path.is_dir():
        raise EvalkitError(f"{flag} {path} is a folder; give a file name, e.g. {flag} {path / 'index.html'}")
    existing = path if path.exists() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EvalkitError(f"{flag} {path} cannot be created: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EvalkitError(f"{flag} {path} cannot be written: no write permission in {existing}; choose a folder you can write to")


def fresh_run_dir(model: str, backend: str, root: Path = Path("runs"), now=None) -> Path:
    """``runs/<model>-<backend>-YYYYmmdd-HHMMSS``, with -2, -3, ... when a run of the same second holds that name."""
    from datetime import datetime

    from evalkit.results import safe_filename

    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = root / safe_filename(f"{model}-{backend}-{stamp}")
    candidate, number = base, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _run_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """The files of a run in ``folder`` (results.json, samples/*.jsonl) with their identity (inode, mtime)."""
    files = [folder / "results.json", *sorted((folder / "samples").glob("*.jsonl"))]
    return {path: _file_id(path) for path in files if path.is_file()}


def _file_id(path: Path) -> tuple[int, int] | None:
    """A file's inode and mtime: results are written to a temporary file and renamed, so a rewritten file gets a new one."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def describe_prompt(prompt: dict) -> str:
    """One line on how the run's prompts were built, so a table is never read without knowing it."""
    if not prompt.get("chat_template"):
        text = "plain (no chat template)"
    else:
        sha = prompt.get("chat_template_sha256")
        text = f"chat template ({prompt.get('chat_template_source')}" + (f", sha256 {sha[:12]})" if sha else ")")
        if prompt.get("fewshot_as_multiturn"):
            text += ", few-shot as multi-turn"
    if prompt.get("system_instruction") is not None:
        text += f", system instruction {prompt['system_instruction']!r}"
    return text


def comparison_tables(results: dict, tasks: Sequence[str] | None = None) -> list:
    """The strategy table (quality, diversity, length, speed, cost) of every generation task, and the
    speculative table (acceptance, tokens per forward, speedups) of a task with speculative strategies.

    Short column names with a legend keep it within 80 columns; where the
    strategy names are too long even so, they are numbered (s1, s2, ...) with a
    key under the table, and as a last resort each strategy is its own block.
    """
    from evalkit.decoding.compare import strategy_rows
    from evalkit.metrics.diversity import SUMMARY_NAMES
    from evalkit.runner import SCORING_LABEL

    tables = []
    for task, by_label in results["results"].items():
        if (tasks and task not in tasks) or SCORING_LABEL in by_label:
            continue
        rows = strategy_rows(results, task)
        title = f"decoding strategies on {task} ({results['model']}, {results['n_items'][task]} items)"
        quality = rows[0]["quality_metric"]
        short_quality = quality if len(quality) <= 12 else "quality"
        headers = ["strategy", short_quality, *(_SHORT_COLUMNS[c] for c in SUMMARY_NAMES), "tok/s", "cost", "*"]
        cells = [
            [
                row["strategy"],
                _fmt(row["quality"]),
                *(_short(row[c]) for c in SUMMARY_NAMES),
                f"{row['tokens_per_s']:.1f}" if row["tokens_per_s"] else "-",
                _ratio_cell(row["cost_per_token"]),
                "*" if row["pareto"] else "",
            ]
            for row in rows
        ]
        legend = [f"quality: {quality}"] if short_quality != quality else []
        legend += [_LEGEND.get(c, f"{_SHORT_COLUMNS[c]}: {c}") for c in SUMMARY_NAMES if _SHORT_COLUMNS[c] != c or c in _LEGEND]
        caption = "; ".join([*legend, *_cost_caption(rows)])
        table = _table(title, headers, cells, caption=caption)
        numbered = [[f"s{i}", *row[1:]] for i, row in enumerate(cells, 1)]  # long strategy names: numbers and a key
        key = "".join(f"s{i}: {row[0]}\n" for i, row in enumerate(cells, 1))
        compact = _table(title, headers, numbered, caption=key + caption)
        blocks = [(row[0] + ("  * pareto-best" if row[-1] else ""), list(zip(headers[1:-1], row[1:-1]))) for row in cells]
        tables.append(_FirstThatFits(table, compact, _blocks(title, blocks, caption)))
        if any(row["speculative"] for row in rows):
            tables.append(_speculative_table(task, rows))
    return tables


def _ratio_cell(value: float | None, suffix: str = "") -> str:
    """A cost, a tokens-per-forward figure or a speedup to 2 decimals ("-" when missing)."""
    if value is None or value != value:
        return "-"
    return (f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}") + suffix


def _cost_caption(rows: list[dict]) -> list[str]:
    """What the cost column and the star mean, and which rows could not be starred on cost."""
    if rows and rows[0]["pareto_axis"] == "tokens_per_s":
        return ["cost: forward passes per generated token, not recorded in these results (HTTP backend or older evalkit)",
                "*: pareto-best on quality vs tok/s (wall clock: varies with the machine and its load)"]
    lines = ["tok/s: wall clock, this machine; cost: forward passes per generated token, lower is better",
             "*: pareto-best on quality vs cost (forward passes per token, machine-independent)"]
    missing = [row["strategy"] for row in rows if row["cost_per_token"] is None]
    if missing:
        lines.append(f"no forward-pass counts for {', '.join(missing)} (HTTP backend or older evalkit): no star on cost")
    return lines


def _speculative_table(task: str, rows: list[dict]):
    """Speculative strategies against the same strategy without drafts: acceptance, tokens per forward, speedups."""
    title = f"speculative decoding on {task}, against the same strategy without drafts"
    headers = ["strategy", "base", "accept", "tok/fwd", "cost x", "wall x"]
    cells = [
        [
            row["strategy"],
            row["base_strategy"] or "-",
            "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.0%}",
            _ratio_cell(row["tokens_per_forward"]),
            _ratio_cell(row["cost_speedup"], "x"),
            _ratio_cell(row["wall_speedup"], "x"),
        ]
        for row in rows
        if row["speculative"]
    ]
    caption = ("accept: share of drafted tokens the model accepted; tok/fwd: generated tokens per forward pass of the model; "
               "cost x: speedup in forward passes per token over base (machine-independent); wall x: tok/s over "
               "base's (this machine); base -: the run has no such strategy")
    blocks = [(row[0], list(zip(headers[1:], row[1:]))) for row in cells]
    return _FirstThatFits(_table(title, headers, cells, caption=caption), _blocks(title, blocks, caption))


# Column names of the strategy table, short enough for 80 columns (the caption spells them out).
_SHORT_COLUMNS = {"distinct-1": "dist-1", "distinct-2": "dist-2", "self-bleu": "sBLEU", "rep-4": "rep-4", "length": "len"}
_LEGEND = {"length": "len: mean output length in words"}


def _short(value: float | None) -> str:
    """Diversity and length values to 3-4 significant digits (their noise is larger than that)."""
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> Table:
    """A light table (no vertical rules) whose cells wrap instead of being cut to "…"."""
    from rich import box
    from rich.text import Text

    table = Table(title=Text(title), caption=caption and Text(caption), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True, caption_justify="left")
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i == 0 or header == "metric" else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: names and labels are never read as rich markup
    return table


def _blocks(title: str, blocks: Sequence[tuple[str, Sequence[Sequence[str]]]], caption: str | None = None):
    """The vertical layout: a heading per block, then its rows (a name, a right-aligned value, any further cells)."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    parts: list = [Text(title, style="italic")]
    for heading, pairs in blocks:
        grid = Table.grid(padding=(0, 2))
        for i in range(max((len(row) for row in pairs), default=2)):
            grid.add_column(justify="right" if i == 1 else "left", overflow="fold")
        for row in pairs:
            grid.add_row(*(Text(cell) for cell in row))
        parts += [Text(heading, style="bold", overflow="fold"), Padding(grid, (0, 0, 0, 2), expand=False)]
    if caption:
        parts.append(Text(caption, style="dim"))
    return Group(*parts)


class _FirstThatFits:
    """Renders the first layout whose natural width fits the console (no cell wrapped or cut), else the last one."""

    def __init__(self, *layouts) -> None:
        self.layouts = layouts

    def __rich_console__(self, console, options):
        from rich.measure import Measurement

        def fits(layout) -> bool:
            return Measurement.get(console, options.update_width(10_000), layout).maximum <= options.max_width

        yield next((layout for layout in self.layouts[:-1] if fits(layout)), self.layouts[-1])
        yield ""  # a blank line between consecutive tables


def add_compare_decoding_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare-decoding", help="the strategy comparison table of a finished run")
    p.add_argument("run_dir", type=Path, help="a folder written by `evalkit run`")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.set_defaults(handler=cmd_compare_decoding)


def cmd_compare_decoding(args: argparse.Namespace) -> int:
    from evalkit.results import RESULTS_FILE, ResultsRecord

    path = args.run_dir / RESULTS_FILE
    if not path.is_file():
        raise EvalkitError(f"{path} not found: pass a folder written by `evalkit run --output DIR`")
    record = ResultsRecord.read(path)
    if record.command != "run":
        raise EvalkitError(f"{path} was written by `evalkit {record.command}`, which runs no decoding: pass a folder written by `evalkit run`")
    tables = comparison_tables(record.to_dict(), args.task)
    if not tables:
        raise EvalkitError(f"{path} has no generation task (of those asked for): run one with --decoding a,b,...")
    for table in tables:
        console.print(table)
    return 0


def results_table(results: dict):
    """Every (task, decoding, metric) value with its interval: one table when it fits the console, else a block per cell.

    A task scored by log-likelihood has no decoding: its rows say only the
    task; a generation task's rows say ``task/decoding`` (as :func:`evalkit.flatten`'s keys).
    Diversity metrics are left to the strategy table.
    """
    from evalkit.metrics.base import ci_key, is_ci_key
    from evalkit.metrics.diversity import DIVERSITY_NAMES
    from evalkit.runner import SCORING_LABEL

    title = f"{results['model']} ({results['backend']})"
    rows, blocks = [], []
    for task, by_decoding in results["results"].items():
        for label, values in by_decoding.items():
            name = task if label == SCORING_LABEL else f"{task}/{label}"
            n_items = results["n_items"][task]
            tokens_per_s = results["efficiency"][task][label].get("tokens_per_s")
            speed = f"{tokens_per_s:.1f}" if tokens_per_s else ""
            pairs = []
            for metric, value in values.items():
                if is_ci_key(metric) or metric in DIVERSITY_NAMES:  # shown in the strategy table instead
                    continue
                ci = values.get(ci_key(metric))
                interval = f"[{_sig(ci[0])}, {_sig(ci[1])}]" if ci else ""
                rows.append([name, metric, _fmt(value), interval, str(n_items), speed])
                pairs.append((metric, _fmt(value), interval))
            heading = f"{name} ({n_items} items" + (f", {speed} tok/s)" if speed else ")")
            blocks.append((heading, pairs))
    table = _table(title, ["task/decoding", "metric", "value", "95% CI", "items", "tok/s"], rows)
    return _FirstThatFits(table, _blocks(title + ": value [95% CI]", blocks))


def _sig(value: float) -> str:
    """An interval bound to 4 significant digits, without exponent notation for large values."""
    return f"{value:.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


# ---------------------------------------------------------------- list


def add_list_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("list", help="list tasks, models, metrics or decoding presets")
    p.add_argument("what", choices=["tasks", "models", "metrics", "decoding"], help="what to list: tasks, models, metrics or decoding")
    p.set_defaults(handler=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "tasks":
        from evalkit.tasks import list_tasks as lister
    elif args.what == "models":
        from evalkit.models.registry import list_models as lister
    elif args.what == "metrics":
        from evalkit.metrics import list_metrics as lister
    else:
        from evalkit.decoding import list_presets as lister
    table = Table(title=args.what)
    table.add_column("name")
    table.add_column("description")
    for name, description in lister():
        table.add_row(name, description)
    console.print(table)
    return 0


# ---------------------------------------------------------------- report


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="build a self-contained HTML leaderboard from run folders")
    p.add_argument("run_dirs", nargs="*", type=Path, help="folders written by `evalkit run`, or a folder of such folders")
    p.add_argument("-o", "--output", type=Path, default=None, help="HTML file to write (default: leaderboards/index.html)")
    p.add_argument("--title", default=None, help="page title (default: names the models)")
    p.add_argument("--rebuild", type=Path, metavar="FOLDER", default=None,
                   help="instead: rewrite every page FOLDER/pages.json lists from its run folders (e.g. leaderboards)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from evalkit.report import build_report
    from evalkit.report.pages import rebuild_pages

    if args.rebuild is not None:
        if args.run_dirs or args.output is not None or args.title is not None:
            raise EvalkitError("--rebuild takes its run folders, output files and titles from FOLDER/pages.json: give no run folders, -o or --title")
        paths = rebuild_pages(args.rebuild)
    elif not args.run_dirs:
        raise EvalkitError("no run folders given: pass folders written by `evalkit run`, or --rebuild FOLDER")
    else:
        paths = [build_report(args.run_dirs, args.output or Path("leaderboards/index.html"), title=args.title)]
    for path in paths:
        console.print(f"leaderboard: {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False, markup=False, soft_wrap=True)
    return 0


# ---------------------------------------------------------------- entry


def _quiet_libraries(verbose: bool | None = None) -> None:
    """Library chatter (tokenizer-length warnings, legacy notices, Lightning banners) would bury evalkit's own
    messages; ``--verbose`` lets it through. ``verbose=None`` keeps what ``main`` set (see :mod:`evalkit.quiet`)."""
    from evalkit import quiet

    if verbose is not None:
        quiet.set_verbose(verbose)
    if quiet.is_verbose():
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _resamples(allow_zero: bool) -> Callable[[str], int]:
    """The argparse type of --bootstrap: a count of resamples (``allow_zero``: 0 turns intervals off)."""
    expected = "0 (no intervals) or a positive number of resamples" if allow_zero else "a positive number of resamples"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < (0 if allow_zero else 1):
            raise argparse.ArgumentTypeError(f"expected {expected}, e.g. 1000; got {text!r}")
        return value

    return parse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with its errors as one ``error:`` line (no usage dump), exit status 2 as before; subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


# API argument -> the flag that sets it. Errors raised below the CLI name API arguments (``data_dir=DIR``);
# cli_message() shows them as the flags the user typed (``--data-dir DIR``).
API_FLAGS = {
    "model": "--model", "backend": "--backend", "tasks": "--tasks", "decoding": "--decoding", "limit": "--limit",
    "batch_size": "--batch-size", "device": "--device", "dtype": "--dtype", "seed": "--seed", "bootstrap": "--bootstrap",
    "n_resamples": "--bootstrap", "data_dir": "--data-dir", "output_dir": "--output", "metrics": "--metrics",
    "apply_chat_template": "--apply-chat-template", "system_instruction": "--system-instruction",
    "fewshot_as_multiturn": "--fewshot-as-multiturn", "draft_model": "--draft-model",
}
_API_ARGUMENT = re.compile(r"(?<![\w.\-\[\"'])(" + "|".join(API_FLAGS) + r")=(?:'([^']*)'|\"([^\"]*)\"|((?:[^\s,;()]*[^\s,;():.])?))")
_METRIC_OPTION = re.compile(r"""options\[["']([^"']+)["']\](?:\[["']([^"']+)["']\](?:='([^']*)')?)?""")


def cli_message(message: str, command: str | None = None) -> str:
    """An API-worded error as the CLI's: ``data_dir=DIR`` -> ``--data-dir DIR``, ``options["bleu"]["tokenize"]`` -> ``--option bleu.tokenize``."""

    def flag(match: re.Match) -> str:
        value = next((v for v in match.groups()[1:] if v is not None), "")
        if value == "True" and match[1] in ("fewshot_as_multiturn", "apply_chat_template"):
            return API_FLAGS[match[1]]
        return f"{API_FLAGS[match[1]]} {value}" if value else API_FLAGS[match[1]]

    def option(match: re.Match) -> str:
        metric, key, value = match.groups()
        return f"--option {metric}.{key or 'KEY=VALUE'}" + (f"={value}" if value is not None else "")

    message = _API_ARGUMENT.sub(flag, message)
    return _METRIC_OPTION.sub(option, message) if command in ("score", "meta-eval") else message


PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_run_parser, add_list_parser, add_compare_decoding_parser, add_report_parser
]


# ---------------------------------------------------------------- score | meta-eval (metrics without a model)


def _add_outputs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hyp", nargs="+", type=Path, default=[], help="hypothesis files, one per system, one segment per line")
    p.add_argument("--ref", nargs="+", type=Path, default=[], help="reference files (several: multi-reference)")
    p.add_argument("--src", type=Path, help="source file (COMET)")
    p.add_argument("--jsonl", type=Path, help="one jsonl file with a row per (system, segment) instead of text files")
    p.add_argument("--system-field", default="system", help="jsonl field naming the system of a row (default: system)")
    p.add_argument("--prediction-field", default="hypothesis", help="jsonl field with the system's output (default: hypothesis)")
    p.add_argument("--reference-field", default="reference", help="a string, or a list of strings for several references")
    p.add_argument("--source-field", default=None, help="jsonl field with the source sentence (COMET; default: none)")
    p.add_argument("--id-field", default=None, help="align systems by this field (default: row order)")
    p.add_argument("--metrics", default="bleu,chrf", help="comma-separated, e.g. bleu,chrf,ter,rouge,bertscore,comet,wer,cer")
    p.add_argument("--option", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="metric option (repeatable), e.g. wer.lowercase=true, bertscore.model=DIR, bleu.tokenize=13a; "
                   "several metrics at once: wer,cer.lowercase=true")


def _metric_options(pairs: Sequence[str]) -> dict[str, dict]:
    import yaml

    options: dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        metrics, dot, name = key.partition(".")
        names = [m.strip() for m in metrics.split(",")]
        if not sep or not dot or not name.strip() or not all(names):
            raise EvalkitError(f"--option {pair!r}: expected METRIC.KEY=VALUE or METRIC,METRIC.KEY=VALUE, e.g. wer,cer.lowercase=true")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value  # not YAML (e.g. an unbalanced bracket): the text itself
        for metric in names:
            options.setdefault(metric, {})[name.strip().replace("-", "_")] = parsed
    return options


def _outputs_from_args(args: argparse.Namespace, human_fields: Sequence[str] = ()):
    from evalkit.scoring import load_jsonl_outputs, load_text_outputs

    if args.jsonl:
        return load_jsonl_outputs(args.jsonl, args.system_field, args.prediction_field, args.reference_field,
                                  args.source_field, args.id_field, human_fields)
    if human_fields:
        raise EvalkitError("meta-eval: human scores come from a jsonl file; pass --jsonl FILE --human-field NAME")
    if not args.hyp or not args.ref:
        raise EvalkitError("score: give --hyp FILES and --ref FILES, or --jsonl FILE with its field names")
    return load_text_outputs(args.hyp, args.ref, args.src)


def add_score_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("score", help="score existing system outputs (no model): ranked table, intervals, pairwise tests")
    _add_outputs_arguments(p)
    p.add_argument("--bootstrap", type=_resamples(allow_zero=False), default=1000,
                   help="bootstrap resamples for intervals and paired tests (default: 1000)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the resamples (default: 0 for --paired-test bootstrap; $SACREBLEU_SEED or 12345, sacrebleu's, for the other two)")
    p.add_argument("--paired-test", choices=("bootstrap", "sacrebleu", "approximate-randomization"), default="bootstrap",
                   help="bootstrap: evalkit's two-sided shifted paired bootstrap (McNemar for 0/1 metrics); sacrebleu: "
                        "sacrebleu --paired-bs, run by sacrebleu's own code; approximate-randomization: sacrebleu --paired-ar")
    p.add_argument("--paired-n", type=_resamples(allow_zero=False), default=None, metavar="N",
                   help="resamples (trials) of the paired test (default: --bootstrap; 10000 for approximate-randomization, as sacrebleu)")
    p.add_argument("--output", type=Path, help="write DIR/results.json")
    p.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    check_output_dir(args.output, "--output")
    from evalkit.scoring import score_systems

    _quiet_libraries()
    report = score_systems(_outputs_from_args(args), args.metrics, _metric_options(args.option), n_resamples=args.bootstrap,
                           seed=args.seed, output_dir=args.output, config={"inputs": [str(p) for p in [*args.hyp, *args.ref]] or str(args.jsonl)},
                           paired_test=args.paired_test, paired_resamples=args.paired_n)
    console.print(score_table(report))
    for metric in report.metrics:
        console.print(pairwise_table(report, metric))
    if args.output:
        console.print(f"results: {args.output / 'results.json'}")
    return 0


def score_table(report) -> Table:
    table = Table(title=f"systems ranked by {report.metrics[0]} (95% bootstrap CI)")
    table.add_column("rank", justify="right")
    table.add_column("system")
    for name in report.metrics:
        table.add_column(f"{name} {'↑' if report.higher_is_better[name] else '↓'}", justify="right")
    for rank, system in enumerate(report.ranking, 1):
        cells = [f"{r.score:.4g} [{r.ci[0]:.4g}, {r.ci[1]:.4g}]" for r in report.results[system].values()]
        table.add_row(str(rank), system, *cells)
    return table


PAIRED_TEST_TITLES = {
    "bootstrap": "two-sided shifted paired bootstrap",
    "sacrebleu": "sacrebleu --paired-bs",
    "approximate-randomization": "sacrebleu --paired-ar",
}


def format_p_value(p: float, n_resamples: int | None = None) -> str:
    """3 decimals; at a resampling test's floor 1/(n+1) (no resample as extreme), "<" the next round bound, e.g. <0.001 for n = 1000."""
    if n_resamples and p <= 1 / (n_resamples + 1) * (1 + 1e-9):
        floor = 1 / (n_resamples + 1)
        exponent = math.floor(math.log10(floor))
        return f"<{math.ceil(floor / 10**exponent) * 10**exponent:g}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def pairwise_table(report, metric: str) -> Table:
    test = getattr(report, "paired_test", "bootstrap")
    how = PAIRED_TEST_TITLES.get(test, test)
    if test == "bootstrap" and report.pairwise[metric] and next(iter(report.pairwise[metric].values())).method == "mcnemar-exact":
        how = "exact McNemar"
    resamples = next((t.n_resamples for t in report.pairwise[metric].values() if t.n_resamples), None)
    title = f"pairwise {metric}: row - column ({how}{f', n={resamples}' if resamples else ''}; p-value, * p < 0.05)"
    table = Table(title=title)
    table.add_column("")
    for system in report.ranking[1:]:
        table.add_column(system, justify="right")
    tests = report.pairwise[metric]
    for i, a in enumerate(report.ranking[:-1]):
        cells = [""] * i + [
            f"{t.delta:+.3g} ({format_p_value(t.p_value, t.n_resamples)}){'*' if t.p_value < 0.05 else ''}"
            for b in report.ranking[i + 1 :] for t in [tests[(a, b)]]
        ]
        table.add_row(a, *cells)
    return table


def add_meta_eval_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("meta-eval", help="correlate metrics with human scores (segment, item and system level)")
    _add_outputs_arguments(p)
    p.add_argument("--human-field", required=True, help="comma-separated human score fields, e.g. mqm_score or coherence,relevance")
    p.add_argument("--kendall", choices=("b", "c", "acc23"), default="b",
                   help="Kendall column: tau-b or tau-c (scipy), or acc23: WMT23 pairwise accuracy with tie calibration (default: b)")
    p.add_argument("--bootstrap", type=_resamples(allow_zero=True), default=1000,
                   help="bootstrap resamples for the intervals (items at segment/item level, systems at system level; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")
    p.add_argument("--exclude-systems", default="", metavar="A,B", help="comma-separated systems to leave out")
    p.add_argument("--exclude-human", action="store_true",
                   help="leave out human translations: systems named ref*/reference*/human* followed by nothing, - _ . a capital or a digit")
    p.add_argument("--output", type=Path, help="write DIR/meta_eval.json (every value at full precision)")
    p.set_defaults(handler=cmd_meta_eval)


def cmd_meta_eval(args: argparse.Namespace) -> int:
    from evalkit.scoring import meta_evaluate

    _quiet_libraries()
    humans = [h.strip() for h in args.human_field.split(",") if h.strip()]
    exclude = [s.strip() for s in args.exclude_systems.split(",") if s.strip()]
    check_output_dir(args.output, "--output")
    rows = meta_evaluate(_outputs_from_args(args, humans), args.metrics, _metric_options(args.option), kendall=args.kendall,
                         n_resamples=args.bootstrap, seed=args.seed, exclude_systems=exclude, exclude_human=args.exclude_human,
                         output_dir=args.output, config={"inputs": str(args.jsonl)})
    console.print(meta_eval_table(rows, args.kendall, args.bootstrap))
    if args.output:
        console.print(f"results: {args.output / 'meta_eval.json'}")
    return 0


KENDALL_TITLES = {"b": "kendall tau-b", "c": "kendall tau-c", "acc23": "acc23 (eps)"}


def meta_eval_table(rows, kendall: str = "b", n_resamples: int = 0) -> Table:
    """Correlations at 4 decimals with their 95% bootstrap intervals."""
    interval = f"; [95% bootstrap CI, {n_resamples} resamples]" if n_resamples else ""
    title = "correlation with human scores (segment: all pairs pooled; item: per item across systems, averaged" + interval + ")"
    if kendall == "acc23":
        title += "\nacc23: WMT23 pairwise accuracy with tie calibration at item and system level (none for pooled segments)"
    table = Table(title=title)
    for column in ("metric", "human", "level", "pearson", "spearman", KENDALL_TITLES[kendall], "n"):
        table.add_column(column, justify="left" if column in ("metric", "human", "level") else "right")

    def cell(row, name: str) -> str:
        value = getattr(row, name)
        if value is None or math.isnan(value):
            return "-"
        text = f"{value:.4f}"
        if name in row.ci and not any(math.isnan(v) for v in row.ci[name]):
            text += f" [{row.ci[name][0]:.4f}, {row.ci[name][1]:.4f}]"
        if name == "kendall" and row.epsilon is not None:
            text += f" (eps {row.epsilon:.4g})"
        return text

    for row in rows:
        table.add_row(row.metric, row.human, row.level, cell(row, "pearson"), cell(row, "spearman"), cell(row, "kendall"), str(row.n))
    return table


PARSER_BUILDERS.extend([add_score_parser, add_meta_eval_parser])


# ---------------------------------------------------------------- serve


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", required=True, help="registry alias, hub id, folder or .gguf file")
    p.add_argument("--backend", default="auto", choices=["auto", "hf", "native"],
                   help="model adapter (default: auto, the native engine where it runs the model, else hf)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts of one request decoded together")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    p.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $VAR' with the key in this variable")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from evalkit.serve import serve

    serve(
        args.model,
        backend=args.backend,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        served_name=args.served_model_name,
        api_key_env=args.api_key_env,
    )
    return 0


PARSER_BUILDERS.append(add_serve_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="evalkit", description=__doc__.splitlines()[0])
    verbose_help = "show third-party library output (Lightning banners, library warnings, progress bars)"
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    commands = parser.add_subparsers(dest="command", required=True)
    for build in PARSER_BUILDERS:
        build(commands)
    for sub in commands.choices.values():  # also accepted after the command: `evalkit score ... --verbose`
        with contextlib.suppress(argparse.ArgumentError):  # the command defines its own --verbose
            sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        with reporting(progress_reporter()):  # GGUF conversion, model loading, runs and scoring report to it
            return args.handler(args)
    except EvalkitError as error:
        err_console.print(f"[bold red]error:[/] {escape(cli_message(str(error), args.command))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted: finished responses are cached; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
