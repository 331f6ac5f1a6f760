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

Requests run on a thread pool (``concurrency``, the CLI's ``--batch-size``)
through ``openai_transport.Transport``: timeouts, retries (urllib3's, honouring
``Retry-After``) and the API key, read from an environment variable
(``OPENAI_API_KEY`` unless ``api_key_env`` or ``$EVALKIT_API_KEY_ENV`` names
another) into a header and nowhere else.

A server honours only some of the DecodingConfig fields (``openai_capabilities``
says which, per server kind); the rest are listed by
:meth:`OpenAIModel.ignored_fields`, recorded per strategy label in
``ignored_decoding_fields`` and logged once per strategy.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.stops import cut_text
from evalkit.errors import EvalkitError
from evalkit.models.openai_capabilities import check_echo_alignment, check_kind_name, server_kind, unsupported
from evalkit.models.openai_transport import RouteNotFound, Transport
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood, Timing

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_LENGTH = 2048  # when neither the caller nor /v1/models states the context length


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
        check_kind_name(server)
        self._http = Transport(base_url, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                               backoff=backoff, max_backoff=max_backoff, pool_size=concurrency)
        self.base_url = self._http.base_url
        self.chat = chat
        self.concurrency = concurrency
        self.score_prefix = score_prefix
        self._echo_checked = False
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
        self.kind = server_kind(server, entry.get("owned_by"))
        self.server = self.kind.name
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
        return self.kind.ignored_fields(decoding)

    # ------------------------------------------------------------------ scoring

    def _score(self, context: str, continuation: str, first_scored: int) -> Response:
        """Log-probabilities of the continuation's tokens, from one echo call on prefix + context + continuation.

        ``first_scored`` is 1 for rolling documents: their first token may get
        no log-probability (nothing before it), which is then not an error.
        """
        context = self.score_prefix + context
        prompt = context + continuation
        payload = {"model": self.model, "prompt": prompt, "max_tokens": self.kind.echo_max_tokens,
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
            def echoed(context: str, continuation: str) -> list[float]:
                return self._score(context, continuation, first_scored=0).token_logprobs

            check_echo_alignment(self._post, echoed, base_url=self.base_url, model=self.model, score_prefix=self.score_prefix)
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
        payload.update(self.kind.decoding_parameters(decoding))
        if stops:
            payload["stop"] = stops[:self.kind.max_stops]  # OpenAI takes 4; the rest are cut here
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

    # ------------------------------------------------------------------ calls

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

    def _probe(self) -> list[dict]:
        """``/v1/models``: the served models (empty when the server has no such route)."""
        try:
            data = self._http.get("/models")
        except RouteNotFound:
            return []
        return [m for m in data.get("data") or [] if isinstance(m, dict) and m.get("id")]

    def _post(self, path: str, payload: dict) -> dict:
        try:
            return self._http.post(path, payload)
        except RouteNotFound:
            what = "/v1/chat/completions" if path == "/chat/completions" else "/v1/completions"
            raise self._unsupported(what) from None

    def _unsupported(self, feature: str) -> EvalkitError:
        return unsupported(self.base_url, self.model, feature)


def _chat_messages(request: Generate) -> list[dict[str, str]]:
    """The turns a chat-templated request was rendered from; a plain prompt becomes one user message."""
    if request.messages:
        return [{"role": role, "content": content} for role, content in request.messages]
    return [{"role": "user", "content": request.prompt}]


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
