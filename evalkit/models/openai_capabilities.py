"""What each kind of OpenAI-compatible server can do, and the check that its echo can score.

Servers share the OpenAI protocol but honour different DecodingConfig fields:
each ``ServerKind`` maps the fields it honours to its request parameters, and
the rest are "ignored" (sent nowhere; the adapter records and logs them). The
kind is read from ``/v1/models``' ``owned_by`` unless the caller names one.

Scoring rests on ``/v1/completions`` echoing the prompt's log-probabilities.
Some servers do not echo, and llama-cpp-python 0.3.x (for models that add no
BOS token) pairs each prompt token with the next position's distribution, so
``check_echo_alignment`` probes once before anything is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError

# stop, max_new_tokens and seed go in every generation request; name only labels the strategy.
ALWAYS_SENT = ("name", "stop", "max_new_tokens", "seed")
_DEFAULTS = {f.name: f.default for f in fields(DecodingConfig)}


@dataclass(frozen=True)
class ServerKind:
    """A family of servers: which DecodingConfig fields it honours (field -> request parameter) and its quirks.

    ``echo_max_tokens`` is the ``max_tokens`` of a scoring call (llama.cpp reads
    0 as "until the context is full"); ``max_stops`` how many stop strings the
    server takes (the adapter cuts the rest from the text itself).
    """

    name: str
    parameters: Mapping[str, str]
    echo_max_tokens: int = 0
    max_stops: int | None = None

    def ignored_fields(self, decoding: DecodingConfig) -> list[str]:
        """The fields of ``decoding`` set away from their defaults that this server cannot honour."""
        return [
            f.name for f in fields(DecodingConfig)
            if f.name not in ALWAYS_SENT and f.name not in self.parameters and getattr(decoding, f.name) != f.default
        ]

    def decoding_parameters(self, decoding: DecodingConfig) -> dict[str, Any]:
        """The request parameters for ``decoding``: temperature always (servers' defaults differ), the rest when set."""
        return {
            parameter: getattr(decoding, field) for field, parameter in self.parameters.items()
            if field == "temperature" or getattr(decoding, field) != _DEFAULTS[field]
        }


_OPENAI = {
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "num_return_sequences": "n",
}
SERVER_KINDS: dict[str, ServerKind] = {
    "openai": ServerKind("openai", _OPENAI, max_stops=4),
    "vllm": ServerKind("vllm", {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                                "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos"}, echo_max_tokens=1),
    # llama-cpp-python's server: repeat_penalty acts on the last 64 tokens only, and n is not served.
    "llama.cpp": ServerKind("llama.cpp", {**{k: v for k, v in _OPENAI.items() if k != "num_return_sequences"},
                                          "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                                          "repetition_penalty": "repeat_penalty"}, echo_max_tokens=1),
    # evalkit serve runs evalkit's own decoding loop: every field means what it means in-process.
    "evalkit": ServerKind("evalkit", {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                                      "repetition_penalty": "repetition_penalty",
                                      "no_repeat_ngram_size": "no_repeat_ngram_size", "num_beams": "num_beams",
                                      "length_penalty": "length_penalty", "early_stopping": "early_stopping",
                                      "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos"}),
}
# /v1/models "owned_by" -> kind ("me" is llama-cpp-python's; "llamacpp" llama.cpp's own server).
_OWNERS = {"vllm": "vllm", "me": "llama.cpp", "llamacpp": "llama.cpp", "evalkit": "evalkit"}


def check_kind_name(name: str) -> None:
    """A caller's ``server=`` must be "auto" or a known kind (one line otherwise)."""
    if name != "auto" and name not in SERVER_KINDS:
        raise EvalkitError(f"unknown server family {name!r}; use auto, {', '.join(SERVER_KINDS)}")


def server_kind(name: str, owned_by: object) -> ServerKind:
    """The kind named (``name``), or with "auto" the one whose ``/v1/models`` entry says ``owned_by``; else OpenAI's."""
    return SERVER_KINDS[name if name != "auto" else _OWNERS.get(str(owned_by or "").lower(), "openai")]


def unsupported(base_url: str, model: str | None, feature: str, fix: str | None = None) -> EvalkitError:
    """The one-line error for a server that lacks ``feature``, with what to do instead."""
    fix = fix or "use a server that does (vLLM, llama.cpp, evalkit serve) or backend='hf'"
    return EvalkitError(f"the server at {base_url} ({model}) does not support {feature}; {fix}")


# The echo check's prompt (its greedy next token is " five" for any English LM) and how far a
# generated and an echoed log-probability may differ (llama.cpp's batched and one-token kernels
# differ by ~0.03 nats on Q4 weights; a shifted echo is off by nats).
PROBE = "One, two, three, four,"
PROBE_TOLERANCE = 0.25


def check_echo_alignment(
    post: Callable[[str, dict], dict],
    score: Callable[[str, str], list[float]],
    *,
    base_url: str,
    model: str,
    score_prefix: str,
) -> None:
    """A greedy token's log-probability must be the same whether generated or echoed.

    ``post(path, payload)`` calls the server; ``score(context, continuation)``
    is the adapter's echo scoring. Catches servers that ignore ``echo`` or
    shift the echoed values by a position, before a whole evaluation is
    scored wrongly.
    """
    payload = {"model": model, "prompt": score_prefix + PROBE, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
    choice = (post("/completions", payload).get("choices") or [{}])[0]
    generated = (choice.get("logprobs") or {}).get("token_logprobs") or [None]
    if generated[0] is None:
        raise unsupported(base_url, model, "logprobs on /v1/completions")
    text = str(choice.get("text", ""))
    echoed = score(PROBE, text) if text.strip() else []
    if len(echoed) == 1 and abs(echoed[0] - generated[0]) > PROBE_TOLERANCE:
        raise unsupported(
            base_url, model,
            f"echoed log-probabilities aligned with their tokens ({text!r} after {PROBE!r}: "
            f"{echoed[0]:.2f} echoed, {generated[0]:.2f} generated)",
            fix="llama-cpp-python shifts them for models that add no BOS token: append "
            "::score_prefix=<the BOS token's text> to the model name",
        )
