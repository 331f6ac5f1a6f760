"""OpenAI-compatible HTTP servers (vLLM, llama.cpp, TGI, OpenAI, ``evalkit serve``) behind ``LanguageModel``.

Model names (``--backend openai --model SPEC``)::

    http://127.0.0.1:8080/v1::smollm2        base URL, then the model the server knows
    http://127.0.0.1:8080/v1                 the server's first model (from /v1/models)
    http://127.0.0.1:8080/v1::smollm2::chat  generate through /v1/chat/completions
    http://127.0.0.1:8080/v1::smollm2::score_prefix=<|im_start|>
                                             put this text (not scored) before every scored text
    gpt-4o-mini                              base URL from $OPENAI_BASE_URL (default api.openai.com)

Options after the model are part of the name, hence of the response cache's key.

Scoring uses ``/v1/completions`` with ``echo`` and ``logprobs``: the server
returns the log-probability of every prompt token, and the continuation's
tokens are found by their text offsets. Before the first scoring call the
adapter checks, once, that the echoed log-probabilities belong to their tokens
(a one-token greedy generation must get the log-probability the echo gives the
same token). Servers that cannot score (chat-only APIs, TGI) or that misalign
(llama-cpp-python 0.3.x for models that add no BOS token: it pairs each prompt
token with the next position's distribution; ``score_prefix=<BOS text>`` fixes
it) fail with one line naming the server and the missing feature. The server
gives the first token of a prompt no log-probability, so a rolling document's
first token is only scored when ``score_prefix`` precedes it.
Generation uses ``/v1/completions`` by default, since evalkit's prompts are raw
text (few-shot blocks ending in "Answer:"); ``::chat`` sends them to
``/v1/chat/completions`` instead: a chat-templated request (``--apply-chat-template``)
as its own messages (system instruction, few-shot turns, the question), for the
server to render with its template, and any other prompt as one user message.
A conversation that ends in an assistant message (an answer prefix, lm-eval's
``gen_prefix``) is sent with vLLM's ``continue_final_message: true`` and
``add_generation_prompt: false``, so the model continues that message (evalkit
serve honours them too); a server without these parameters may ignore them and
start a new reply instead, or (OpenAI's API) refuse the request.

Requests run on a thread pool (``concurrency``, the CLI's ``--batch-size``);
each call has a timeout and is retried with exponential backoff on connection
errors, timeouts, 429 and 5xx, honouring ``Retry-After``. The API key is read
from an environment variable (``OPENAI_API_KEY`` unless ``api_key_env`` or
``$EVALKIT_API_KEY_ENV`` names another) into a header and nowhere else: not
the adapter's name, repr, errors or logs.

A server honours only some of the DecodingConfig fields; the rest are listed by
:meth:`OpenAIModel.ignored_fields`, recorded per strategy label in
``ignored_decoding_fields`` and logged once per strategy.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import requests

from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.stops import cut_text
from evalkit.errors import EvalkitError
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood, Timing

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_LENGTH = 2048  # when neither the caller nor /v1/models states the context length
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

# DecodingConfig field -> request parameter, per server family. Fields a family lacks are
# "ignored": sent nowhere, listed by ignored_fields(). stop, max_new_tokens and seed always go.
_OPENAI = {
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "num_return_sequences": "n",
}
SERVER_PARAMETERS: dict[str, dict[str, str]] = {
    "openai": _OPENAI,
    "vllm": {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
             "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos"},
    # llama-cpp-python's server: repeat_penalty acts on the last 64 tokens only, and n is not served.
    "llama.cpp": {**{k: v for k, v in _OPENAI.items() if k != "num_return_sequences"},
                  "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p", "repetition_penalty": "repeat_penalty"},
    # evalkit serve runs evalkit's own decoding loop: every field means what it means in-process.
    "evalkit": {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size",
                "num_beams": "num_beams", "length_penalty": "length_penalty", "early_stopping": "early_stopping",
                "min_new_tokens": "min_tokens", "ignore_eos": "ignore_eos"},
}
# /v1/models "owned_by" -> family ("me" is llama-cpp-python's; "llamacpp" llama.cpp's own server).
_OWNERS = {"vllm": "vllm", "me": "llama.cpp", "llamacpp": "llama.cpp", "evalkit": "evalkit"}
# The max_tokens of a scoring call: llama.cpp reads 0 as "until the context is full".
_ECHO_MAX_TOKENS = {"llama.cpp": 1, "vllm": 1}
_ALWAYS_SENT = ("name", "stop", "max_new_tokens", "seed")
# The echo check's prompt (its greedy next token is " five" for any English LM) and how far a
# generated and an echoed log-probability may differ (llama.cpp's batched and one-token kernels
# differ by ~0.03 nats on Q4 weights; a shifted echo is off by nats).
_PROBE = "One, two, three, four,"
_PROBE_TOLERANCE = 0.25


@dataclass(frozen=True)
class Endpoint:
    """A parsed model spec: where the server is, which model it should run, and which endpoint generates."""

    base_url: str
    model: str | None
    chat: bool = False
    score_prefix: str = ""


def parse_model_spec(spec: str) -> Endpoint:
    """``[BASE_URL::]MODEL[::OPTION...]`` or a bare ``BASE_URL`` (see the module docstring).

    Options: ``chat`` and ``score_prefix=TEXT``.
    """
    spec = spec.strip()
    if "://" in spec.split("::")[0] and not spec.startswith(("http://", "https://")):
        raise EvalkitError(f"base URL in {spec!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/v1")
    if spec.startswith(("http://", "https://")):
        host_end = spec.index("]", 0) + 1 if "://[" in spec else spec.index("://") + 3  # IPv6 hosts hold "::"
        cut = spec.find("::", host_end)
        base, rest = (spec, "") if cut < 0 else (spec[:cut], spec[cut + 2:])
    else:
        base, rest = os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), spec
    parts = rest.split("::") if rest else []
    options = parts[1:]
    chat = "chat" in options
    prefixes = [o.split("=", 1)[1] for o in options if o.startswith("score_prefix=")]
    unknown = [o for o in options if o != "chat" and not o.startswith("score_prefix=")]
    if unknown or any(not p for p in parts) or len(prefixes) > 1 or options.count("chat") > 1:
        raise EvalkitError(
            f"cannot read model spec {spec!r}: use BASE_URL::MODEL[::chat][::score_prefix=TEXT], "
            "e.g. http://127.0.0.1:8080/v1::smollm2"
        )
    url = urlsplit(base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EvalkitError(f"base URL {base!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/v1")
    if url.username or url.password:
        raise EvalkitError("the base URL holds credentials; put the key in $OPENAI_API_KEY (or --api-key-env) instead")
    return Endpoint(base_url=base.rstrip("/"), model=parts[0] if parts else None, chat=chat,
                    score_prefix=prefixes[0] if prefixes else "")


class _Secret:
    """Holds the API key; prints as *** so no repr, log line or traceback local shows it."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def __bool__(self) -> bool:
        return bool(self._value)

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


