"""The two model contracts.

``LanguageModel`` is what every adapter offers the runner (HF, native, HTTP).
``Backend`` is the narrower, white-box interface that the shared decoding loop
in :mod:`evalkit.decoding` drives, so every search strategy is implemented once
and means the same thing on every white-box adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import torch

from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood

if TYPE_CHECKING:
    from evalkit.decoding.config import DecodingConfig


@runtime_checkable
class LanguageModel(Protocol):
    """Every adapter: score and generate, batched, in request order.

    A method may also take a keyword ``on_done`` and call it with
    ``{index: response}`` for the requests that just finished (a batch, a
    decode step's finished rows), as soon as their responses are final
    (``index`` into ``requests``; each request once). The runner passes it to
    methods that declare it, and reports progress and caches responses by it,
    so progress is smooth and Ctrl-C keeps every finished answer without the
    runner cutting requests into small, poorly batched calls. Adapters
    without it are reported per call.
    """

    name: str
    tokenizer: Any
    max_length: int

    def loglikelihood(self, requests: Sequence[Loglikelihood]) -> list[Response]:
        """One response per request with ``logprob`` (sum over continuation tokens) and ``is_greedy``."""

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood]) -> list[Response]:
        """One response per request with the total ``logprob`` of the text and per-token logprobs."""

    def generate(self, requests: Sequence[Generate], decoding: DecodingConfig) -> list[Response]:
        """One response per request, generated under ``decoding``."""


@runtime_checkable
class Backend(Protocol):
    """A white-box causal LM the decoding loop can drive step by step.

    Conventions shared by every implementation:

    * ``token_ids`` and ``positions`` are ``[batch, steps]`` int64 tensors on
      the backend's device. A position of ``-1`` marks a padding slot: it is
      written nowhere visible and attended to by nobody, which is how rows of
      different lengths share one batch (left padding).
    * ``forward`` appends the new tokens to ``cache`` in place (and returns
      logits ``[batch, steps, vocab]``, or ``[batch, 1, vocab]`` for the last
      step only when ``last_only`` is true, so a prefill never materialises
      logits for every prompt position).
    * ``reorder_cache(cache, index)`` keeps and reorders rows: ``index`` is a
      1-D int64 tensor of row numbers (repeats allowed, for beams); dropping
      rows is how finished sequences leave the batch.
    """

    device: torch.device
    vocab_size: int
    eos_token_ids: tuple[int, ...]

    def new_cache(self, batch: int, max_len: int) -> Any: ...

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: Any, *, last_only: bool = False
    ) -> torch.Tensor: ...

    def reorder_cache(self, cache: Any, index: torch.Tensor) -> Any: ...
