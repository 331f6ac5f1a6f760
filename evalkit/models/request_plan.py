"""Token-level request plans, exactly as lm-evaluation-harness 0.4.13 makes them.

A loglikelihood score depends on where the context ends and the continuation
begins in token space, and on how an over-long input is cut; these functions
copy ``TemplateLM.loglikelihood`` / ``_encode_pair``, ``HFLM.tok_encode``, the
left truncation in ``HFLM._loglikelihood_tokens`` and the rolling windows of
``HFLM.loglikelihood_rolling`` so native scores equal the reference's.
"""

from __future__ import annotations

from typing import Any

from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evalkit.errors import EvalkitError


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context (and the first rolling window) conditions on: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    """``HFLM.tok_encode`` with default flags: the tokenizer's own special tokens, unless the text starts with BOS."""
    prefix = tokenizer.decode(prefix_token_id(tokenizer))
    if prefix and text.startswith(prefix):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids): whitespace moves to the continuation; the split is taken from the whole."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    # A context of blanks only: lm-eval would assert; condition on the prefix token (as the HF adapter does).
    return ctx or [prefix_token_id(tokenizer)], whole[len(ctx):]


def truncate_pair(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """lm-eval's left truncation: the model sees ``(context + continuation)[-(max_length + 1):][:-1]``."""
    if not continuation:
        raise EvalkitError("a loglikelihood continuation encodes to zero tokens; give it some text")
    if len(continuation) > max_length:
        raise EvalkitError(
            f"a continuation of {len(continuation)} tokens exceeds the model's maximum length {max_length}; shorten it"
        )
    whole = (context + continuation)[-(max_length + 1):]
    return whole[: len(whole) - len(continuation)], continuation


def rolling_windows(
    tokens: list[int], prefix: int, max_length: int, stride: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows; with ``stride`` each window scores ``stride`` new tokens
    conditioned on up to ``max_length - stride`` earlier ones (the strided perplexity of the HF docs)."""
    if stride is not None and not 1 <= stride <= max_length:
        raise EvalkitError(f"rolling stride {stride} must be between 1 and the maximum length {max_length}")
    context_len = 1 if stride is None else max_length - stride + 1
    return [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix, max_length, context_len)]
