"""The declarative task spec: a YAML file parsed into dataclasses and validated up front.

Everything a task needs is in its file (data source, templates, few-shot,
metrics, generation defaults, output filter), so adding a task means writing
YAML, not Python. Validation happens when the file is read, before any data or
model is loaded, and every problem is one line naming the file, the field and
the fix.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evalkit.errors import EvalkitError
from evalkit.tasks.filters import OutputFilter, build_filter, build_filter_list
from evalkit.tasks.templates import check_expression, check_template

OUTPUT_TYPES = ("loglikelihood_rolling", "multiple_choice", "generate_until")
MULTIPLE_CHOICE_METRICS = ("acc", "acc_norm")
DATA_FORMATS = ("jsonl", "json", "csv", "parquet", "txt")
TXT_DOCUMENTS = ("lines", "wikitext_articles")
FEWSHOT_SAMPLERS = ("random", "first_n")


@dataclass
class HubSpec:
    """A Hugging Face hub dataset: used when the local file is absent and the hub is reachable.

    ``fields`` maps this task's field names to expressions over the hub row, for
    hub datasets whose columns differ from the local file's.
    """

    path: str
    name: str | None = None
    split: str = "test"
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """Where the documents come from.

    ``path`` is relative to the data dir (``--data-dir`` / ``EVALKIT_DATA``),
    or to the task file's folder when it starts with ``./``. ``columns`` reads
    several line-aligned text files as the fields of one document per line
    (WMT sources and references). ``loader: datasets`` reads local files
    through Hugging Face ``datasets`` instead of evalkit's own readers.
    """

    path: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    loader: str = "native"
    txt_documents: str = "lines"
    text_field: str = "text"
    dedupe_by: str | None = None
    hub: HubSpec | None = None
    homepage: str | None = None


@dataclass
class FewshotSpec:
    """k examples before each item; drawn per item with a seeded RNG, the item itself excluded.

    ``sampler`` is ``random`` (seeded per item) or ``first_n`` (the pool's
    first examples, in order, as lm-eval's ``first_n``). The pool is the
    evaluated documents unless ``path`` (a local file, like
    ``dataset.path``) or ``hub_split`` (a split of the hub dataset) names another.
    """

    num: int = 0
    delimiter: str = "\n\n"
    seed: int = 1234
    sampler: str = "random"
    path: str | None = None
    hub_split: str | None = None


@dataclass
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSpec:
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)


@dataclass
class TaskSpec:
    """A parsed, validated task file.

    ``doc_to_text`` and ``doc_to_target`` are Jinja2 templates (text);
    ``doc_to_choice``, ``gold`` and ``reference`` are Jinja2 expressions
    (Python values: a list of choices, a gold index, a reference string or a
    list of references). ``gen_prefix`` (a template) starts the answer, e.g.
    "The answer is": the model continues it (lm-eval's ``gen_prefix``).
    """

    name: str
    description: str
    output_type: str
    dataset: DatasetSpec
    doc_to_text: str
    metrics: list[MetricSpec]
    doc_to_target: str | None = None
    doc_to_choice: str | None = None
    gold: str | None = None
    reference: str | None = None
    target_delimiter: str = " "
    gen_prefix: str | None = None
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    filter: list[Any] = field(default_factory=list)
    filter_list: list[Any] | None = None
    source_file: Path | None = None

    def output_filter(self) -> OutputFilter:
        return build_filter(self.filter or None, f"task {self.name!r}")

    def output_filters(self) -> dict[str | None, OutputFilter]:
        """Every pipeline by name: ``filter_list``'s named ones, else ``{None: output_filter()}``.

        ``None`` marks the single unnamed filter, whose metric names stay plain
        (``exact_match``); named pipelines give ``exact_match,NAME`` as lm-eval does.
        """
        if self.filter_list is not None:
            return build_filter_list(self.filter_list, f"task {self.name!r}")
        return {None: self.output_filter()}


def _known_metrics() -> set[str] | None:
    """Metric names from evalkit.metrics, or None while that package cannot be imported."""
    try:
        from evalkit.metrics import list_metrics
        from evalkit.metrics.registry import ALIASES
    except ImportError:
        return None
    return {name for name, _ in list_metrics()} | set(ALIASES)


def _build(cls: type, data: Any, where: str, nested: dict[str, Any] | None = None):
    """Instantiate a spec dataclass from a mapping, naming unknown and missing fields."""
    if not isinstance(data, dict):
        raise EvalkitError(f"{where}: expected a mapping of fields, got {type(data).__name__}; fix the YAML")
    allowed = list(cls.__dataclass_fields__)
    unknown = [k for k in data if k not in allowed or k == "source_file"]
    if unknown:
        raise EvalkitError(f"{where}: unknown field {unknown[0]!r}; allowed fields are {', '.join(a for a in allowed if a != 'source_file')}")
    values = dict(data)
    for key, build in (nested or {}).items():
        if values.get(key) is not None:
            values[key] = build(values[key])
    try:
        return cls(**values)
    except TypeError as err:
        missing = [
            name
            for name, f in cls.__dataclass_fields__.items()
            if name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        raise EvalkitError(f"{where}: missing required field {missing[0]!r}; add it" if missing else f"{where}: {err}") from None


def _metric(item: Any, where: str) -> MetricSpec:
    if isinstance(item, str):
        return MetricSpec(item)
    spec = _build(MetricSpec, item, f"{where}: metrics entry")
    if not isinstance(spec.options, dict):
        raise EvalkitError(f"{where}: metric {spec.name!r} options must be a mapping")
    return spec


def parse_spec(data: Any, where: str, source_file: Path | None = None) -> TaskSpec:
    """Validate a task mapping (already parsed YAML) into a TaskSpec."""
    if not isinstance(data, dict):
        raise EvalkitError(f"{where}: the file must be a YAML mapping of task fields; see evalkit/tasks/builtin/*.yaml")
    for required in ("name", "output_type", "dataset", "doc_to_text", "metrics"):
        value = data.get(required)
        if value is None or (value in ("", []) and required != "doc_to_text"):  # "" is a valid template
            raise EvalkitError(f"{where}: missing required field {required!r}; add it (see evalkit/tasks/builtin/*.yaml)")
    if data["output_type"] not in OUTPUT_TYPES:
        raise EvalkitError(
            f"{where}: field 'output_type' is {data['output_type']!r}; use one of {', '.join(OUTPUT_TYPES)}"
        )
    if not isinstance(data["metrics"], list):
        raise EvalkitError(f"{where}: field 'metrics' must be a list of metric names or {{name, options}} entries")
    nested = {
        "dataset": lambda d: _build(
            DatasetSpec, d, f"{where}: field 'dataset'",
            {"hub": lambda h: _build(HubSpec, h, f"{where}: field 'dataset.hub'")},
        ),
        "fewshot": lambda d: _build(FewshotSpec, d, f"{where}: field 'fewshot'"),
        "generation": lambda d: _build(GenerationSpec, d, f"{where}: field 'generation'"),
        "metrics": lambda items: [_metric(m, where) for m in items],
    }
    spec: TaskSpec = _build(TaskSpec, {**data, "description": data.get("description", "")}, where, nested)
    spec.source_file = source_file
    _validate(spec, where)
    return spec


def _validate(spec: TaskSpec, where: str) -> None:
    ds = spec.dataset
    if not ds.path and not ds.columns and not ds.hub:
        raise EvalkitError(f"{where}: field 'dataset' names no data; add dataset.path, dataset.columns or dataset.hub")
    if ds.format is not None and ds.format not in DATA_FORMATS:
        raise EvalkitError(f"{where}: field 'dataset.format' is {ds.format!r}; use one of {', '.join(DATA_FORMATS)}")
    if ds.loader not in ("native", "datasets"):
        raise EvalkitError(f"{where}: field 'dataset.loader' is {ds.loader!r}; use 'native' or 'datasets'")
    if ds.txt_documents not in TXT_DOCUMENTS:
        raise EvalkitError(f"{where}: field 'dataset.txt_documents' is {ds.txt_documents!r}; use one of {', '.join(TXT_DOCUMENTS)}")

    check_template(spec.doc_to_text, f"{where}: field 'doc_to_text'")
    for name in ("doc_to_target", "gen_prefix"):
        if getattr(spec, name) is not None:
            if not isinstance(getattr(spec, name), str):
                raise EvalkitError(f"{where}: field {name!r} must be a text template")
            check_template(getattr(spec, name), f"{where}: field {name!r}")
    for name in ("doc_to_choice", "gold", "reference"):
        if getattr(spec, name) is not None:
            check_expression(getattr(spec, name), f"{where}: field {name!r}")
    if ds.hub:
        for key, expression in ds.hub.fields.items():
            check_expression(expression, f"{where}: field 'dataset.hub.fields.{key}'")

    if spec.output_type == "multiple_choice":
        for required in ("doc_to_choice", "gold"):
            if getattr(spec, required) is None:
                raise EvalkitError(f"{where}: missing field {required!r}, which multiple_choice tasks need; add it")
        bad = [m.name for m in spec.metrics if m.name not in MULTIPLE_CHOICE_METRICS]
        if bad:
            raise EvalkitError(
                f"{where}: metric {bad[0]!r} does not apply to multiple_choice; use {', '.join(MULTIPLE_CHOICE_METRICS)}"
            )
    else:
        known = _known_metrics()
        bad = [m.name for m in spec.metrics if known is not None and m.name not in known]
        if bad:
            raise EvalkitError(
                f"{where}: unknown metric {bad[0]!r}; run `evalkit list metrics` for the names ({', '.join(sorted(known))})"
            )
    if spec.output_type == "generate_until" and spec.reference is None and spec.doc_to_target is None:
        raise EvalkitError(f"{where}: generate_until tasks need 'reference' or 'doc_to_target'; add one")
    if spec.fewshot.sampler not in FEWSHOT_SAMPLERS:
        raise EvalkitError(f"{where}: field 'fewshot.sampler' is {spec.fewshot.sampler!r}; use one of {', '.join(FEWSHOT_SAMPLERS)}")
    if not isinstance(spec.fewshot.num, int) or spec.fewshot.num < 0:
        raise EvalkitError(f"{where}: field 'fewshot.num' must be a non-negative integer")
    if spec.fewshot.num and spec.doc_to_target is None and spec.output_type != "multiple_choice":
        raise EvalkitError(f"{where}: few-shot examples need 'doc_to_target' for their answers; add it")
    if not isinstance(spec.generation.max_new_tokens, int) or spec.generation.max_new_tokens < 1:
        raise EvalkitError(f"{where}: field 'generation.max_new_tokens' must be a positive integer")
    _validate_filters(spec, where)


def _validate_filters(spec: TaskSpec, where: str) -> None:
    """Compile the filters now, naming the file, so bad patterns fail before any data is read."""
    if spec.filter_list is None:
        build_filter(spec.filter or None, where)
        return
    if spec.filter:
        raise EvalkitError(f"{where}: 'filter' and 'filter_list' are both given; keep one (move the 'filter' steps into a named 'filter_list' pipeline)")
    if spec.output_type != "generate_until":
        raise EvalkitError(f"{where}: 'filter_list' applies to generate_until tasks only; remove it")
    build_filter_list(spec.filter_list, where)


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate one task file."""
    path = Path(path)
    where = f"task file {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalkitError(f"{where}: not found; check the path, or run `evalkit list tasks` for built-in names") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise EvalkitError(f"{where}: malformed YAML{at} ({problem}); fix the syntax") from None
    return parse_spec(data, where, source_file=path)
