"""Token-level request plans, exactly as lm-evaluation-harness 0.4.13 makes them: the one copy every adapter uses.

A loglikelihood score depends on where the context ends and the continuation
begins in token space, on the token an empty context conditions on, and on how
an over-long input is cut; a perplexity on how a document is cut into windows.
These functions copy ``HFLM.tok_encode``, ``TemplateLM.loglikelihood`` /
``_encode_pair``, the left truncation in ``HFLM._loglikelihood_tokens`` and the
rolling windows of ``HFLM.loglikelihood_rolling`` (``lm_eval.utils``), so the
transformers adapter and the native engine score what the reference scores,
without importing lm-eval to do it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from evalkit.errors import EvalkitError

TokenPair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context (and the first rolling window) conditions on: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """``HFLM.tok_encode``: the tokenizer's own special-token default, unless the text already starts with BOS.

    As in lm-eval, "starts with BOS" compares the text with the decoded prefix
    token, whatever it decodes to; an explicit ``add_special_tokens`` wins.
    """
    if add_special_tokens is None and text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        add_special_tokens = False
    if add_special_tokens is None:
        return tokenizer.encode(text)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def encode_pair(
    tokenizer: Any, context: str, continuation: str, max_length: int, *, encoder_decoder: bool = False
) -> TokenPair:
    """Context and continuation ids, split exactly as lm-evaluation-harness 0.4.13 splits them.

    Trailing whitespace of the context moves to the continuation (so " word"
    tokenizes as one token, as it would in running text). A causal model
    encodes context + continuation whole and takes the continuation as the
    tokens after the context's own encoding; an encoder-decoder encodes the
    two separately. An empty context is replaced by the prefix token. A
    continuation of no tokens, or of more than ``max_length``, is a one-line error.
    """
    prefix = prefix_token_id(tokenizer)
    if context == "":
        cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
        ctx, cont = (cont[:1], cont[1:]) if cont and cont[0] == prefix else ([prefix], cont)
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if encoder_decoder:
            ctx, cont = tok_encode(tokenizer, context), tok_encode(tokenizer, continuation, add_special_tokens=False)
        else:
            whole, ctx = tok_encode(tokenizer, context + continuation), tok_encode(tokenizer, context)
            cont = whole[len(ctx) :]
        # A context of blanks only: lm-eval would assert; condition on the prefix token instead.
        ctx = ctx or [prefix]
    if not cont:
        raise EvalkitError(
            f"loglikelihood request has an empty continuation (context ends {context[-40:]!r}); "
            "give every choice some text"
        )
    if len(cont) > max_length:
        raise EvalkitError(
            f"loglikelihood continuation of {len(cont)} tokens is longer than the model's "
            f"max_length={max_length}; shorten the continuation or raise max_length"
        )
    return ctx, cont


def truncate_pair(
    context: list[int], continuation: list[int], max_length: int, *, encoder_decoder: bool = False
) -> TokenPair:
    """lm-eval's left truncation of an over-long input; the context loses its oldest tokens.

    A causal model sees ``(context + continuation)[-(max_length + 1):][:-1]``:
    the continuation (at most ``max_length`` tokens, see :func:`encode_pair`)
    is kept whole. An encoder-decoder's encoder sees the last ``max_length``
    context tokens, its decoder the continuation.
    """
    if encoder_decoder:
        return context[-max_length:], continuation
    whole = (context + continuation)[-(max_length + 1) :]
    return whole[: len(whole) - len(continuation)], continuation


def check_stride(stride: int | None, max_length: int) -> None:
    """A rolling stride is a number of new tokens per window: between 1 and ``max_length`` (None: disjoint windows)."""
    if stride is not None and not 1 <= stride <= max_length:
        raise EvalkitError(f"stride must be between 1 and max_length={max_length}, got {stride}")


def rolling_windows(tokens: list[int], prefix: int, max_length: int, stride: int | None = None) -> list[TokenPair]:
    """lm-eval's disjoint rolling windows over a document's tokens, as (context, continuation) pairs.

    Every token is a target exactly once; the first window conditions on
    ``prefix``. With ``stride`` each window after the first scores ``stride``
    new tokens conditioned on up to ``max_length - stride`` earlier ones (the
    strided perplexity of the transformers docs).
    """
    check_stride(stride, max_length)
    context_len = 1 if stride is None else max_length - stride + 1
    return [_disjoint(window) for window in _token_windows(tokens, prefix, max_length, context_len)]


def _token_windows(tokens: list[int], prefix: int, max_length: int, context_len: int) -> Iterator[TokenPair]:
    """``lm_eval.utils.get_rolling_token_windows``: (input tokens, predicted tokens) per window."""
    if not tokens:
        return
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    yield [prefix, *tokens[: first - 1]], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        end = predicted + window_pred_len
        yield tokens[end - max_length - 1 : end - 1], tokens[end - window_pred_len : end]
        predicted += window_pred_len


def _disjoint(window: TokenPair) -> TokenPair:
    """``lm_eval.utils.make_disjoint_window``: the context stops where the predicted tokens begin."""
    inputs, targets = window
    return inputs[: len(inputs) - (len(targets) - 1)], targets
