"""Chat prompts: the turns of an item, and the chat template that renders them to text.

Instruction-tuned models are evaluated the way they are used: the prompt is a
conversation (an optional system instruction, the few-shot examples, the
item's question, optionally the start of the answer) rendered by the model's
own chat template. Everything here follows lm-evaluation-harness 0.4.13
(``ConfigurableTask.fewshot_context``, ``build_qa_turn``,
``multiturn_to_singleturn`` and ``HFLM.apply_chat_template``) so a templated
evalkit run sends the model the very string lm-eval sends it; rendering itself
is transformers' own ``render_jinja_template``, the function behind
``tokenizer.apply_chat_template``.

The module is tokenizer-free: a :class:`ChatTemplate` holds the template text
and the special-token strings the template may use, so the same template
renders identically for the transformers adapter, the native engine and the
HTTP adapter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError, not_utf8

# ----------------------------------------------------------------- turns (lm-eval's Message)


@dataclass
class Turn:
    """One message; ``delimiter`` is what follows it when the turns are joined as plain text."""

    role: str
    content: str
    delimiter: str = ""

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    def as_text(self) -> str:
        return self.content + self.delimiter


def maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str = " ") -> str:
    """Join two texts, with ``delimiter`` only when neither has whitespace at the seam (lm-eval's rule)."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def needs_delimiter(prefix: str, suffix: str) -> bool:
    return bool(prefix) and not (prefix[-1].isspace() or suffix[0].isspace())


def qa_turns(
    question: str, answer: str | None, *, gen_prefix: str | None, target_delimiter: str, fewshot_delimiter: str
) -> list[Turn]:
    """A question and (for a few-shot example) its answer, or the answer's prefix (lm-eval's ``build_qa_turn``)."""
    if answer is not None and answer != "":
        after = target_delimiter if not gen_prefix else (target_delimiter if needs_delimiter(question, gen_prefix) else "")
        return [Turn("user", question, after), Turn("assistant", maybe_delimit(gen_prefix, answer), fewshot_delimiter)]
    if gen_prefix:
        after = target_delimiter if needs_delimiter(question, gen_prefix) else ""
        return [Turn("user", question, after), Turn("assistant", gen_prefix)]
    return [Turn("user", question)]


def as_plain_text(turns: list[Turn]) -> str:
    return "".join(t.as_text() for t in turns)


def as_single_turn(turns: list[Turn]) -> list[dict[str, str]]:
    """Few-shot examples and the question folded into one user message (lm-eval's ``multiturn_to_singleturn``).

    A leading system turn stays a system message; a trailing assistant turn
    (the answer prefix) stays an assistant message for the template to continue.
    """
    system = turns[0] if turns[0].role == "system" else None
    rest = turns[1:] if system else list(turns)
    tail = [rest[-1].as_message()] if rest[-1].role == "assistant" else []
    body = rest[:-1] if tail else rest
    text = "".join(t.as_text() for t in body[:-1]) + body[-1].content  # the last joined turn loses its delimiter
    return ([system.as_message()] if system else []) + [{"role": "user", "content": text}] + tail


# ----------------------------------------------------------------- templates


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from.

    ``special_tokens`` are the tokenizer's special-token strings (``bos_token``,
    ``eos_token``, ...), which transformers passes to every template.
    """

    text: str
    source: str
    special_tokens: tuple[tuple[str, Any], ...] = ()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """The conversation as the model sees it.

        Without a generation prompt the last (assistant) message is left open
        for the model to continue, as lm-eval does for ``gen_prefix``. A template
        that raises on the messages (typically: no system role) is retried
        without the system message, as lm-eval retries.
        """
        import jinja2

        continue_last = not add_generation_prompt
        try:
            return self._render(messages, add_generation_prompt, continue_last)
        except jinja2.TemplateError:
            without_system = [m for m in messages if m["role"] != "system"]
            try:
                return self._render(without_system, add_generation_prompt, continue_last)
            except jinja2.TemplateError as err:
                raise EvalkitError(
                    f"chat template ({self.source}) cannot render this prompt ({err}); fix the template or pass another"
                ) from None

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool, continue_last: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.text,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_last,
            **dict(self.special_tokens),
        )
        return rendered[0]

    @cache  # noqa: B019 - templates are few, frozen and live for the run
    def end_of_turn(self) -> str | None:
        """The marker that closes an assistant turn (``<|im_end|>`` in ChatML), read off the template itself.

        Rendered after a known reply, the text that follows the reply up to the
        next line is the end-of-turn marker; generation stops there, as a model
        trained on the template ends its answer with it.
        """
        reply = "EVALKIT-REPLY"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}], False, False)
        except Exception:
            return None
        return text.partition(reply)[2].split("\n", 1)[0].strip() or None


def compile_template(text: str, where: str) -> None:
    """Fail now, naming the file and line, on a template that is not valid Jinja."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as err:
        raise EvalkitError(f"chat template {where}, line {err.lineno}: {err.message}; fix the Jinja syntax") from None


