"""Reproducible sampling: each row's randomness depends only on (seed, request, sample, step).

A shared ``torch.Generator`` would make a request's text depend on which other
requests share its batch and in what order. Instead every draw is one uniform
number hashed from the seed, the request's content key, the index of the
sample (for ``num_return_sequences``) and the step, and the token is found by
inverting the cumulative distribution. The same request therefore gets the
same text in any batch, on any number of ranks, in any process.
"""

from __future__ import annotations

import hashlib

import torch


def uniform(seed: int, request_key: str, sample: int, step: int | str) -> float:
    """A number in [0, 1) fixed by its arguments (64 bits of SHA-256).

    ``step`` is the output position of the token being drawn; speculative
    decoding's other draws at that position name their purpose too
    (``"draft:12"``, ``"accept:12"``, ``"residual:12"``), so each is its own stream.
    """
    digest = hashlib.sha256(f"{seed}:{request_key}:{sample}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def sample(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row from softmax(scores); ``uniforms`` is ``[rows]`` in [0, 1)."""
    return sample_probs(torch.softmax(scores.float(), dim=-1), uniforms)


def sample_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row from the (possibly unnormalised) ``probs`` ``[rows, vocab]`` by inverse CDF.

    Token i is chosen when cdf[i-1] <= u * total < cdf[i], so it is chosen with
    probability p_i / total; tokens of zero mass have zero width and are never chosen.
    The CDF is accumulated in float64 so that 50k-token vocabularies lose no mass.
    """
    probs = probs.double()
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(1)
    index = torch.searchsorted(cdf, target, right=True).squeeze(1)
    # Rounding can put the target at the very end: take the last token with probability mass.
    last_nonzero = probs.size(-1) - 1 - torch.argmax((probs > 0).flip(-1).to(torch.int8), dim=-1)
    return torch.minimum(index, last_nonzero)
