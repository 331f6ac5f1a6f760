"""The records that flow from tasks to models and back.

Three request kinds, as in lm-evaluation-harness, and one response record.
Requests are frozen so they can be hashed into cache keys; responses are
plain dataclasses that serialise to JSON for the on-disk cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Loglikelihood:
    """log P(continuation | context); the split between the two is kept at the token level."""

    context: str
    continuation: str


@dataclass(frozen=True)
class RollingLoglikelihood:
    """log P(text) for a whole document, scored in windows (perplexity)."""

    text: str


@dataclass(frozen=True)
class Generate:
    """Free-running generation from a prompt until a stop string, EOS or the token budget.

    ``prompt`` is the exact text a white-box model continues; ``messages``, set
    when a chat template was applied, are the turns it was rendered from, which
    an HTTP chat endpoint receives instead.
    """

    prompt: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) turns behind a chat prompt


Request = Loglikelihood | RollingLoglikelihood | Generate


def request_key(request: Request) -> str:
    """A stable content hash of a request: the same request gets the same key in every process.

    Used for the response cache and to derive each request's own random stream,
    so results do not depend on batch composition or on the number of ranks.
    """
    fields = {k: v for k, v in asdict(request).items() if v is not None}  # unset optional fields keep old keys
    payload = json.dumps([type(request).__name__, fields], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass
class Timing:
    """Where the time went for one request, so cost is measured on every run.

    The seconds depend on the machine and its load; the counts below them do
    not (for a given model, request set, batch size and strategy), so a cost
    drawn from them is the same on every run:

    * ``forwards``: target forward passes this request's rows took part in,
      summed over its rows (a beam-4 step counts 4, a speculative step that
      checks 5 tokens in one pass counts 1; the prefill counts 1);
    * ``forward_tokens``: tokens this request put through the target's layers
      (prompt, generated tokens, and drafts the target checked and rejected);
    * ``draft_forwards`` / ``draft_tokens``: the same for the draft model;
    * ``drafted`` / ``accepted``: tokens proposed by the drafter, and those of
      them the target accepted;
    * ``cost``: forward-equivalents, ``forwards + draft_forwards x`` (draft
      parameters / target parameters).
    """

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    forwards: int = 0
    forward_tokens: int = 0
    draft_forwards: int = 0
    draft_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    cost: float = 0.0


@dataclass
class Response:
    """What a model returned for one request.

    Loglikelihood requests fill ``logprob``, ``is_greedy`` and ``token_logprobs``
    (of the continuation tokens); rolling requests fill ``logprob`` and
    ``token_logprobs`` (of every token of the text); generation fills ``text``,
    ``token_ids``, ``token_logprobs`` and ``finish_reason`` ("stop", "eos" or
    "length"). ``alternatives`` holds the extra sequences of
    ``num_return_sequences > 1`` (each a Response without alternatives).
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    logprob: float | None = None
    is_greedy: bool | None = None
    finish_reason: str | None = None
    timing: Timing = field(default_factory=Timing)
    alternatives: list[Response] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Response:
        data = dict(data)
        data["timing"] = Timing(**data.get("timing", {}))
        data["alternatives"] = [cls.from_dict(a) for a in data.get("alternatives", [])]
        return cls(**data)