def template_file(choice: bool | str | None) -> Path | None:
    """The Jinja file that ``--apply-chat-template`` names, or None when it names the model's own template."""
    if not isinstance(choice, str):
        return None
    path = Path(choice).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".jinja", ".j2", ".jinja2", ".tmpl") or "/" in choice:
        raise EvalkitError(f"chat template file {choice} not found; check the path")
    return None


def read_template_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    compile_template(text, str(path))
    return text


def _resolve_template(choice: bool | str, tokenizer: Any, model_name: str) -> ChatTemplate:
    special = _special_tokens(tokenizer)
    path = template_file(choice)
    if path is not None:
        return ChatTemplate(read_template_file(path), f"file:{path}", special)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(choice, str):
        if isinstance(own, dict) and choice in own:
            compile_template(own[choice], f"{choice!r} of model {model_name}")
            return ChatTemplate(own[choice], f"tokenizer:{choice}", special)
        names = sorted(own) if isinstance(own, dict) else []
        raise EvalkitError(
            f"apply_chat_template={choice!r}: no such file, and model {model_name} has no template of that name"
            + (f" (its templates: {', '.join(names)})" if names else "")
            + "; pass a Jinja file's path, or the option alone for the model's own template"
        )
    if isinstance(own, dict):
        if "default" not in own:
            raise EvalkitError(
                f"model {model_name} has several chat templates ({', '.join(sorted(own))}) and no default; "
                "name one: apply_chat_template=NAME"
            )
        own = own["default"]
    if not own:
        raise EvalkitError(
            f"model {model_name} has no chat template; pass apply_chat_template=PATH to a Jinja file, "
            "or leave the option off for a base model"
        )
    compile_template(own, f"of model {model_name}")
    return ChatTemplate(own, "tokenizer", special)


def resolve_template(choice: bool | str, tokenizer: Any, model_name: str) -> ChatTemplate:
    """The template ``apply_chat_template`` asks for, checked on a probe conversation.

    ``True`` is the model's own template (the tokenizer's, which for a GGUF
    model is the one in the file's header); a path is a Jinja file; any other
    string names one of the tokenizer's templates (models that ship several).
    A template that drops the user's words (an empty file, a typo in a
    variable name) would score every item on an empty prompt: it fails here.
    """
    template = _resolve_template(choice, tokenizer, model_name)
    probe = "EVALKIT-PROBE-QUESTION"
    if probe not in template.render([{"role": "user", "content": probe}], add_generation_prompt=True):
        raise EvalkitError(
            f"chat template ({template.source}) does not render the messages' content; "
            "it must output each message's content (e.g. {{ message['content'] }})"
        )
    return template


def _special_tokens(tokenizer: Any) -> tuple[tuple[str, Any], ...]:
    tokens = getattr(tokenizer, "special_tokens_map", None) or {}
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in tokens.items()))


# ----------------------------------------------------------------- the run's prompt settings


@dataclass(frozen=True)
class PromptFormat:
    """How every prompt of a run is built: plain text (the default) or a chat conversation.

    ``chat_template`` None with ``chat`` true means the server renders the
    messages (an OpenAI-compatible chat endpoint): evalkit then records the
    messages themselves as the prompt.
    """

    chat: bool = False
    chat_template: ChatTemplate | None = None
    system_instruction: str | None = None
    fewshot_as_multiturn: bool = False

    @property
    def end_of_turn(self) -> str | None:
        """A stop string for generation: the template's end-of-turn marker."""
        return self.chat_template.end_of_turn() if self.chat_template else None

    def meta(self) -> dict[str, Any]:
        """What results.json records, so a run says exactly how its prompts were made."""
        template = self.chat_template
        return {
            "chat_template": self.chat,
            "chat_template_source": (template.source if template else "server") if self.chat else None,
            "chat_template_sha256": template.sha256 if template else None,
            "system_instruction": self.system_instruction,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
        }

    def cache_tag(self) -> str:
        """Part of the response cache key: a templated and a plain run never share answers."""
        if not self.chat and self.system_instruction is None:
            return ""
        template = self.chat_template.sha256[:16] if self.chat_template else ("server" if self.chat else "none")
        system = hashlib.sha256((self.system_instruction or "").encode()).hexdigest()[:12]
        return f"|chat={template}|system={system if self.system_instruction is not None else '-'}|multiturn={int(self.fewshot_as_multiturn)}"


PLAIN = PromptFormat()
