"""Target-token log-probabilities from hidden states, for every white-box adapter.

Scoring needs log P(target) at a few positions, never the whole
``[batch x positions x vocab]`` logits tensor. Both the transformers adapter
and the native engine project only the rows that predict a target, a bounded
number of rows at a time, through this one function, so their scores are
computed the same way. A prompt's own token log-probabilities (``evalkit
serve``'s ``echo``) run through any white-box backend's KV cache a chunk at a
time, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

# Rows of hidden states projected to the vocabulary at once: bounds the logits buffer
# (1024 x 49k x 4 bytes = 200 MB) however many targets a batch has.
PROJECTION_ROWS = 1024
# Prompt tokens per forward call when scoring a prompt's own tokens: bounds the logits buffer to 256 x vocab.
PROMPT_CHUNK = 256


def target_logprobs(
    project: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log-softmax probability of each target and whether it is the argmax, on the CPU.

    ``hidden`` is ``[n_rows, hidden]``; target ``i`` is predicted by row
    ``rows[i]`` (default: row ``i``). Several targets may share a row (the
    last context token predicts the first token of every continuation), and
    that row is projected once.
    """
    if rows is None:
        rows = torch.arange(len(targets), device=targets.device)
    logprobs = torch.empty(len(targets), device=targets.device)
    hits = torch.empty(len(targets), dtype=torch.bool, device=targets.device)
    for start in range(0, len(hidden), PROJECTION_ROWS):
        lp = F.log_softmax(project(hidden[start : start + PROJECTION_ROWS]).float(), dim=-1)
        pick = ((rows >= start) & (rows < start + PROJECTION_ROWS)).nonzero()[:, 0]
        local, wanted = rows[pick] - start, targets[pick]
        logprobs[pick] = lp[local, wanted]
        hits[pick] = lp.argmax(dim=-1)[local] == wanted
    return logprobs.cpu(), hits.cpu()


def prompt_logprobs(model: Any, ids: list[int], top: int) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each prompt token's log-probability given the tokens before it, and the ``top`` likeliest tokens there.

    For any white-box ``Backend``: runs ``forward`` over the prompt in chunks
    of ``PROMPT_CHUNK`` tokens, appending to one KV cache, so no logits tensor
    larger than one chunk exists. The first token has no context: None.
    """
    cache = model.new_cache(1, len(ids))
    logprobs: list[float | None] = [None]
    tops: list[dict[int, float] | None] = [None]
    for start in range(0, len(ids), PROMPT_CHUNK):
        chunk = ids[start : start + PROMPT_CHUNK]
        tokens = torch.tensor([chunk], dtype=torch.long, device=model.device)
        positions = torch.arange(start, start + len(chunk), dtype=torch.long, device=model.device)[None]
        logits = model.forward(tokens, positions, cache)[0]
        targets = ids[start + 1 : start + len(chunk) + 1]
        lp = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
        picked = lp.gather(1, torch.tensor(targets, device=lp.device)[:, None]).squeeze(1)
        best = lp.topk(max(top, 1), dim=-1)
        logprobs.extend(picked.tolist())
        for values, indices in zip(best.values.tolist(), best.indices.tolist()):
            tops.append(dict(zip(indices[:top], values[:top])) if top else {indices[0]: values[0]})
    return logprobs, tops


def document_groups(windows_per_document: list[int], at_least: int) -> list[range]:
    """Consecutive documents in groups of at least ``at_least`` windows (the last group may have fewer).

    Rolling loglikelihood batches windows across documents, so a document is
    done only when its last window is; scored a group at a time, documents
    finish (are reported and cached) group by group, while every forward call
    but a group's last stays as full as with all documents at once.
    """
    groups: list[range] = []
    start = count = 0
    for i, n in enumerate(windows_per_document):
        count += n
        if count >= at_least:
            groups.append(range(start, i + 1))
            start, count = i + 1, 0
    if start < len(windows_per_document):
        groups.append(range(start, len(windows_per_document)))
    return groups
