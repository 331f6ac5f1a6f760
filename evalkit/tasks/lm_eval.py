"""Any lm-evaluation-harness task inside evalkit: ``--tasks lm_eval:hellaswag``.

lm-eval builds the prompts and scores the answers, exactly as its own
evaluator does (its ``TaskManager`` finds the task, ``build_all_requests``
makes the requests, its filters, ``process_results`` and aggregations turn
the answers into numbers); evalkit supplies everything in between: the model
adapters, the decoding grid, batching, the response cache, sharding across
ranks, bootstrap intervals and results.json. A name can be a task, a group
(each member becomes an evalkit task) or the path of a task YAML file.

Data comes from the hub as lm-eval configures it. When the hub is not
reachable, the tasks evalkit ships its own data for read the local copies in
the data dir (``--data-dir`` / ``$EVALKIT_DATA``) instead, through lm-eval's
own config fields (``dataset_path: json`` + ``data_files``, or
``custom_dataset``); see :data:`LOCAL_DATA` for the mapping and for how each
local copy differs from the hub's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.metrics.bootstrap import bootstrap_aggregate_ci
from evalkit.requests import Generate, Loglikelihood, Request, Response, RollingLoglikelihood
from evalkit.tasks.chat import PLAIN, PromptFormat
from evalkit.tasks.task import Instance, TaskScore

LM_EVAL_PREFIX = "lm_eval:"
# lm-eval's simple_evaluate default: the few-shot examples are drawn with this seed.
FEWSHOT_SEED = 1234
_DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until without max_gen_toks


def _hellaswag_local_docs(dataset: Any) -> Any:
    """lm-eval's hellaswag ``process_docs`` for the local copy, whose ``query`` is already ``label: ctx``."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    def convert(doc: dict) -> dict:
        return {"query": preprocess(doc["query"]), "choices": [preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}

    return dataset.map(convert)


def _wikitext_local_dataset(path: str, **_: Any) -> Any:
    """WikiText-2 raw test as lm-eval's ``wikitext_document_level`` rows (one ``page`` per article)."""
    import datasets

    from evalkit.tasks.loaders import split_wikitext_articles

    pages = split_wikitext_articles(Path(path).read_text(encoding="utf-8"), field="page")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(pages)})


@dataclass(frozen=True)
class LocalData:
    """Where a task's documents are in the data dir, and the config fields that point lm-eval at them."""

    split: str
    path: str  # relative to the data dir
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def config(self, data_dir: Path) -> dict[str, Any]:
        """The fields that replace the hub dataset in lm-eval's task config."""
        file = str(data_dir / self.path)
        fields: dict[str, Any] = {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {self.split: file}}}
        fields.update({"training_split": None, "validation_split": None, "test_split": None, self.split + "_split": self.split})
        if callable(self.overrides.get("custom_dataset")):
            fields["dataset_kwargs"] = {"path": file}
        fields.update(self.overrides)
        return fields


# lm-eval task name -> the local copy evalkit ships data for (shared/data layout).
LOCAL_DATA: dict[str, LocalData] = {
    "hellaswag": LocalData(
        "validation",
        "hellaswag/hellaswag_val.rows_0000-1999.jsonl",
        {"process_docs": _hellaswag_local_docs},
        note="validation rows 0..1999; the copy lacks ctx_a/ctx_b, so ctx_b keeps its case where lm-eval capitalizes it",
    ),
    "piqa": LocalData("validation", "piqa/valid.jsonl", note="the full validation split (1,838 rows)"),
    "gsm8k": LocalData(
        "test",
        "gsm8k/test.jsonl",
        {"fewshot_split": "test"},
        note="no train split locally: the 5 few-shot examples come from the test split (never the item itself)",
    ),
    "wikitext": LocalData(
        "test",
        "wikitext2_raw/wiki.test.raw.txt",
        {"custom_dataset": _wikitext_local_dataset},
        note="62 articles split at the ' = Title = ' lines of the raw file; blank lines of the hub pages are absent",
    ),
}


@cache
def task_manager(folder: str | None = None) -> Any:
    """lm-eval's TaskManager over one folder of its tasks, or over all of them (indexing all takes 15-40 s here)."""
    from lm_eval.tasks import TaskManager

    if folder is None:
        return TaskManager()
    return TaskManager(include_path=folder, include_defaults=False)


