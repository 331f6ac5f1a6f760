"""The two model contracts.

``LanguageModel`` is what every adapter offers the runner (HF, native, HTTP).
``Backend`` is the narrower, white-box interface that the shared decoding loop
in :mod:`evalkit.decoding` drives, so every search strategy is implemented once
and means the same thing on every white-box adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
    """A white-box LM that the one generation scheduler (:mod:`evalkit.decoding.scheduler`) drives step by step.

    The scheduler owns every decision (which request takes which row, which
    token comes next, when a row ends); a backend only runs the model over a
    cache of ``rows`` sequences. Conventions every implementation keeps:

    * A cache has a fixed number of rows; each holds one sequence's tokens.
      ``prefill`` restarts some rows from new prompts while the other rows
      keep theirs, which is how a finished row takes the next request
      (continuous batching).
    * ``forward`` feeds every row of the cache: ``token_ids`` and
      ``positions`` are ``[rows, steps]`` int64 on ``device``; a position of
      ``-1`` is a padding slot (an idle row, or a row with fewer tokens this
      step), stored nowhere visible and attended to by nobody. The tokens are
      appended to their rows and the float32 logits ``[rows, steps, vocab]``
      come back (``[rows, 1, vocab]`` with ``last_only``).
    * ``reorder_cache(cache, index)`` makes row ``i`` a copy of old row
      ``index[i]`` (repeats allowed): beams follow their parents, a request's
      extra samples copy its prefilled prompt, and idle rows are dropped
      (the row count may change, except when ``static_rows``).
    * ``truncate(cache, lengths)`` keeps the first ``lengths[i]`` tokens of
      each row: speculative decoding takes back the drafts the model rejected.

    ``max_length`` bounds prompt plus new tokens; ``num_parameters`` prices a
    draft model's forward pass against the target's in the run's cost;
    ``static_rows`` asks the scheduler never to change the row count (a
    captured CUDA-graph decode step is specialised to it).
    """

    device: torch.device
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_length: int
    num_parameters: int
    static_rows: bool

    def new_cache(self, rows: int, max_len: int) -> Any:
        """An empty cache of ``rows`` rows, each able to hold ``max_len`` tokens."""

    def prefill(self, cache: Any, rows: torch.Tensor, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Restart ``rows`` from ``prompts`` (token ids); next-token logits ``[len(rows), vocab]``, float32."""

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: Any, *, last_only: bool = False
    ) -> torch.Tensor:
        """Append ``token_ids`` to every row; logits ``[rows, steps or 1, vocab]``, float32."""

    def reorder_cache(self, cache: Any, index: torch.Tensor) -> Any:
        """Row ``i`` becomes old row ``index[i]``; returns the cache."""

    def truncate(self, cache: Any, lengths: torch.Tensor) -> None:
        """Each row keeps its first ``lengths[i]`` tokens."""