class OpenAIModel:
    """A model behind an OpenAI-compatible server, as an evalkit ``LanguageModel``.

    ``server`` names the family ("vllm", "llama.cpp", "evalkit", "openai") that
    decides which DecodingConfig fields can be sent; "auto" reads it from
    ``/v1/models``. ``score_prefix`` is text put before every scored text
    and not scored itself: the BOS token's text conditions a rolling
    document's first token as lm-evaluation-harness does, and makes
    llama-cpp-python align its echoed log-probabilities.
    """

    tokenizer = None  # the server tokenizes; evalkit never needs the tokens themselves

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        chat: bool = False,
        name: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_length: int | None = None,
        server: str = "auto",
        score_prefix: str = "",
    ) -> None:
        if concurrency < 1:
            raise EvalkitError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0 or timeout <= 0:
            raise EvalkitError(f"need max_retries >= 0 and timeout > 0, got {max_retries} and {timeout}")
        if server != "auto" and server not in SERVER_PARAMETERS:
            raise EvalkitError(f"unknown server family {server!r}; use auto, {', '.join(SERVER_PARAMETERS)}")
        self.base_url = base_url.rstrip("/")
        self.chat = chat
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.score_prefix = score_prefix
        self._echo_checked = False
        self.api_key_env = api_key_env
        self._api_key = _Secret(os.environ.get(api_key_env))
        self._session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
        self._session.mount("http://", pool)
        self._session.mount("https://", pool)
        self.ignored_decoding_fields: dict[str, list[str]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        served = self._probe()
        self.model = model or (served[0]["id"] if served else None)
        if self.model is None:
            raise EvalkitError(f"{self.base_url} lists no model; name one: model='{self.base_url}::MODEL'")
        ids = [m["id"] for m in served]
        if ids and self.model not in ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise EvalkitError(f"{self.base_url} does not serve {self.model!r} (it serves {shown}); fix the name after '::'")
        entry = next((m for m in served if m.get("id") == self.model), served[0] if served else {})
        self.server = server if server != "auto" else _OWNERS.get(str(entry.get("owned_by", "")).lower(), "openai")
        self.max_length = int(max_length or entry.get("max_model_len") or DEFAULT_MAX_LENGTH)
        options = (["chat"] if chat else []) + ([f"score_prefix={score_prefix}"] if score_prefix else [])
        self.name = name or "::".join([self.base_url, self.model, *options])

    def __repr__(self) -> str:
        return f"OpenAIModel({self.name!r}, server={self.server!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ LanguageModel

    def loglikelihood(self, requests: Sequence[Loglikelihood]) -> list[Response]:
        self._check_echo()

        def score(request: Loglikelihood) -> Response:
            # lm-eval's split: the context's trailing blanks belong to the continuation (" word" is one token).
            context = request.context.rstrip()
            continuation = request.context[len(context):] + request.continuation
            return self._score(context, continuation, first_scored=0)

        return self._map(score, requests)

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood]) -> list[Response]:
        self._check_echo()
        return self._map(lambda r: self._score("", r.text, first_scored=1), requests)

    def generate(self, requests: Sequence[Generate], decoding: DecodingConfig) -> list[Response]:
        ignored = self.ignored_fields(decoding)
        with self._lock:
            self.ignored_decoding_fields[decoding.label] = ignored
            if ignored and decoding.key() not in self._warned:
                self._warned.add(decoding.key())
                log.warning("%s (%s server) ignores decoding field(s) %s of strategy %r",
                            self.name, self.server, ", ".join(ignored), decoding.label)
        return self._map(lambda r: self._generate_one(r, decoding), requests)

    def ignored_fields(self, decoding: DecodingConfig) -> list[str]:
        """The fields of ``decoding`` set away from their defaults that this server cannot honour."""
        supported = SERVER_PARAMETERS[self.server]
        return [
            f.name for f in fields(DecodingConfig)
            if f.name not in _ALWAYS_SENT and f.name not in supported and getattr(decoding, f.name) != f.default
        ]

    # ------------------------------------------------------------------ scoring

    def _score(self, context: str, continuation: str, first_scored: int) -> Response:
        """Log-probabilities of the continuation's tokens, from one echo call on prefix + context + continuation.

        ``first_scored`` is 1 for rolling documents: their first token may get
        no log-probability (nothing before it), which is then not an error.
        """
        context = self.score_prefix + context
        prompt = context + continuation
        payload = {"model": self.model, "prompt": prompt, "max_tokens": _ECHO_MAX_TOKENS.get(self.server, 0),
                   "temperature": 0.0, "echo": True, "logprobs": 1}
        started = time.perf_counter()
        data = self._post("/completions", payload)
        elapsed = time.perf_counter() - started
        tokens, offsets, logprobs, tops = self._prompt_logprobs(data, prompt)
        start = _first_token_at(offsets, len(context))
        chosen = list(zip(logprobs[start:], tops[start:]))
        if start == 0 and chosen and chosen[0][0] is None:
            if not first_scored:
                raise EvalkitError(
                    f"{self.base_url} gives the first token no log-probability, so a loglikelihood request "
                    "with an empty context cannot be scored over HTTP; give every request some context"
                )
            chosen = chosen[1:]
        if not chosen or any(lp is None for lp, _ in chosen):
            raise self._unsupported("a log-probability for every continuation token (echo=True)")
        greedy = all(top is not None and lp >= max(top.values()) - 1e-6 for lp, top in chosen)
        token_logprobs = [float(lp) for lp, _ in chosen]
        usage = data.get("usage") or {}
        return Response(
            token_logprobs=token_logprobs,
            logprob=sum(token_logprobs),
            is_greedy=greedy,
            timing=Timing(prefill_s=elapsed, prompt_tokens=int(usage.get("prompt_tokens") or len(tokens))),
        )

    def _check_echo(self) -> None:
        """Once: a greedy token's log-probability must be the same whether generated or echoed.

        Catches servers that ignore ``echo`` or shift the echoed values by a
        position, before a whole evaluation is scored wrongly.
        """
        with self._lock:
            if self._echo_checked:
                return
            prompt = self.score_prefix + _PROBE
            payload = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 1}
            choice = (self._post("/completions", payload).get("choices") or [{}])[0]
            generated = (choice.get("logprobs") or {}).get("token_logprobs") or [None]
            if generated[0] is None:
                raise self._unsupported("logprobs on /v1/completions")
            text = str(choice.get("text", ""))
            echoed = self._score(_PROBE, text, first_scored=0).token_logprobs if text.strip() else []
            if len(echoed) == 1 and abs(echoed[0] - generated[0]) > _PROBE_TOLERANCE:
                raise self._unsupported(
                    f"echoed log-probabilities aligned with their tokens ({text!r} after {_PROBE!r}: "
                    f"{echoed[0]:.2f} echoed, {generated[0]:.2f} generated)",
                    fix="llama-cpp-python shifts them for models that add no BOS token: append "
                    "::score_prefix=<the BOS token's text> to the model name",
                )
            self._echo_checked = True

    def _prompt_logprobs(
        self, data: dict, prompt: str
    ) -> tuple[list[str], list[int], list[float | None], list[dict | None]]:
        """The echoed prompt's tokens, their text offsets, log-probabilities and top alternatives.

        Generated tokens (at or past the prompt's end) are dropped. Offsets are
        the server's ``text_offset`` when it sends one, else the running length
        of the token texts.
        """
        choice = (data.get("choices") or [{}])[0]
        lp = choice.get("logprobs") or {}
        tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
        if not tokens or logprobs is None or len(tokens) != len(logprobs):
            raise self._unsupported("logprobs on /v1/completions")
        if not str(choice.get("text", "")).startswith(prompt) and not "".join(tokens).startswith(prompt):
            raise self._unsupported("echo=True on /v1/completions")
        offsets = lp.get("text_offset")
        if not offsets or len(offsets) != len(tokens):
            offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0))
        # Offsets count from the prompt's start, or (llama-cpp-python) from after a BOS text it dropped.
        joined = "".join(tokens)
        base = next((b for b in (0, len(self.score_prefix)) if joined.startswith(prompt[b:])), 0)
        offsets = [base + offset for offset in offsets]
        tops = lp.get("top_logprobs") or [None] * len(tokens)
        keep = sum(1 for offset in offsets if offset < len(prompt))
        return tokens[:keep], offsets[:keep], logprobs[:keep], tops[:keep]

    # ------------------------------------------------------------------ generation

    def _generate_one(self, request: Generate, decoding: DecodingConfig) -> Response:
        stops = list(dict.fromkeys(tuple(request.stop) + decoding.stop))
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": decoding.max_new_tokens or request.max_new_tokens,
            "seed": decoding.seed,
        }
        for field, parameter in SERVER_PARAMETERS[self.server].items():
            value = getattr(decoding, field)
            if field == "temperature" or value != _DEFAULTS[field]:
                payload[parameter] = value
        if stops:
            payload["stop"] = stops[:4] if self.server == "openai" else stops  # OpenAI takes 4; the rest cut here
        if self.chat:
            payload["messages"] = _chat_messages(request)
            if payload["messages"][-1]["role"] == "assistant":  # an answer prefix: continue it (vLLM's names)
                payload.update(continue_final_message=True, add_generation_prompt=False)
        else:
            payload["prompt"] = request.prompt
        started = time.perf_counter()
        data = self._post("/chat/completions" if self.chat else "/completions", payload)
        elapsed = time.perf_counter() - started
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if not choices:
            raise EvalkitError(f"{self.base_url} returned no choices for a generation request")
        responses = [self._choice(c, stops) for c in choices]
        usage = data.get("usage") or {}
        first = responses[0]
        first.alternatives = responses[1:]
        first.timing = Timing(decode_s=elapsed, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              generated_tokens=int(usage.get("completion_tokens") or 0))
        return first

    def _choice(self, choice: dict, stops: list[str]) -> Response:
        text = (choice.get("message") or {}).get("content") if self.chat else choice.get("text")
        text, cut = cut_text(text or "", stops)
        reason = choice.get("finish_reason")
        if cut:  # a server that kept the stop string, or one of OpenAI's stops past the fourth
            reason = "stop"
        elif reason == "stop" and "stop_reason" in choice and not isinstance(choice["stop_reason"], str):
            reason = "eos"  # vLLM and evalkit serve tell EOS (stop_reason null or a token id) from stop strings
        elif reason not in ("stop", "length"):
            reason = "stop" if reason else None
        return Response(text=text, finish_reason=reason)

    # ------------------------------------------------------------------ HTTP

    def _map(self, fn: Callable[[Any], Response], items: Sequence[Any]) -> list[Response]:
        """``fn`` over ``items`` on the thread pool, in order; the batch's wall time is shared out among them.

        Summed over a batch, the timings are then the batch's real cost (not
        ``concurrency`` times it), as the runner's efficiency figures expect.
        """
        if not items:
            return []
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                responses = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        wall = time.perf_counter() - started
        spent = sum(r.timing.prefill_s + r.timing.decode_s for r in responses) or 1.0
        for r in responses:
            r.timing.prefill_s *= wall / spent
            r.timing.decode_s *= wall / spent
        return responses

    def _headers(self) -> dict[str, str]:
        key = self._api_key.reveal()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _probe(self) -> list[dict]:
        """``/v1/models``: the served models (empty when the server has no such route)."""
        try:
            data = self._request("GET", "/models", None)
        except _NotFound:
            return []
        return [m for m in data.get("data") or [] if isinstance(m, dict) and m.get("id")]

    def _post(self, path: str, payload: dict) -> dict:
        try:
            return self._request("POST", path, payload)
        except _NotFound:
            what = "/v1/chat/completions" if path == "/chat/completions" else "/v1/completions"
            raise self._unsupported(what) from None

    def _request(self, method: str, path: str, payload: dict | None) -> dict:
        """One call, retried with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                reply = self._session.request(method, url, json=payload, headers=self._headers(), timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as err:
                problem = "timed out" if isinstance(err, requests.Timeout) else "refused the connection"
            else:
                if reply.status_code < 400:
                    try:
                        return reply.json()
                    except ValueError:
                        raise EvalkitError(f"{url} answered {reply.status_code} with a body that is not JSON") from None
                if reply.status_code == 404:
                    raise _NotFound(url)
                if reply.status_code in (401, 403):
                    raise EvalkitError(
                        f"{url} refused the request ({reply.status_code}): set ${self.api_key_env} to a valid API key"
                    )
                if reply.status_code not in RETRY_STATUS:
                    raise EvalkitError(f"{url} answered {reply.status_code}: {_error_message(reply)}")
                problem = f"answered {reply.status_code}"
                retry_after = _retry_after(reply.headers.get("Retry-After"))
            if attempt == self.max_retries:
                break
            wait = retry_after if retry_after is not None else self.backoff * 2**attempt * random.uniform(0.5, 1.0)
            wait = min(wait, self.max_backoff)
            log.info("%s %s; retry %d/%d in %.1fs", url, problem, attempt + 1, self.max_retries, wait)
            time.sleep(wait)
        raise EvalkitError(
            f"{url} {problem} after {self.max_retries + 1} attempts; check that the server is running, then rerun "
            "(finished responses are cached)"
        )

    def _unsupported(self, feature: str, fix: str | None = None) -> EvalkitError:
        fix = fix or "use a server that does (vLLM, llama.cpp, evalkit serve) or backend='hf'"
        return EvalkitError(f"the server at {self.base_url} ({self.model}) does not support {feature}; {fix}")


class _NotFound(Exception):
    """A 404: a missing route, turned into a 'does not support' error by the caller."""


_DEFAULTS = {f.name: f.default for f in fields(DecodingConfig)}


def _error_message(reply: requests.Response) -> str:
    """The server's own one-line reason (OpenAI's {"error": {"message"}} shape or plain text)."""
    try:
        body = reply.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = reply.text
    text = " ".join(str(message).split())
    return text[:300] or reply.reason


def _chat_messages(request: Generate) -> list[dict[str, str]]:
    """The turns a chat-templated request was rendered from; a plain prompt becomes one user message."""
    if request.messages:
        return [{"role": role, "content": content} for role, content in request.messages]
    return [{"role": "user", "content": request.prompt}]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _first_token_at(offsets: list[int], position: int) -> int:
    """The index of the token holding character ``position``: the first continuation token.

    A token that straddles the boundary (part context, part continuation) is
    counted with the continuation, so no continuation text goes unscored.
    """
    for i, offset in enumerate(offsets):
        if offset == position:
            return i
        if offset > position:
            return max(i - 1, 0)
    return max(len(offsets) - 1, 0)


def load_openai(spec: str, *, batch_size: int = 8, **kw: Any) -> OpenAIModel:
    """``load_model(spec, backend="openai")``: parse the spec; knobs from keywords, else the environment.

    ``concurrency`` defaults to ``batch_size``; ``timeout`` and ``max_retries``
    to ``$EVALKIT_HTTP_TIMEOUT`` and ``$EVALKIT_HTTP_RETRIES`` (so the CLI can set
    them without changing the model name, which is part of the cache key);
    ``api_key_env`` to ``$EVALKIT_API_KEY_ENV``, else OPENAI_API_KEY.
    """
    endpoint = parse_model_spec(spec)
    kw.setdefault("concurrency", batch_size)
    kw.setdefault("api_key_env", os.environ.get("EVALKIT_API_KEY_ENV") or "OPENAI_API_KEY")
    for key, env, cast in (("timeout", "EVALKIT_HTTP_TIMEOUT", float), ("max_retries", "EVALKIT_HTTP_RETRIES", int)):
        if key not in kw and os.environ.get(env):
            try:
                kw[key] = cast(os.environ[env])
            except ValueError:
                raise EvalkitError(f"${env} must be a number, got {os.environ[env]!r}") from None
    return OpenAIModel(endpoint.base_url, endpoint.model, chat=endpoint.chat, score_prefix=endpoint.score_prefix, **kw)
