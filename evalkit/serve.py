"""``evalkit serve``: a small OpenAI-compatible HTTP server over any evalkit model.

Why it exists: a model loaded once behind HTTP can be evaluated by anything
that speaks the OpenAI protocol (evalkit's own ``--backend openai``,
lm-evaluation-harness's ``local-completions``, scripts), and evalkit's HTTP
adapter can be tested against a server whose every number is known in-process.

Routes: ``GET /v1/models``; ``POST /v1/completions`` (prompt or list of
prompts, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``,
``echo`` with ``logprobs``); ``POST /v1/chat/completions`` (rendered with the
model's chat template exactly as ``evalkit run --apply-chat-template`` renders
it, see :mod:`evalkit.tasks.chat`; vLLM's ``add_generation_prompt`` and
``continue_final_message`` choose between a new assistant reply, the default,
and continuing the conversation's final message; generation also stops at the
template's end-of-turn marker). Generation is evalkit's decoding loop, so the vLLM-style extra
fields (``top_k``, ``min_p``, ``typical_p``, ``repetition_penalty``,
``no_repeat_ngram_size``, ``num_beams``, ``length_penalty``,
``early_stopping``, ``min_tokens``, ``ignore_eos``) mean exactly what they mean
in a DecodingConfig. The prompt's log-probabilities (``echo`` + ``logprobs``)
come from the model's ``Backend.forward`` run over the prompt in chunks through
the KV cache, so no ``[positions x vocab]`` tensor larger than one chunk exists.

Requests are served by a thread per connection; one lock serialises the model.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.base import Backend, LanguageModel
from evalkit.models.logprobs import prompt_logprobs
from evalkit.requests import Generate, Response
from evalkit.tasks.chat import ChatTemplate, resolve_template

_MAX_TOP_LOGPROBS = 20
_CHAT_MAX_TOKENS = 256  # chat requests without max_tokens


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and one line for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelService:
    """The HTTP-free part of the server: request bodies in, response bodies out (OpenAI's shapes)."""

    def __init__(self, model: LanguageModel, name: str | None = None) -> None:
        self.model = model
        self.name = name or model.name
        self.created = int(time.time())
        self._lock = threading.Lock()
        self.template, self._template_error = _own_template(model, self.name)
        self.end_of_turn = self.template.end_of_turn() if self.template else None

    def models(self) -> dict:
        entry = {"id": self.name, "object": "model", "created": self.created, "owned_by": "evalkit",
                 "max_model_len": self.model.max_length}
        return {"object": "list", "data": [entry]}

    def completions(self, body: dict) -> dict:
        self._check_model(body)
        prompts = body.get("prompt", "")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("prompt must be a string or a list of strings (token-id prompts are not supported)")
        max_tokens = _int(body, "max_tokens", 16, low=0)
        echo = bool(body.get("echo", False))
        top = body.get("logprobs")
        if top is not None:
            top = _int(body, "logprobs", 0, low=0, high=_MAX_TOP_LOGPROBS)
        decoding = decoding_from_request(body)
        stops = _stops(body)
        with self._lock, torch.inference_mode():  # the tokenizer is shared too: all model work under the lock
            generated = self._generate(prompts, stops, max_tokens, decoding)
            scored = [self._echo(p, top) if echo and top is not None else None for p in prompts]
            prompt_tokens = sum(len(self._encode(p)) for p in prompts)
        choices, completion_tokens = [], 0
        for i, prompt in enumerate(prompts):
            for response in _sequences(generated[i], decoding.num_return_sequences):
                completion_tokens += len(response.token_ids)
                logprobs = None
                if top is not None:
                    logprobs = _join_logprobs(scored[i], self._generated_logprobs(response))
                choice = {"index": len(choices), "text": (prompt if echo else "") + response.text, "logprobs": logprobs}
                choices.append({**choice, **self._finish(response, stops)})
        return self._envelope("text_completion", choices, prompt_tokens, completion_tokens)

    def chat(self, body: dict) -> dict:
        self._check_model(body)
        prompt = self._chat_prompt(body)
        given = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _CHAT_MAX_TOKENS if given is None else _int({"max_tokens": given}, "max_tokens", 0, low=1)
        decoding = decoding_from_request(body)
        stops = _stops(body)
        if self.end_of_turn and self.end_of_turn not in stops:  # a reply ends with its turn, as the model was trained
            stops += (self.end_of_turn,)
        with self._lock, torch.inference_mode():
            response = self._generate([prompt], stops, max_tokens, decoding)[0]
            prompt_tokens = len(self._encode(prompt))
        choices = [
            {"index": j, "message": {"role": "assistant", "content": r.text}, "logprobs": None, **self._finish(r, stops)}
            for j, r in enumerate(_sequences(response, decoding.num_return_sequences))
        ]
        completion_tokens = sum(len(c.token_ids) for c in _sequences(response, decoding.num_return_sequences))
        return self._envelope("chat.completion", choices, prompt_tokens, completion_tokens)

    # ------------------------------------------------------------------ pieces

    def _check_model(self, body: dict) -> None:
        if body.get("stream"):
            raise BadRequest("stream=true is not supported by evalkit serve; ask without streaming")
        asked = body.get("model")
        if asked not in (None, "", self.name):
            raise BadRequest(f"model {asked!r} is not served here; this server serves {self.name!r}", status=404)

    def _generate(self, prompts: list[str], stops: tuple[str, ...], max_tokens: int, decoding: DecodingConfig) -> list[Response]:
        if max_tokens == 0:
            return [Response(finish_reason="length") for _ in prompts]
        requests = [Generate(prompt=p, stop=stops, max_new_tokens=max_tokens) for p in prompts]
        try:
            return self.model.generate(requests, decoding)
        except EvalkitError as err:
            raise BadRequest(str(err)) from None

    def _encode(self, text: str) -> list[int]:
        encode = getattr(self.model, "encode", None) or self.model.tokenizer.encode
        return list(encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self.model.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _echo(self, prompt: str, top: int) -> dict:
        """OpenAI's logprobs block for the prompt's own tokens (the first has none: nothing precedes it)."""
        ids = self._encode(prompt)
        if not ids:
            raise BadRequest("the prompt has no tokens; send some text")
        if not isinstance(self.model, Backend):
            raise BadRequest(f"echo with logprobs needs a white-box model; {self.name} has no Backend interface")
        if len(ids) > self.model.max_length:
            raise BadRequest(f"the prompt has {len(ids)} tokens, more than the model's context of {self.model.max_length}")
        logprobs, tops = prompt_logprobs(self.model, ids, top)
        return {
            "tokens": token_pieces(self._decode, ids),
            "token_logprobs": logprobs,
            "top_logprobs": [None if t is None else {self._decode([k]): v for k, v in t.items()} for t in tops],
        }

    def _generated_logprobs(self, response: Response) -> dict:
        """The generated tokens' own log-probabilities; no alternatives (the decoding loop keeps none)."""
        ids = response.token_ids
        return {"tokens": token_pieces(self._decode, ids) if ids else [], "token_logprobs": list(response.token_logprobs),
                "top_logprobs": [None] * len(ids)}

    def _finish(self, response: Response, stops: tuple[str, ...]) -> dict:
        """OpenAI's finish_reason plus vLLM's stop_reason (the stop string, or null for EOS)."""
        if response.finish_reason == "length":
            return {"finish_reason": "length", "stop_reason": None}
        if response.finish_reason == "stop":
            tail = self._decode(response.token_ids)[len(response.text):]
            found = [s for s in stops if s in tail]
            return {"finish_reason": "stop", "stop_reason": min(found, key=tail.find) if found else stops[0]}
        return {"finish_reason": "stop", "stop_reason": None}

    def _chat_prompt(self, body: dict) -> str:
        """The conversation as the model sees it: a new assistant reply, or (``continue_final_message``) the
        final message left open, rendered by the same :class:`ChatTemplate` code as evaluation."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        clean = [{"role": str(m.get("role", "user")), "content": _content_text(m.get("content"))} for m in messages]
        continue_final = _flag(body, "continue_final_message", False)
        add_generation = _flag(body, "add_generation_prompt", not continue_final)
        if continue_final == add_generation:
            raise BadRequest(
                "set exactly one of add_generation_prompt (a new assistant reply, the default) and "
                "continue_final_message (continue the last message)"
            )
        if self._template_error:
            raise BadRequest(self._template_error)
        if self.template is None:  # a model without a chat template: the turns' texts, one per line
            return "\n".join(m["content"] for m in clean)
        try:
            return self.template.render(clean, add_generation_prompt=add_generation)
        except (EvalkitError, ValueError) as err:  # ValueError: transformers cannot find the message to continue
            raise BadRequest(str(err).splitlines()[0]) from None

    def _envelope(self, kind: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def decoding_from_request(body: dict) -> DecodingConfig:
    """The DecodingConfig an OpenAI (+ vLLM extras) request body asks for.

    OpenAI's "off" values (top_p 1, penalties 0, top_k -1 or 0) mean unset, and
    sampling fields are dropped under greedy decoding (they cannot change its
    output, and clients send top_p=1 by habit), so ordinary client requests
    validate.
    """
    temperature = _number(body, "temperature", 1.0)
    values: dict[str, Any] = {"temperature": temperature, "seed": _int(body, "seed", 0),
                              "num_return_sequences": _int(body, "n", 1, low=1)}
    off = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repetition_penalty": 1.0,
           "frequency_penalty": 0.0, "presence_penalty": 0.0, "no_repeat_ngram_size": 0}
    for name, unset in off.items():
        value = body.get(name)
        if value is None or value == unset or (name == "top_k" and value == -1):
            continue
        if name in ("top_p", "top_k", "min_p", "typical_p") and temperature == 0:
            continue
        values[name] = value
    if body.get("min_tokens"):
        values["min_new_tokens"] = body["min_tokens"]
    if body.get("ignore_eos"):
        values["ignore_eos"] = True
    beams = body.get("num_beams") or (body.get("best_of") if body.get("use_beam_search") else None)
    if beams and beams > 1:
        values["num_beams"] = beams
        for name in ("length_penalty", "early_stopping"):
            if body.get(name) is not None:
                values[name] = body[name]
    try:
        return DecodingConfig(**values)
    except (EvalkitError, TypeError) as err:
        raise BadRequest(str(err)) from None


def token_pieces(decode: Any, ids: list[int]) -> list[str]:
    """Each token's text, so that the pieces join to ``decode(ids)``: OpenAI's ``logprobs.tokens``.

    A token's text is how much it lengthens the decoded text of a few tokens
    before it (linear time, unlike decoding every prefix). A token that ends a
    multi-byte character split across tokens gets the character; its partial
    predecessors get the replacement character the decoder shows for them.
    """
    full = decode(ids)
    pieces, position = [], 0
    for i in range(len(ids)):
        lo = max(0, i - 6)
        grown = len(decode(ids[lo:i + 1])) - len(decode(ids[lo:i])) if i else len(decode(ids[:1]))
        pieces.append(full[position:position + max(grown, 0)])
        position += max(grown, 0)
    if position < len(full):  # whatever the windows missed belongs to the last token
        pieces[-1] += full[position:]
    return pieces


def _join_logprobs(echo: dict | None, generated: dict) -> dict:
    """The echoed prompt's logprobs block followed by the generated tokens'; offsets index the choice's text."""
    parts = [p for p in (echo, generated) if p is not None]
    tokens = [t for p in parts for t in p["tokens"]]
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [x for p in parts for x in p["token_logprobs"]],
        "top_logprobs": [x for p in parts for x in p["top_logprobs"]],
        "text_offset": offsets,
    }


def _sequences(response: Response, n: int) -> list[Response]:
    return [response, *response.alternatives][:n]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise BadRequest("each message needs text content")


def _own_template(model: LanguageModel, name: str) -> tuple[ChatTemplate | None, str | None]:
    """The served model's own chat template, resolved as ``--apply-chat-template`` resolves it, or the reason it
    cannot be used (chat requests then fail with it); (None, None) when the tokenizer has no template."""
    tokenizer = getattr(model, "tokenizer", None)
    if not getattr(tokenizer, "chat_template", None):
        return None, None
    try:
        return resolve_template(True, tokenizer, name), None
    except EvalkitError as err:
        return None, str(err)


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false, got {value!r}")
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop must be a string or a list of strings")
    return tuple(s for s in stops if s)


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadRequest(f"{key} must be a number, got {value!r}")
    return float(value)


def _int(body: dict, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low) or (
        high is not None and value > high
    ):
        bounds = f" in [{low}, {high}]" if high is not None else f" >= {low}" if low is not None else ""
        raise BadRequest(f"{key} must be an integer{bounds}, got {value!r}")
    return value


# ---------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    service: ModelService
    api_key: str | None = None

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._answer(lambda _: self.service.models(), read_body=False)
        elif self.path.rstrip("/") in ("", "/health"):
            self._send(200, {"status": "ok"})
        else:
            self._send(404, _error(f"no route GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        routes = {"/v1/completions": self.service.completions, "/v1/chat/completions": self.service.chat}
        route = routes.get(self.path.rstrip("/"))
        if route is None:
            self._discard_body()
            self._send(404, _error(f"no route POST {self.path}", "not_found"))
        else:
            self._answer(route, read_body=True)

    def _answer(self, route: Any, *, read_body: bool) -> None:
        try:
            body = self._read_json() if read_body else {}
            if not self._authorized():
                raise BadRequest("missing or wrong API key (Authorization: Bearer ...)", status=401)
            self._send(200, route(body))
        except BadRequest as err:
            kind = {401: "authentication_error", 404: "not_found"}.get(err.status, "invalid_request_error")
            self._send(err.status, _error(str(err), kind))
        except Exception as err:
            self._send(500, _error(f"{type(err).__name__}: {err}".splitlines()[0], "server_error"))

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def _discard_body(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if not self.api_key:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request (method, path, status), never headers: the API key stays out of logs."""
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def make_server(service: ModelService, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> ThreadingHTTPServer:
    """A threading HTTP server bound to ``host:port`` (port 0: any free port; see ``server.server_port``)."""
    handler = type("Handler", (_Handler,), {"service": service, "api_key": api_key})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(
    model_name: str,
    *,
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    served_name: str | None = None,
    api_key_env: str | None = None,
) -> None:
    """Load ``model_name`` through the registry and serve it until interrupted.

    With ``api_key_env``, requests must carry ``Authorization: Bearer $<that variable>``.
    ``backend`` auto serves on the native engine where it runs the model, else hf.
    """
    from evalkit.models.registry import load_model, resolve_backend

    if backend == "openai":
        raise EvalkitError("evalkit serve needs a local model: use --backend hf or native")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise EvalkitError(f"--api-key-env {api_key_env}: the variable is not set; export it or drop the flag")
    backend, _ = resolve_backend(model_name, backend, dtype)  # auto: chosen and said here
    model = load_model(model_name, backend=backend, device=device, dtype=dtype, batch_size=batch_size)
    service = ModelService(model, served_name or model_name)
    try:
        server = make_server(service, host, port, api_key)
    except OSError as err:
        raise EvalkitError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from None
    print(f"evalkit serve: {service.name} ({backend}) on http://{host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C is how a foreground server is meant to stop
        pass
    finally:
        server.server_close()
