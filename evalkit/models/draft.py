"""The draft model of speculative decoding (the ``draftK`` strategies): loaded, checked and attached to its target.

The contract with the generation engines is one attribute: ``target.draft`` is
the draft's adapter (a white-box :class:`~evalkit.models.base.Backend` with the
same tokenizer as the target), set by :func:`load_draft`.
"""

from __future__ import annotations

from typing import Any

from evalkit.errors import EvalkitError
from evalkit.models.base import LanguageModel

# A text whose encodings are compared when a tokenizer cannot list its vocabulary.
_PROBE = "Speculative decoding: 1234 + 5678 = 6912, naïve café — déjà vu?\n\tdef f(x): return x ** 2"


def is_white_box(model: Any) -> bool:
    """Whether the adapter exposes step-level logits (``new_cache`` and ``forward``): HF and native do, HTTP does not."""
    return callable(getattr(model, "new_cache", None)) and callable(getattr(model, "forward", None))


def load_draft(
    target: LanguageModel, name: str, *, device: str = "cpu", dtype: str | None = None, batch_size: int = 8
) -> LanguageModel:
    """Load the draft model ``name`` (backend auto), check it fits ``target``, set ``target.draft`` and return it.

    The draft loads on the target's device (``device`` when the target does not
    say) with ``dtype``. One-line errors: a target without logits (an HTTP
    server), a draft that is not white-box, and a draft whose tokenizer differs
    from the target's (the drafted token ids would mean other tokens).
    """
    from evalkit.models.registry import load_model, resolve_backend
    from evalkit.progress import current

    target_name = getattr(target, "name", type(target).__name__)
    if not is_white_box(target):
        raise no_logits_error(target_name)
    device = str(getattr(target, "device", None) or device)
    backend, reason = resolve_backend(name, "auto", dtype, announce=False)
    current().note(f"draft model: {name} on {backend} ({reason})")
    draft = load_model(name, backend=backend, device=device, dtype=dtype, batch_size=batch_size)
    if not is_white_box(draft):  # both registry backends are; a guard for the contract
        raise EvalkitError(f"draft model {name!r} gives no logits: pass a model folder, hub id or .gguf file as draft_model=")
    differ, total = tokenizer_difference(target.tokenizer, draft.tokenizer)
    if differ:
        raise EvalkitError(
            f"draft model {name!r} does not share the tokenizer of {target_name!r}: {differ} of {total} tokens differ; "
            f"pass as draft_model= a smaller model of the same family (same tokenizer) as {target_name}"
        )
    target.draft = draft
    return draft


def no_logits_error(target_name: str) -> EvalkitError:
    """The error for a draft model given to a model without logits (``backend='openai'``); raised before it loads."""
    return EvalkitError(
        f"speculative decoding with a draft model needs the logits of {target_name}, which an HTTP server does not "
        "return: use backend='hf' or backend='native'"
    )


def tokenizer_difference(a: Any, b: Any) -> tuple[int, int]:
    """(tokens whose id differs or that only one tokenizer has, tokens in either): (0, n) when they agree.

    Compares ``get_vocab()``; a tokenizer without it is compared by the ids it
    gives a probe text (then the counts are of the probe's tokens).
    """
    if a is b:
        return 0, 0
    vocab_a, vocab_b = _vocab(a), _vocab(b)
    if vocab_a is not None and vocab_b is not None:
        tokens = vocab_a.keys() | vocab_b.keys()
        return sum(vocab_a.get(t) != vocab_b.get(t) for t in tokens), len(tokens)
    ids_a, ids_b = a.encode(_PROBE), b.encode(_PROBE)
    total = max(len(ids_a), len(ids_b))
    same = sum(x == y for x, y in zip(ids_a, ids_b))
    return total - same, total


def _vocab(tokenizer: Any) -> dict[str, int] | None:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    return dict(get_vocab()) if callable(get_vocab) else None
