"""Stop strings: where an output ends, for every generation loop.

A stop string is found in the decoded output and the output is cut before it
(the stop itself is not part of the answer). Outputs are decoded without
special tokens, so a stop that *is* a special token, such as a chat
template's end-of-turn marker (``<|eot_id|>``, ``<end_of_turn>``) on a model
whose EOS is another token, never appears in that text: those stops are
looked for in the decoding that keeps special tokens, as lm-evaluation-harness's
stop criterion does.
"""

from __future__ import annotations

import weakref
from typing import Any


def hidden_stops(tokenizer: Any, stops: tuple[str, ...]) -> tuple[str, ...]:
    """The stops that vanish from an output decoded without special tokens (they are special tokens).

    Asked at every decoding step of every row, so each stop string is tried once per tokenizer.
    """
    try:
        known = _HIDDEN.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that takes no weak reference: tried each time
        known = {}
    for stop in stops:
        if stop not in known:
            known[stop] = bool(stop.strip()) and stop not in tokenizer.decode(_encode(tokenizer, stop), skip_special_tokens=True)
    return tuple(s for s in stops if known[s])


_HIDDEN: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a minimal tokenizer (encode(text) only) adds nothing to strip
        return tokenizer.encode(text)


def cut_text(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string in it, and whether there was one."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def cut_at_stop(tokenizer: Any, tokens: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """The output text of ``tokens`` cut before its first stop string, and whether a stop was found."""
    text, found = cut_text(tokenizer.decode(tokens, skip_special_tokens=True), stops)
    if found or not stops:
        return text, found
    hidden = hidden_stops(tokenizer, stops)
    if hidden and any(s in tokenizer.decode(tokens, skip_special_tokens=False) for s in hidden):
        end = len(tokens)  # the shortest prefix that holds the stop: the answer is what precedes it
        while end > 1 and any(s in tokenizer.decode(tokens[: end - 1], skip_special_tokens=False) for s in hidden):
            end -= 1
        return tokenizer.decode(tokens[: end - 1], skip_special_tokens=True), True
    return text, False
