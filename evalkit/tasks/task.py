"""A task turns documents into scored instances: prompts and requests out, metrics back in.

The Task is tokenizer-free: it builds text, requests and references, and turns
responses into predictions. Models own tokens; metrics own arithmetic. The
per-type prediction rules follow lm-evaluation-harness 0.4.13's
``ConfigurableTask.process_results`` so numbers are comparable with its.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.requests import Generate, Loglikelihood, Request, Response, RollingLoglikelihood
from evalkit.tasks.chat import PLAIN, PromptFormat, Turn, as_plain_text, as_single_turn, qa_turns
from evalkit.tasks.loaders import DataSource
from evalkit.tasks.spec import TaskSpec
from evalkit.tasks.templates import evaluate, render


def choice_predictions(loglikelihoods: list[float], choices: list[str]) -> tuple[int, int]:
    """The index of the most likely choice (``acc``) and of the most likely per character (``acc_norm``).

    As lm-eval: the character count is the choice's own, without the delimiter before it.
    """
    lls = np.array(loglikelihoods, dtype=np.float64)
    return int(np.argmax(lls)), int(np.argmax(lls / np.array([float(len(c)) for c in choices])))


@dataclass
class Instance:
    """One scored item.

    ``prompt`` is the exact text the model receives (few-shot included; for
    multiple choice, the shared context of every choice). ``reference`` is the
    gold index (multiple choice), the reference text or list of texts
    (generation), or the original document (rolling loglikelihood, whose word
    and byte counts come from it). ``messages`` are the chat messages the
    prompt was rendered from, when a chat template is applied.
    """

    doc_id: int
    doc: dict
    prompt: str
    reference: Any
    requests: list[Request]
    messages: list[dict[str, str]] | None = None


@dataclass
class TaskScore:
    metrics: dict[str, MetricResult]
    samples: list[dict]


class Task:
    """A validated spec bound to its data."""

    def __init__(self, spec: TaskSpec, data_dir: str | None = None):
        self.spec = spec
        self.name = spec.name
        self.output_type = spec.output_type
        self.source = DataSource(spec, data_dir)
        self.source.check()
        self._docs: list[dict] | None = None
        self._fewshot_pool: list[dict] | None = None
        self._filters = spec.output_filters()  # None -> the single unnamed filter; else lm-eval's named pipelines

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.output_type})"

    @property
    def docs(self) -> list[dict]:
        if self._docs is None:
            self._docs = self.source.documents()
            if not self._docs:
                raise EvalkitError(f"task {self.name!r}: the dataset has no documents; check dataset.path")
        return self._docs

    # ------------------------------------------------------------ building

    def _where(self, doc_id: int, field: str) -> str:
        return f"task {self.name!r}, document {doc_id}, field {field!r}"

    def choices(self, doc: dict, doc_id: int = -1) -> list[str]:
        choices = evaluate(self.spec.doc_to_choice, doc, self._where(doc_id, "doc_to_choice"))
        if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) for c in choices):
            raise EvalkitError(f"{self._where(doc_id, 'doc_to_choice')}: must give a non-empty list of strings, got {choices!r:.80}")
        return list(choices)

    def gold(self, doc: dict, doc_id: int = -1) -> int:
        """The index of the correct choice (an int, or the text of the correct choice)."""
        gold = evaluate(self.spec.gold, doc, self._where(doc_id, "gold"))
        choices = self.choices(doc, doc_id)
        if isinstance(gold, str) and not gold.lstrip("-").isdigit():
            if gold not in choices:
                raise EvalkitError(f"{self._where(doc_id, 'gold')}: {gold!r} is not one of the choices")
            return choices.index(gold)
        index = int(gold)
        if not 0 <= index < len(choices):
            raise EvalkitError(f"{self._where(doc_id, 'gold')}: index {index} is outside the {len(choices)} choices")
        return index

    def _text(self, doc: dict, doc_id: int) -> str:
        return render(self.spec.doc_to_text, doc, self._where(doc_id, "doc_to_text"))

    def _target(self, doc: dict, doc_id: int) -> str:
        if self.spec.doc_to_target is not None:
            return render(self.spec.doc_to_target, doc, self._where(doc_id, "doc_to_target"))
        return self.choices(doc, doc_id)[self.gold(doc, doc_id)]

    def _fewshot(self, doc_id: int) -> list[tuple[int, dict]]:
        """The item's few-shot examples; the item itself is never its own example.

        ``sampler: random`` (the default) draws them seeded per item, so a
        document's prompt does not depend on ``limit`` or on which other
        documents are evaluated; ``sampler: first_n`` takes the pool's first
        ones in order (lm-eval's ``first_n``, for tasks with canonical examples).
        """
        fs = self.spec.fewshot
        if fs.num == 0:
            return []
        docs = self.docs  # loaded first: whether they came from the hub decides the pool
        if self._fewshot_pool is None:
            self._fewshot_pool = self.source.fewshot_documents() or []
        own_pool = not self._fewshot_pool
        pool = docs if own_pool else self._fewshot_pool
        if fs.sampler == "first_n":
            picked = list(range(min(fs.num + 1, len(pool))))
        else:
            picked = random.Random(f"{fs.seed}/{doc_id}").sample(range(len(pool)), min(fs.num + 1, len(pool)))
        picked = [i for i in picked if not (own_pool and i == doc_id)][: fs.num]
        return [(i, pool[i]) for i in picked]

    def _gen_prefix(self, doc: dict, doc_id: int) -> str | None:
        if self.spec.gen_prefix is None:
            return None
        return render(self.spec.gen_prefix, doc, self._where(doc_id, "gen_prefix"))

    def turns(self, doc: dict, doc_id: int, system_instruction: str | None = None) -> list[Turn]:
        """The item as a conversation: system instruction, few-shot question/answer pairs, the question,
        and the answer's start (``gen_prefix``), each with the delimiter that follows it as plain text."""
        spec = self.spec
        turns = [Turn("system", system_instruction)] if system_instruction else []
        for i, example in self._fewshot(doc_id):
            turns += qa_turns(
                self._text(example, i), self._target(example, i), gen_prefix=self._gen_prefix(example, i),
                target_delimiter=spec.target_delimiter, fewshot_delimiter=spec.fewshot.delimiter,
            )
        return turns + qa_turns(
            self._text(doc, doc_id), None, gen_prefix=self._gen_prefix(doc, doc_id),
            target_delimiter=spec.target_delimiter, fewshot_delimiter="",
        )

    def prompt(self, doc: dict, doc_id: int, fmt: PromptFormat = PLAIN) -> tuple[str, list[dict[str, str]] | None]:
        """The exact text the model receives, and the chat messages behind it (None for plain prompts).

        Plain: few-shot examples (text + target delimiter + target), then this
        item's text, as lm-eval joins them. Chat: the same turns as messages
        (one user message, or one turn per example with ``fewshot_as_multiturn``)
        rendered by the chat template; a server that renders its own template
        gets the messages, and the prompt records them as JSON.
        """
        turns = self.turns(doc, doc_id, fmt.system_instruction)
        if not fmt.chat:
            return as_plain_text(turns), None
        messages = [t.as_message() for t in turns] if fmt.fewshot_as_multiturn else as_single_turn(turns)
        if fmt.chat_template is None:
            return json.dumps(messages, ensure_ascii=False), messages
        return fmt.chat_template.render(messages, add_generation_prompt=turns[-1].role != "assistant"), messages

    def reference(self, doc: dict, doc_id: int) -> Any:
        if self.spec.reference is not None:
            return evaluate(self.spec.reference, doc, self._where(doc_id, "reference"))
        if self.output_type == "generate_until":
            return self._target(doc, doc_id)
        return self._text(doc, doc_id)

    def _choice_delimiter(self, fmt: PromptFormat) -> str:
        """What goes between a context and each choice: a chat prompt ends with the assistant header, so
        lm-eval drops the delimiter there, unless a ``gen_prefix`` without trailing space precedes the choice."""
        spec = self.spec
        if fmt.chat and not (spec.gen_prefix and not spec.gen_prefix[-1].isspace()):
            return ""
        return spec.target_delimiter

    def instance(self, doc_id: int, fmt: PromptFormat = PLAIN) -> Instance:
        doc = self.docs[doc_id]
        spec = self.spec
        if self.output_type == "loglikelihood_rolling":  # a document's own likelihood: never a conversation
            text = self._text(doc, doc_id)
            return Instance(doc_id, doc, text, self.reference(doc, doc_id), [RollingLoglikelihood(text)])
        prompt, messages = self.prompt(doc, doc_id, fmt)
        if self.output_type == "multiple_choice":
            delimiter = self._choice_delimiter(fmt)
            requests: list[Request] = [Loglikelihood(prompt, delimiter + choice) for choice in self.choices(doc, doc_id)]
            return Instance(doc_id, doc, prompt, self.gold(doc, doc_id), requests, messages)
        gen = spec.generation
        stop = tuple(gen.stop) + ((fmt.end_of_turn,) if fmt.end_of_turn and fmt.end_of_turn not in gen.stop else ())
        request = Generate(prompt, stop, gen.max_new_tokens, tuple((m["role"], m["content"]) for m in messages) if messages else None)
        return Instance(doc_id, doc, prompt, self.reference(doc, doc_id), [request], messages)

    def instances(self, limit: int | None = None, fmt: PromptFormat = PLAIN) -> list[Instance]:
        """The first ``limit`` documents (all when None) as instances, prompts built as ``fmt`` says; deterministic."""
        if limit is not None and limit < 1:
            raise EvalkitError(f"limit={limit}: must be a positive number of items")
        count = len(self.docs) if limit is None else min(limit, len(self.docs))
        return [self.instance(i, fmt) for i in range(count)]

    # ------------------------------------------------------------ scoring

    def predictions(
        self, instances: list[Instance], responses: list[list[Response]]
    ) -> tuple[dict[str, list[Any]], list[Any], list[dict]]:
        """Per-metric predictions (by row name: ``metric``, or ``metric,pipeline`` with ``filter_list``),
        the references, and the per-sample records (without scores yet)."""
        if len(instances) != len(responses):
            raise EvalkitError(f"task {self.name!r}: {len(instances)} instances but {len(responses)} response lists")
        names = [m.name for m in self.spec.metrics]
        references = [inst.reference for inst in instances]
        samples: list[dict] = []
        if self.output_type == "multiple_choice":
            preds: dict[str, list[Any]] = {"acc": [], "acc_norm": []}
            for inst, resp in zip(instances, responses):
                choices = self.choices(inst.doc, inst.doc_id)
                lls = [r.logprob for r in resp]
                pred, pred_norm = choice_predictions(lls, choices)
                preds["acc"].append(pred)
                preds["acc_norm"].append(pred_norm)
                samples.append(self._sample(inst, choices[pred], loglikelihoods=[float(x) for x in lls], pred=pred, pred_norm=pred_norm))
            return {n: preds[n] for n in names}, references, samples
        if self.output_type == "loglikelihood_rolling":
            pairs = []
            for inst, (resp,) in zip(instances, responses):
                pairs.append((float(resp.logprob), len(resp.token_logprobs)))
                samples.append(self._sample(inst, resp.logprob, n_tokens=len(resp.token_logprobs)))
            return dict.fromkeys(names, pairs), references, samples
        outputs: dict[str | None, list[str]] = {pipeline: [] for pipeline in self._filters}
        for inst, (resp,) in zip(instances, responses):
            filtered = {pipeline: apply(resp.text) for pipeline, apply in self._filters.items()}
            for pipeline, text in filtered.items():
                outputs[pipeline].append(text)
            shown = filtered.get(None, filtered)  # a plain filter keeps its one string
            samples.append(self._sample(inst, resp.text, filtered=shown, finish_reason=resp.finish_reason))
        # one list per pipeline, shared by its metrics, so score() still scores them in one call
        return {self._row(n, pipeline): outputs[pipeline] for pipeline in outputs for n in names}, references, samples

    @staticmethod
    def _row(metric: str, pipeline: str | None) -> str:
        """A metric's row name: plain for the unnamed filter, ``metric,pipeline`` for a named one (lm-eval's naming).

        Metric names never hold a comma, so the first comma splits a row back into both.
        """
        return metric if pipeline is None else f"{metric},{pipeline}"

    @staticmethod
    def _sample(inst: Instance, output: Any, **extra: Any) -> dict:
        return {"doc_id": inst.doc_id, "prompt": inst.prompt, "output": output, "reference": inst.reference, **extra, "scores": {}}

    def score(
        self, instances: list[Instance], responses: list[list[Response]], *, bootstrap: int = 1000, seed: int = 0
    ) -> TaskScore:
        """Metrics over the instances (with bootstrap intervals) and per-sample records with their scores."""
        from evalkit.metrics import compute_metrics

        predictions, references, samples = self.predictions(instances, responses)
        options = {m.name: dict(m.options) for m in self.spec.metrics}
        groups: dict[int, list[str]] = {}  # metrics that score the same predictions share one call (ROUGE shares a pass)
        for name in predictions:
            groups.setdefault(id(predictions[name]), []).append(name)
        results: dict[str, MetricResult] = {}
        for rows in groups.values():
            pipeline = rows[0].partition(",")[2] or None  # one list per pipeline: every row of a group shares it
            names = [row.partition(",")[0] for row in rows]
            computed = compute_metrics(
                names, predictions[rows[0]], references, sources=None,
                options={n: options[n] for n in names}, n_resamples=bootstrap, seed=seed,
            )
            results.update(self._for_pipeline(name, result, pipeline) for name, result in computed.items())
        for name, result in results.items():
            for sample, value in zip(samples, result.per_sample or []):
                sample["scores"][name] = value
        return TaskScore(metrics=results, samples=samples)

    @classmethod
    def _for_pipeline(cls, name: str, result: MetricResult, pipeline: str | None) -> tuple[str, MetricResult]:
        """A metric's row and result; a named pipeline's result carries the row name and the pipeline
        (in its signature too, so runs are only compared pipeline by pipeline)."""
        if pipeline is None:
            return name, result
        row = cls._row(name, pipeline)
        result.name = row
        result.signature = f"{result.signature}|filter:{pipeline}"
        result.extra["filter"] = pipeline
        return row, result
