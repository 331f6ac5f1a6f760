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
from evalkit.runner import SCORING_LABEL

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
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
    p.add_argument("--decoding", default=None, help="comma-separated strategies, e.g. greedy,beam4,top-p0.9 (default: greedy)")
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
    p.add_argument("--report", type=Path, metavar="HTML", help="also write the run's HTML leaderboard to this file")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from evalkit.api import evaluate
    from evalkit.distributed import is_main_process
    from evalkit.results import safe_filename

    decoding: list = [d for d in args.decoding.split(",") if d.strip()] if args.decoding else []
    if args.decoding_file is not None:
        from evalkit.decoding import load_decoding_file

        decoding.extend(load_decoding_file(args.decoding_file))
    output = args.output or Path("runs") / safe_filename(f"{args.model}-{args.backend}")
    main = is_main_process()  # under torchrun only rank 0 shows progress and prints
    progress = RichProgress() if main else None
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
        if progress is not None:
            progress.close()
    if not main:
        return 0
    console.print(results_table(results))
    for table in comparison_tables(results):
        console.print(table)
    console.print(f"results: {output / 'results.json'}  samples: {output / 'samples'}")
    if args.report is not None:
        from evalkit.report import build_report

        console.print(f"report: {build_report([output], args.report)}")
    return 0


def comparison_tables(results: dict, tasks: Sequence[str] | None = None) -> list[Table]:
    """The strategy table (quality, diversity, length, speed) of every generation task."""
    from evalkit.decoding.compare import DIVERSITY_COLUMNS, strategy_rows

    tables = []
    for task, by_label in results["results"].items():
        if (tasks and task not in tasks) or SCORING_LABEL in by_label:
            continue
        rows = strategy_rows(results, task)
        table = Table(title=f"decoding strategies on {task} ({results['model']}, {results['n_items'][task]} items; * = Pareto-best quality vs tok/s)")
        for column in ("strategy", rows[0]["quality_metric"], *DIVERSITY_COLUMNS, "tok/s", "pareto"):
            table.add_column(column, justify="left" if column == "strategy" else "right")
        for row in rows:
            speed = row["tokens_per_s"]
            table.add_row(
                row["strategy"],
                _fmt(row["quality"]),
                *(_fmt(row[c]) for c in DIVERSITY_COLUMNS),
                f"{speed:.1f}" if speed else "-",
                "*" if row["pareto"] else "",
            )
        tables.append(table)
    return tables


def add_compare_decoding_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare-decoding", help="the strategy comparison table of a finished run")
    p.add_argument("run_dir", type=Path, help="a folder written by `evalkit run`")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.set_defaults(handler=cmd_compare_decoding)


def cmd_compare_decoding(args: argparse.Namespace) -> int:
    import json

    path = args.run_dir / "results.json"
    if not path.is_file():
        raise EvalkitError(f"{path} not found: pass a folder written by `evalkit run --output DIR`")
    tables = comparison_tables(json.loads(path.read_text(encoding="utf-8")), args.task)
    if not tables:
        raise EvalkitError(f"{path} has no generation task (of those asked for): run one with --decoding a,b,...")
    for table in tables:
        console.print(table)
    return 0


# Diversity metrics of generation cells: the strategy table shows them, the main table leaves them out.
DIVERSITY_NAMES = {"distinct-1", "distinct-2", "distinct-3", "self-bleu", "group-self-bleu", "rep-4", "length"}


def results_table(results: dict) -> Table:
    table = Table(title=f"{results['model']} ({results['backend']})")
    for column in ("task", "decoding", "metric", "value", "95% CI", "items", "tok/s"):
        table.add_column(column, justify="right" if column in ("value", "95% CI", "items", "tok/s") else "left")
    for task, by_decoding in results["results"].items():
        for label, values in by_decoding.items():
            tokens_per_s = results["efficiency"][task][label].get("tokens_per_s")
            for metric, value in values.items():
                if metric.endswith("_ci") or metric in DIVERSITY_NAMES:  # shown in the strategy table instead
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


