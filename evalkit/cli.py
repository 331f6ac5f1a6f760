"""The command line: evalkit run | list | report | compare-decoding | score | meta-eval.

Each command is a small function over the Python API; errors the user can fix
are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evalkit.errors import EvalkitError

console = Console()
err_console = Console(stderr=True)


class RichProgress:
    """A progress bar per (task, decoding) cell with examples/s and an ETA."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[progress.percentage]{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._task_id = None

    def start(self, description: str, total: int) -> None:
        if self._task_id is None:
            self._progress.start()
        self._task_id = self._progress.add_task(description, total=total, rate="")

    def advance(self, amount: float) -> None:
        self._progress.advance(self._task_id, amount)
        speed = self._progress.tasks[self._task_id].speed
        if speed:
            self._progress.update(self._task_id, rate=f"{speed:.2f} ex/s")

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self._task_id is not None:
            self._progress.stop()


# ---------------------------------------------------------------- run


def add_run_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="evaluate a model on tasks under decoding strategies")
    p.add_argument("--model", required=True, help="registry alias (see `evalkit list models`), hub id, folder or .gguf file")
    p.add_argument("--backend", default="hf", choices=["hf", "native", "openai"], help="model adapter (default: hf)")
    p.add_argument("--tasks", required=True, help="comma-separated task names, suites or YAML files (see `evalkit list tasks`)")
    p.add_argument("--decoding", default="greedy", help="comma-separated strategies, e.g. greedy,beam4,top-p0.9")
    p.add_argument("--decoding-file", type=Path, help="YAML file with a grid of decoding configs (added to --decoding)")
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N items of each task")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for confidence intervals (0: none)")
    p.add_argument("--data-dir", default=os.environ.get("EVALKIT_DATA"), help="folder with task data (default: $EVALKIT_DATA)")
    p.add_argument("--output", type=Path, default=None, help="results folder (default: runs/<model>)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from evalkit.api import evaluate
    from evalkit.results import safe_filename

    decoding: list = [d for d in args.decoding.split(",") if d.strip()] if args.decoding else []
    if args.decoding_file is not None:
        from evalkit.decoding import load_decoding_file

        decoding.extend(load_decoding_file(args.decoding_file))
    output = args.output or Path("runs") / safe_filename(f"{args.model}-{args.backend}")
    progress = RichProgress()
    try:
        results = evaluate(
            args.model,
            tasks=args.tasks,
            decoding=decoding or "greedy",
            limit=args.limit,
            data_dir=args.data_dir,
            backend=args.backend,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            seed=args.seed,
            bootstrap=args.bootstrap,
            output_dir=output,
            cache=not args.no_cache,
            progress=progress,
        )
    finally:
        progress.close()
    console.print(results_table(results))
    console.print(f"results: {output / 'results.json'}  samples: {output / 'samples'}")
    return 0


def results_table(results: dict) -> Table:
    table = Table(title=f"{results['model']} ({results['backend']})")
    for column in ("task", "decoding", "metric", "value", "95% CI", "items", "tok/s"):
        table.add_column(column, justify="right" if column in ("value", "95% CI", "items", "tok/s") else "left")
    for task, by_decoding in results["results"].items():
        for label, values in by_decoding.items():
            tokens_per_s = results["efficiency"][task][label].get("tokens_per_s")
            for metric, value in values.items():
                if metric.endswith("_ci"):
                    continue
                ci = values.get(f"{metric}_ci")
                table.add_row(
                    task,
                    label,
                    metric,
                    _fmt(value),
                    f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "",
                    str(results["n_items"][task]),
                    f"{tokens_per_s:.1f}" if tokens_per_s else "",
                )
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


# ---------------------------------------------------------------- list


def add_list_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("list", help="list tasks, models, metrics or decoding presets")
    p.add_argument("what", choices=["tasks", "models", "metrics", "decoding"])
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


# ---------------------------------------------------------------- entry


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [add_run_parser, add_list_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for build in PARSER_BUILDERS:
        build(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EvalkitError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted: finished responses are cached; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
