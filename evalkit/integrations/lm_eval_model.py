"""evalkit's adapters as an lm-evaluation-harness model type: ``--model evalkit``.

    python -m evalkit.integrations.lm_eval_model --model evalkit \\
        --model_args model=smollm2-135m,backend=native --tasks hellaswag --limit 200

lm-eval 0.4.13 only knows the models listed in ``lm_eval.models.MODEL_MAPPING``
and reads no plugin entry point, so a bare ``lm_eval`` command cannot see
evalkit's. Importing this module registers the type (lm-eval's registry, under
"evalkit"); running it as above is lm-eval's own command line with the type
registered, taking every lm-eval argument. From Python::

    import lm_eval, evalkit.integrations.lm_eval_model
    lm_eval.simple_evaluate(model="evalkit", model_args="model=smollm2-135m,backend=hf", tasks=["hellaswag"])

``--model_args``: ``model`` (alias, hub id, folder or .gguf file), ``backend``
(hf or native), ``dtype``, plus lm-eval's ``--device`` and ``--batch_size``
(an integer; "auto" means evalkit's default of 8). An already-built evalkit
adapter can be wrapped directly: ``EvalkitLM(adapter)``.

Generation honours each request's ``until`` and ``max_gen_toks``; ``do_sample``,
``temperature``, ``top_p`` and ``top_k`` become an evalkit DecodingConfig
(greedy when not sampling), run by evalkit's shared decoding loop.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from lm_eval.api.model import LM

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.base import LanguageModel
from evalkit.requests import Generate, Loglikelihood, RollingLoglikelihood
from evalkit.tasks.chat import ChatTemplate, resolve_template

MODEL_TYPE = "evalkit"
_DEFAULT_BATCH_SIZE = 8
_DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default


class EvalkitLM(LM):
    """An lm-eval ``LM`` that answers through an evalkit adapter (HF or the native engine)."""

    def __init__(
        self,
        model: str | LanguageModel = "smollm2-135m",
        backend: str = "hf",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            from evalkit.devices import default_device
            from evalkit.models.registry import load_model

            if device is None or (device.startswith("cuda") and default_device() == "cpu"):
                if device is not None:  # lm-eval's CLI asks for cuda by default; its hf backend falls back the same way
                    logging.getLogger(__name__).warning("device %r is not available here; using cpu", device)
                device = default_device()
            self.adapter = load_model(model, backend=backend, device=device, dtype=dtype, batch_size=_batch_size(batch_size), **kwargs)
        elif isinstance(model, LanguageModel):
            self.adapter = model
        else:
            raise EvalkitError(f"EvalkitLM takes a model name or an evalkit adapter, got {type(model).__name__}")
        self._templates: dict[bool | str, ChatTemplate] = {}
        self._chosen: bool | str = True

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.adapter.tokenizer, "name_or_path", self.adapter.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template lm-eval records for ``--apply_chat_template`` (True, or a template name or Jinja file)."""
        if chat_template is False or chat_template is None:
            return None
        self._chosen = chat_template  # lm-eval asks for the template once, then renders with it
        return self._template(chat_template).text

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Rendered as evalkit renders its own chat prompts (an open last turn, the system-role retry)."""
        return self._template(self._chosen).render(chat_history, add_generation_prompt=add_generation_prompt)

    def _template(self, choice: bool | str) -> ChatTemplate:
        if choice not in self._templates:
            self._templates[choice] = resolve_template(choice, self.adapter.tokenizer, self.adapter.name)
        return self._templates[choice]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        answers = self.adapter.loglikelihood([Loglikelihood(*r.args) for r in requests])
        return [(float(a.logprob), bool(a.is_greedy)) for a in answers]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        answers = self.adapter.loglikelihood_rolling([RollingLoglikelihood(r.args[0]) for r in requests])
        return [float(a.logprob) for a in answers]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their generation settings, each group run under one DecodingConfig, answers in order."""
        groups: dict[DecodingConfig, list[tuple[int, Generate]]] = {}
        for i, request in enumerate(requests):
            context, kwargs = request.args[0], dict(request.args[1] or {})
            until = kwargs.pop("until", None) or ()
            until = (until,) if isinstance(until, str) else tuple(until)
            max_gen_toks = int(kwargs.pop("max_gen_toks", None) or _DEFAULT_MAX_GEN_TOKS)
            groups.setdefault(decoding_from_gen_kwargs(kwargs), []).append((i, Generate(context, until, max_gen_toks)))
        texts: list[str] = [""] * len(requests)
        for decoding, items in groups.items():
            for (i, _), answer in zip(items, self.adapter.generate([g for _, g in items], decoding)):
                texts[i] = answer.text
        return texts


def decoding_from_gen_kwargs(kwargs: dict[str, Any]) -> DecodingConfig:
    """lm-eval's ``generation_kwargs`` (minus until / max_gen_toks) as an evalkit DecodingConfig."""
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if not kwargs.get("do_sample", False) or temperature == 0.0:
        return DecodingConfig(name="greedy")
    top_k = kwargs.get("top_k")
    top_p = kwargs.get("top_p")
    return DecodingConfig(
        temperature=temperature,
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p is not None and float(top_p) < 1.0 else None,
        seed=int(kwargs.get("seed", 0) or 0),
    )


def _batch_size(value: int | str | None) -> int:
    """lm-eval passes an int, "auto" or "auto:N"; evalkit sizes batches itself (token budgets) from an int."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return _DEFAULT_BATCH_SIZE
    try:
        return int(value)
    except ValueError:
        raise EvalkitError(f"lm-eval batch_size {value!r}: give an integer or auto") from None


def register() -> None:
    """Make ``--model evalkit`` known to lm-eval; idempotent, done on import.

    lm-eval's built-in models are registered first (lm-eval imports them only
    while its registry is empty), and evalkit's entry is a lazy "module:Class"
    placeholder, so running this file with ``python -m`` (where it is also
    ``__main__``) registers one class, not two.
    """
    import lm_eval.models  # noqa: F401 - registers lm-eval's own models
    from lm_eval.api.registry import model_registry

    if MODEL_TYPE not in model_registry:
        model_registry.register(MODEL_TYPE, target="evalkit.integrations.lm_eval_model:EvalkitLM")


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (``lm_eval ...``) with the evalkit model type registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


register()

if __name__ == "__main__":
    main()
