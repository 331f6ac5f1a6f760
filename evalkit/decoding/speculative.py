"""Speculative decoding: cheap drafts, checked by the model K tokens per forward pass.

A drafter proposes up to K next tokens; the model scores the pending token
and the K drafts in one forward pass, which costs about as much as one
decode step when decoding is bound by reading the weights. Drafts are then
accepted left to right:

* greedy: a draft is accepted while it equals the model's own argmax at its
  position, and the model's argmax follows the last accepted one. The output
  is the greedy output, token for token.
* sampling: the rule of Leviathan et al. (2023) and Chen et al. (2023). Draft
  ``d`` drawn from the drafter's distribution ``q`` is accepted with
  probability ``min(1, p(d) / q(d))`` under the model's (processed)
  distribution ``p``; at the first rejection the next token is drawn from
  ``max(0, p - q)``, renormalised; when every draft is accepted, a bonus
  token is drawn from ``p``. Every token is then distributed exactly as plain
  sampling from ``p`` would draw it. A prompt-lookup draft is a point mass
  (``q(d) = 1``): accepted with probability ``p(d)``, and on rejection the
  next token is drawn from ``p`` without ``d``.

Drafters: :class:`LookupIndex` (prompt lookup, no second model) here; a
draft model is driven by the scheduler over its own Backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LookupIndex:
    """Prompt lookup over one sequence (prompt + output): the tokens that followed the latest earlier
    occurrence of its longest suffix n-gram, for n from ``max_ngram`` down to ``min_ngram``.

    The index maps each n-gram to the position after its latest occurrence and
    grows as the sequence does, so a proposal costs ``max_ngram`` dictionary
    lookups however long the sequence is. Latest, because in the text a model
    is writing, the most recent repetition (a name, a number, a quoted span)
    best predicts what follows.
    """

    def __init__(self, max_ngram: int, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.after: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # n-grams ending before this position are in the index

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` draft tokens continuing ``tokens`` (empty when no suffix n-gram occurred before)."""
        end = len(tokens) - 1  # n-grams ending at the last token are the suffix itself, not an earlier occurrence
        for stop in range(self.indexed, end):
            for n in range(self.min_ngram, min(self.max_ngram, stop + 1) + 1):
                self.after[tuple(tokens[stop + 1 - n : stop + 1])] = stop + 1
        self.indexed = max(self.indexed, end)
        if k < 1:
            return []
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            start = self.after.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                return list(tokens[start : start + k])
        return []


def accept_greedy(choices: torch.Tensor, drafts: torch.Tensor, n_drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification of ``[rows, K]`` drafts against the model's argmax ``choices`` ``[rows, K + 1]``.

    Returns the number of drafts accepted per row and the token that follows
    them (the model's own choice after the last accepted draft).
    """
    k = drafts.shape[1]
    valid = torch.arange(k, device=drafts.device)[None, :] < n_drafts[:, None]
    accepted = ((drafts == choices[:, :k]) & valid).long().cumprod(dim=1).sum(dim=1)
    return accepted, choices.gather(1, accepted[:, None])[:, 0]


def accept_sampled(
    probs: torch.Tensor,
    drafts: torch.Tensor,
    n_drafts: torch.Tensor,
    draft_probs: torch.Tensor | None,
    accept_uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rejection sampling of ``[rows, K]`` drafts against the model's distributions ``probs`` ``[rows, K + 1, vocab]``.

    ``draft_probs`` ``[rows, K, vocab]`` is the drafter's distribution at each
    draft (None: point masses, as prompt lookup proposes); ``accept_uniforms``
    ``[rows, K]`` are the draws that decide acceptance. Returns the number of
    drafts accepted per row, whether the row stopped at a rejection, and the
    distribution ``[rows, vocab]`` (unnormalised) the next token is drawn from.
    """
    rows, k = drafts.shape
    index = torch.arange(rows, device=drafts.device)
    p_draft = probs[:, :k].gather(2, drafts[:, :, None])[:, :, 0]
    q_draft = draft_probs.gather(2, drafts[:, :, None])[:, :, 0] if draft_probs is not None else torch.ones_like(p_draft)
    valid = torch.arange(k, device=drafts.device)[None, :] < n_drafts[:, None]
    ok = (accept_uniforms.to(p_draft.dtype) * q_draft < p_draft) & valid
    accepted = ok.long().cumprod(dim=1).sum(dim=1)
    rejected = accepted < n_drafts
    at = accepted.clamp(max=k)
    target = probs[index, at]
    if k == 0:
        return accepted, rejected, target
    spot = accepted.clamp(max=k - 1)
    if draft_probs is not None:
        drafted = draft_probs[index, spot]
    else:
        drafted = torch.zeros_like(target).scatter_(1, drafts[index, spot][:, None], 1.0)
    residual = (target - drafted).clamp(min=0)
    # p == q exactly leaves no residual mass; a rejection then has probability 0, but float rounding can still
    # land there: fall back to p, which is what the rule converges to.
    residual = torch.where(residual.sum(dim=1, keepdim=True) > 0, residual, target)
    return accepted, rejected, torch.where(rejected[:, None], residual, target)