# ---------------------------------------------------------------- report


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="build a self-contained HTML leaderboard from run folders")
    p.add_argument("run_dirs", nargs="+", type=Path, help="folders written by `evalkit run`, or a folder of such folders")
    p.add_argument("-o", "--output", type=Path, default=Path("leaderboards/index.html"), help="HTML file to write (default: leaderboards/index.html)")
    p.add_argument("--title", default=None, help="page title (default: names the models)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from evalkit.report import build_report

    path = build_report(args.run_dirs, args.output, title=args.title)
    console.print(f"leaderboard: {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False, markup=False, soft_wrap=True)
    return 0


# ---------------------------------------------------------------- entry


def _quiet_libraries() -> None:
    """Library chatter (tokenizer-length warnings, legacy notices) would bury evalkit's own messages."""
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


PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_run_parser, add_list_parser, add_compare_decoding_parser, add_report_parser
]


# ---------------------------------------------------------------- score | meta-eval (metrics without a model)


def _add_outputs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hyp", nargs="+", type=Path, default=[], help="hypothesis files, one per system, one segment per line")
    p.add_argument("--ref", nargs="+", type=Path, default=[], help="reference files (several: multi-reference)")
    p.add_argument("--src", type=Path, help="source file (COMET)")
    p.add_argument("--jsonl", type=Path, help="one jsonl file with a row per (system, segment) instead of text files")
    p.add_argument("--system-field", default="system")
    p.add_argument("--prediction-field", default="hypothesis")
    p.add_argument("--reference-field", default="reference", help="a string, or a list of strings for several references")
    p.add_argument("--source-field", default=None)
    p.add_argument("--id-field", default=None, help="align systems by this field (default: row order)")
    p.add_argument("--metrics", default="bleu,chrf", help="comma-separated, e.g. bleu,chrf,ter,rouge,bertscore,comet,wer,cer")
    p.add_argument("--option", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="metric option, e.g. wer.lowercase=true, bertscore.model=DIR, comet.model=Unbabel/wmt22-comet-da")


def _metric_options(pairs: Sequence[str]) -> dict[str, dict]:
    import yaml

    options: dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        metric, dot, name = key.partition(".")
        if not sep or not dot:
            raise EvalkitError(f"--option {pair!r}: expected METRIC.KEY=VALUE, e.g. wer.lowercase=true")
        options.setdefault(metric, {})[name.replace("-", "_")] = yaml.safe_load(value)
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
    p.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="write DIR/results.json")
    p.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from evalkit.scoring import score_systems

    _quiet_libraries()
    report = score_systems(_outputs_from_args(args), args.metrics, _metric_options(args.option), n_resamples=args.bootstrap,
                           seed=args.seed, output_dir=args.output, config={"inputs": [str(p) for p in [*args.hyp, *args.ref]] or str(args.jsonl)})
    console.print(score_table(report))
    console.print(pairwise_table(report, report.metrics[0]))
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


def pairwise_table(report, metric: str) -> Table:
    table = Table(title=f"pairwise {metric}: row - column (p-value; * p < 0.05)")
    table.add_column("")
    for system in report.ranking[1:]:
        table.add_column(system, justify="right")
    tests = report.pairwise[metric]
    for i, a in enumerate(report.ranking[:-1]):
        cells = [""] * i + [
            f"{t.delta:+.3g} ({t.p_value:.3f}){'*' if t.p_value < 0.05 else ''}" for b in report.ranking[i + 1 :] for t in [tests[(a, b)]]
        ]
        table.add_row(a, *cells)
    return table


def add_meta_eval_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("meta-eval", help="correlate metrics with human scores (segment, item and system level)")
    _add_outputs_arguments(p)
    p.add_argument("--human-field", required=True, help="comma-separated human score fields, e.g. mqm_score or coherence,relevance")
    p.set_defaults(handler=cmd_meta_eval)


def cmd_meta_eval(args: argparse.Namespace) -> int:
    from evalkit.scoring import meta_evaluate

    _quiet_libraries()
    humans = [h.strip() for h in args.human_field.split(",") if h.strip()]
    rows = meta_evaluate(_outputs_from_args(args, humans), args.metrics, _metric_options(args.option))
    table = Table(title="correlation with human scores (segment: all pairs pooled; item: per item across systems, averaged)")
    for column in ("metric", "human", "level", "pearson", "spearman", "kendall", "n"):
        table.add_column(column, justify="left" if column in ("metric", "human", "level") else "right")
    for row in rows:
        table.add_row(row.metric, row.human, row.level, f"{row.pearson:.3f}", f"{row.spearman:.3f}", f"{row.kendall:.3f}", str(row.n))
    console.print(table)
    return 0


PARSER_BUILDERS.extend([add_score_parser, add_meta_eval_parser])


# ---------------------------------------------------------------- serve


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", required=True, help="registry alias, hub id, folder or .gguf file")
    p.add_argument("--backend", default="hf", choices=["hf", "native"], help="model adapter (default: hf)")
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
    parser = argparse.ArgumentParser(prog="evalkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for build in PARSER_BUILDERS:
        build(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
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
