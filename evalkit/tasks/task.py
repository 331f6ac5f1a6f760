"""A task turns documents into scored instances: prompts and requests out, metrics back in.

The Task is tokenizer-free: it builds text, requests and references, and turns
responses into predictions. Models own tokens; metrics own arithmetic. The
per-type prediction rules follow lm-evaluation-harness 0.4.13's
``ConfigurableTask.process_results`` so numbers are comparable with its.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.base import MetricResult
from evalkit.requests import Generate, Loglikelihood, Request, Response, RollingLoglikelihood
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
    and byte counts come from it).
    """

    doc_id: int
    doc: dict
    prompt: str
    reference: Any
    requests: list[Request]


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
        self._filter = spec.output_filter()

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
        """The item's few-shot examples: seeded per item, so a document's prompt does not depend on
        ``limit`` or on which other documents are evaluated; the item itself is never its own example."""
        fs = self.spec.fewshot
        if fs.num == 0:
            return []
        docs = self.docs  # loaded first: whether they came from the hub decides the pool
        if self._fewshot_pool is None:
            self._fewshot_pool = self.source.fewshot_documents() or []
        own_pool = not self._fewshot_pool
        pool = docs if own_pool else self._fewshot_pool
        rng = random.Random(f"{fs.seed}/{doc_id}")
        picked = rng.sample(range(len(pool)), min(fs.num + 1, len(pool)))
        picked = [i for i in picked if not (own_pool and i == doc_id)][: fs.num]
        return [(i, pool[i]) for i in picked]

    def context(self, doc: dict, doc_id: int) -> str:
        """Few-shot examples (text + target delimiter + target), then this item's text, as lm-eval joins them."""
        spec = self.spec
        shots = [
            self._text(ex, i) + spec.target_delimiter + self._target(ex, i) for i, ex in self._fewshot(doc_id)
        ]
        prefix = spec.fewshot.delimiter.join(shots) + spec.fewshot.delimiter if shots else ""
        return prefix + self._text(doc, doc_id)

    def reference(self, doc: dict, doc_id: int) -> Any:
        if self.spec.reference is not None:
            return evaluate(self.spec.reference, doc, self._where(doc_id, "reference"))
        if self.output_type == "generate_until":
            return self._target(doc, doc_id)
        return self._text(doc, doc_id)

    def instance(self, doc_id: int) -> Instance:
        doc = self.docs[doc_id]
        spec = self.spec
        if self.output_type == "multiple_choice":
            prompt = self.context(doc, doc_id)
            requests: list[Request] = [
                Loglikelihood(prompt, spec.target_delimiter + choice) for choice in self.choices(doc, doc_id)
            ]
            return Instance(doc_id, doc, prompt, self.gold(doc, doc_id), requests)
        if self.output_type == "loglikelihood_rolling":
            text = self._text(doc, doc_id)
            return Instance(doc_id, doc, text, self.reference(doc, doc_id), [RollingLoglikelihood(text)])
        prompt = self.context(doc, doc_id)
        gen = spec.generation
        request = Generate(prompt, tuple(gen.stop), gen.max_new_tokens)
        return Instance(doc_id, doc, prompt, self.reference(doc, doc_id), [request])

    def instances(self, limit: int | None = None) -> list[Instance]:
        """The first ``limit`` documents (all when None) as instances; deterministic."""
        if limit is not None and limit < 1:
            raise EvalkitError(f"--limit must be a positive number of items, got {limit}")
        count = len(self.docs) if limit is None else min(limit, len(self.docs))
        return [self.instance(i) for i in range(count)]

    # ------------------------------------------------------------ scoring

    def predictions(
        self, instances: list[Instance], responses: list[list[Response]]
    ) -> tuple[dict[str, list[Any]], list[Any], list[dict]]:
        """Per-metric predictions, the references, and the per-sample records (without scores yet)."""
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
            return {n: pairs for n in names}, references, samples
        outputs = []
        for inst, (resp,) in zip(instances, responses):
            filtered = self._filter(resp.text)
            outputs.append(filtered)
            samples.append(self._sample(inst, resp.text, filtered=filtered, finish_reason=resp.finish_reason))
        return {n: outputs for n in names}, references, samples

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
        for names in groups.values():
            results.update(
                compute_metrics(
                    names, predictions[names[0]], references, sources=None,
                    options={n: options[n] for n in names}, n_resamples=bootstrap, seed=seed,
                )
            )
        for name, result in results.items():
            for sample, value in zip(samples, result.per_sample or []):
                sample["scores"][name] = value
        return TaskScore(metrics=results, samples=samples)