def _manager_for(name: str) -> Any:
    """The smallest TaskManager that knows ``name``: its own folder of lm-eval's tasks when it has one."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    for folder in dict.fromkeys([name, name.split("_")[0]]):
        if (root / folder).is_dir():
            manager = task_manager(str(root / folder))
            if name in manager.all_tasks:
                return manager
    return task_manager(None)


def lm_eval_config(name: str, data_dir: str | Path | None) -> dict[str, Any] | str:
    """What to hand lm-eval's ``TaskManager.load``: the name itself, or its config pointed at local data.

    Local data is used when the hub is unreachable and ``name`` is in :data:`LOCAL_DATA`.
    """
    from evalkit.hub import hub_reachable
    from evalkit.tasks.loaders import resolve_data_dir

    if name not in LOCAL_DATA or hub_reachable():
        return name
    local = LOCAL_DATA[name]
    root = resolve_data_dir(data_dir)
    if root is None or not (root / local.path).is_file():
        raise EvalkitError(
            f"lm-eval task {name!r}: the Hugging Face hub is not reachable and the local copy {local.path} is not "
            f"under the data dir ({root}); pass data_dir=DIR (or set EVALKIT_DATA) with the folder that holds it"
        )
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = _manager_for(name).task_index[name]
    return {**load_yaml(entry.yaml_path, resolve_func=True), **local.config(root)}


def lm_eval_tasks(name: str, data_dir: str | Path | None = None) -> list[LmEvalTask]:
    """The evalkit tasks for an lm-eval task, group or task YAML path (``name`` without the ``lm_eval:`` prefix)."""
    if not name:
        raise EvalkitError("empty lm-eval task name: write tasks='lm_eval:<name>', e.g. lm_eval:hellaswag")
    from evalkit.hub import hub_reachable

    spec = lm_eval_config(name, data_dir)
    is_path = name.endswith((".yaml", ".yml"))
    if is_path and not Path(name).is_file():
        raise EvalkitError(f"lm-eval task file {name!r} does not exist; check the path after lm_eval:")
    manager = task_manager(str(Path(name).resolve().parent)) if is_path else _manager_for(name)
    if not is_path and name not in manager.all_tasks:
        raise EvalkitError(f"unknown lm-eval task {name!r}; run `lm_eval ls tasks` to see the names, or pass lm_eval:/path/to/task.yaml")
    try:
        loaded = manager.load([spec])["tasks"]
    except Exception as err:
        offline = "" if hub_reachable() else " (the Hugging Face hub is not reachable from here)"
        raise EvalkitError(f"lm-eval task {name!r} could not be loaded{offline}: {str(err).strip().splitlines()[0]}") from err
    source = "local:" + LOCAL_DATA[name].path if isinstance(spec, dict) else "lm-eval config"
    return [LmEvalTask(task, source) for task in loaded.values()]


class LmEvalTask:
    """One lm-eval task behind evalkit's Task interface (``name``, ``output_type``, ``instances``, ``score``)."""

    def __init__(self, task: Any, source: str) -> None:
        repeats = task.config.repeats or 1
        if repeats > 1:
            raise EvalkitError(
                f"lm-eval task {task.config.task!r} repeats each request {repeats} times (self-consistency); "
                "evalkit runs every request once: use a task without repeats"
            )
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        self.task = task
        self.name = LM_EVAL_PREFIX + task.config.task
        self.output_type = task.OUTPUT_TYPE
        self.source = source
        self._requests: dict[int, list[Any]] = {}  # doc_id -> lm-eval Instances, in request order

    def __repr__(self) -> str:
        return f"LmEvalTask({self.name!r}, {self.output_type})"

    def instances(self, limit: int | None = None, fmt: PromptFormat = PLAIN) -> list[Instance]:
        """lm-eval's requests for the first ``limit`` documents, grouped per document as evalkit instances.

        A chat format is handed to lm-eval's own prompt builder (its
        ``apply_chat_template`` options), rendering with evalkit's template.
        """
        if limit is not None and limit < 1:
            raise EvalkitError(f"limit={limit}: must be a positive number of items")
        if fmt.chat and fmt.chat_template is None:
            raise EvalkitError(f"task {self.name!r}: lm-eval builds chat prompts as text; give the model's template as a Jinja file instead of ::chat")
        template = fmt.chat_template

        def render(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return template.render(messages, add_generation_prompt=add_generation_prompt)

        self.task.build_all_requests(
            limit=limit, rank=0, world_size=1, system_instruction=fmt.system_instruction,
            apply_chat_template=fmt.chat, fewshot_as_multiturn=fmt.fewshot_as_multiturn,
            chat_template=render if template else None,
        )
        by_doc: dict[int, list[Any]] = {}
        for request in self.task.instances:
            by_doc.setdefault(request.doc_id, []).append(request)
        out = []
        for doc_id, requests in by_doc.items():
            requests.sort(key=lambda r: r.idx)
            self._requests[doc_id] = requests
            doc = requests[0].doc
            converted = [_to_evalkit(r) for r in requests]
            if fmt.end_of_turn:  # as evalkit's own tasks: a chat answer ends at the template's end of turn
                converted = [replace(r, stop=(*r.stop, fmt.end_of_turn)) if isinstance(r, Generate) and fmt.end_of_turn not in r.stop else r for r in converted]
            out.append(Instance(doc_id, doc, requests[0].args[0], self.task.doc_to_target(doc), converted))
        return out

    def score(
        self, instances: list[Instance], responses: list[list[Response]], *, bootstrap: int = 1000, seed: int = 0
    ) -> TaskScore:
        """lm-eval's filters, ``process_results`` and aggregations over evalkit's responses; percentile bootstrap CIs."""
        requests = []
        for instance, answers in zip(instances, responses):
            for request, response in zip(self._requests[instance.doc_id], answers):
                request.resps = [_to_lm_eval(request.request_type, response)]
                request.filtered_resps = {}
                requests.append(request)
        self.task._instances = requests  # apply_filters works on the task's instance list
        self.task.apply_filters()
        aggregations = self.task.aggregation()
        per_metric: dict[str, list[Any]] = {}
        samples = []
        for instance in instances:
            mine = self._requests[instance.doc_id]
            sample = {"doc_id": instance.doc_id, "prompt": instance.prompt, "reference": instance.reference, "scores": {}}
            for key in mine[0].filtered_resps:
                values = self.task.process_results(instance.doc, [r.filtered_resps[key] for r in mine])
                sample.setdefault("output", [r.filtered_resps[key] for r in mine])
                for metric, value in values.items():
                    name = metric if key == "none" else f"{metric},{key}"
                    per_metric.setdefault(name, []).append(value)
                    sample["scores"][name] = value if isinstance(value, (int, float)) else None
            samples.append(sample)
        metrics = {}
        for name, items in per_metric.items():
            metric, _, key = name.partition(",")
            aggregate = aggregations[metric]
            metrics[name] = MetricResult(
                name=name,
                score=float(aggregate(items)),
                signature=self._signature(metric, key or "none", aggregate),
                per_sample=[float(v) for v in items] if all(isinstance(v, (int, float)) for v in items) else None,
                ci=_interval(aggregate, items, bootstrap, seed),
                extra={"higher_is_better": self.task.higher_is_better().get(metric), "filter": key or "none"},
            )
        return TaskScore(metrics=metrics, samples=samples)

    def _signature(self, metric: str, key: str, aggregate: Any) -> str:
        version = (self.task.config.metadata or {}).get("version")
        return (
            f"lm-eval:{self.task.config.task}|v:{version}|metric:{metric}|filter:{key}|agg:{getattr(aggregate, '__name__', aggregate)}"
            f"|fewshot:{self.task.config.num_fewshot or 0}|data:{self.source}|lm-eval:{metadata.version('lm-eval')}"
        )


def _to_evalkit(request: Any) -> Request:
    kind, args = request.request_type, request.args
    if kind == "loglikelihood":
        return Loglikelihood(args[0], args[1])
    if kind == "loglikelihood_rolling":
        return RollingLoglikelihood(args[0])
    if kind == "generate_until":
        context, kwargs = args[0], dict(args[1] or {})
        until = kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        return Generate(context, until, int(kwargs.get("max_gen_toks") or _DEFAULT_MAX_GEN_TOKS))
    raise EvalkitError(f"lm-eval request type {kind!r} is not supported by evalkit (loglikelihood, loglikelihood_rolling, generate_until)")


def _to_lm_eval(kind: str, response: Response) -> Any:
    """An evalkit response as lm-eval's LM methods return it."""
    if kind == "loglikelihood":
        return (float(response.logprob), bool(response.is_greedy))
    if kind == "loglikelihood_rolling":
        return float(response.logprob)
    return response.text


def _interval(aggregate: Any, items: list[Any], n_resamples: int, seed: int) -> tuple[float, float] | None:
    """evalkit's percentile bootstrap interval of lm-eval's aggregate; none without resamples or with a single item."""
    if n_resamples <= 0 or len(items) < 2:
        return None
    return bootstrap_aggregate_ci(aggregate, items, n_resamples, seed=seed)
