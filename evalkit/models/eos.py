"""The token ids that end generation, as every white-box adapter reads them from a checkpoint."""

from __future__ import annotations

from typing import Any


def eos_token_ids(generation_config: Any, model_config: Any, tokenizer: Any) -> tuple[int, ...]:
    """Every end-of-sequence id the checkpoint names, first seen first: generation config, model config, tokenizer.

    Why the union: ``generate`` stops on the generation config's ids (several
    for chat models such as Llama 3), lm-evaluation-harness also stops on the
    tokenizer's EOS, and a converted or hand-built checkpoint may state its EOS
    in only one of the three places. Any source may be None or name no EOS.
    """
    ids: list[int] = []
    for source in (generation_config, model_config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids += [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return tuple(dict.fromkeys(ids))
