"""`evalkit serve` is a real OpenAI-compatible server: the HTTP adapter talking to it on loopback gets
the same loglikelihoods and generations as the in-process model, and it speaks the protocol's errors.

One server process (the real SmolLM2 through the HF adapter) serves the whole module; the
in-process reference is the session's `smollm2` fixture (the same weights, same adapter).
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest
import requests

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.openai import OpenAIModel
from evalkit.requests import Generate, RollingLoglikelihood
from evalkit.serve import decoding_from_request, token_pieces

KEY_ENV = "EVALKIT_SERVE_TEST_KEY"
KEY = f"sk-serve-{uuid.uuid4().hex}"
TOLERANCE = 1e-3  # nats per request: chunked KV-cache forward vs the adapter's one full forward, float32


@pytest.fixture(scope="module")
def served(tmp_path_factory, free_port, server_process):
    port = free_port()
    argv = [sys.executable, "-m", "evalkit", "serve", "--model", "smollm2-135m", "--port", str(port),
            "--api-key-env", KEY_ENV, "--batch-size", "4"]
    server = server_process(argv, port, tmp_path_factory.mktemp("serve") / "server.log", env={KEY_ENV: KEY}, api_key=KEY)
    server.start()
    os.environ[KEY_ENV] = KEY  # the adapter reads its key from the environment, as a user's would
    yield server
    os.environ.pop(KEY_ENV, None)
    server.stop()
    assert KEY not in server.log(), "the server must never log the API key"


@pytest.fixture(scope="module")
def remote(served):
    return OpenAIModel(served.url, "smollm2-135m", api_key_env=KEY_ENV, concurrency=2)


@pytest.mark.server
def test_models_route_identifies_evalkit(remote, smollm2):
    assert remote.server == "evalkit"
    assert remote.max_length == smollm2.max_length
    assert remote.ignored_fields(DecodingConfig(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.2)) == []


@pytest.mark.server
def test_loglikelihood_matches_in_process(remote, smollm2, task_requests):
    requests_ = task_requests("hellaswag", limit=3)
    local, served = smollm2.loglikelihood(requests_), remote.loglikelihood(requests_)
    for want, got in zip(local, served):
        assert got.logprob == pytest.approx(want.logprob, abs=TOLERANCE)
        assert len(got.token_logprobs) == len(want.token_ids)
        assert got.is_greedy == want.is_greedy


@pytest.mark.server
def test_rolling_loglikelihood_matches_with_the_prefix_token(served, smollm2, task_requests):
    """With the prefix token's text as score_prefix, every token is conditioned as lm-eval conditions it."""
    prefix = smollm2.tokenizer.decode([smollm2.prefix_token_id])
    remote = OpenAIModel(served.url, api_key_env=KEY_ENV, score_prefix=prefix)
    docs = [RollingLoglikelihood(r.text) for r in task_requests("demo-lm", limit=2)]
    for want, got in zip(smollm2.loglikelihood_rolling(docs), remote.loglikelihood_rolling(docs)):
        assert len(got.token_logprobs) == len(want.token_logprobs)
        assert got.logprob == pytest.approx(want.logprob, abs=TOLERANCE)


@pytest.mark.server
def test_greedy_generation_matches_in_process(remote, smollm2, task_requests):
    prompts = task_requests("demo-arith", limit=2)
    greedy = DecodingConfig()
    served = remote.generate(prompts, greedy)
    for request, got in zip(prompts, served):
        want = smollm2.generate([request], greedy)[0]
        assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
        assert got.timing.generated_tokens == len(want.token_ids)


@pytest.mark.server
def test_seeded_sampling_and_n_match_in_process(remote, smollm2):
    """The server rebuilds the same Generate and DecodingConfig, so evalkit's per-request streams agree."""
    request = Generate("Once upon a time", stop=("\n",), max_new_tokens=12)
    config = DecodingConfig(temperature=0.8, top_p=0.9, num_return_sequences=2, seed=7)
    got, want = remote.generate([request], config)[0], smollm2.generate([request], config)[0]
    assert [got.text] + [a.text for a in got.alternatives] == [want.text] + [a.text for a in want.alternatives]
    assert remote.ignored_decoding_fields[config.label] == []


@pytest.mark.server
def test_chat_endpoint_applies_the_chat_template(served, smollm2):
    chat = OpenAIModel(served.url, "smollm2-135m", chat=True, api_key_env=KEY_ENV)
    assert chat.name.endswith("::chat")
    got = chat.generate([Generate("What is 2+2?", max_new_tokens=10)], DecodingConfig())[0]
    templated = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    want = smollm2.generate([Generate(templated, max_new_tokens=10)], DecodingConfig())[0]
    assert got.text == want.text and got.text


@pytest.mark.server
def test_chat_continues_a_final_assistant_message(served, smollm2):
    """vLLM's continue_final_message: the reply continues the assistant prefix (nothing prepended), exactly as the
    model continues the local ChatTemplate rendering without a generation prompt; the adapter asks for it itself."""
    from evalkit.tasks.chat import resolve_template

    messages = [{"role": "system", "content": "You are a careful calculator."},
                {"role": "user", "content": "What is 12 + 30?"},
                {"role": "assistant", "content": "12 + 30 ="}]
    template = resolve_template(True, smollm2.tokenizer, "smollm2-135m")
    prompt = template.render(messages, add_generation_prompt=False)
    assert prompt.endswith("<|im_start|>assistant\n12 + 30 =")
    want = smollm2.generate([Generate(prompt, stop=(template.end_of_turn(),), max_new_tokens=8)], DecodingConfig())[0]
    assert want.text

    body = {"model": "smollm2-135m", "messages": messages, "max_tokens": 8, "temperature": 0,
            "continue_final_message": True, "add_generation_prompt": False}
    reply = requests.post(f"{served.url}/chat/completions", json=body, headers=served.headers, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == want.text
    assert reply.json()["usage"]["prompt_tokens"] == len(smollm2.encode(prompt))

    chat = OpenAIModel(served.url, "smollm2-135m", chat=True, api_key_env=KEY_ENV)
    turns = tuple((m["role"], m["content"]) for m in messages)
    got = chat.generate([Generate(prompt, max_new_tokens=8, messages=turns)], DecodingConfig())[0]
    assert got.text == want.text

    both = requests.post(f"{served.url}/chat/completions", json={**body, "add_generation_prompt": True},
                         headers=served.headers, timeout=60)
    assert both.status_code == 400 and "exactly one of" in both.json()["error"]["message"]


@pytest.mark.integration
def test_chat_stops_at_the_end_of_turn_marker(smollm2, monkeypatch):
    """The template's end-of-turn marker is a stop string of every chat reply, next to the request's own stops.

    (SmolLM2's marker is also its EOS token, so the reply would end there anyway; what is checked is that the
    decoding loop is asked to stop at it, as a model whose marker is not EOS needs.)
    """
    from evalkit.serve import ModelService

    service = ModelService(smollm2, "smollm2-135m")
    assert service.template.source == "tokenizer" and service.end_of_turn == "<|im_end|>"
    asked: list[Generate] = []
    generate = smollm2.generate
    monkeypatch.setattr(smollm2, "generate", lambda requests_, decoding: asked.extend(requests_) or generate(requests_, decoding))
    messages = [{"role": "user", "content": "Say hello."}]
    reply = service.chat({"messages": messages, "max_tokens": 12, "temperature": 0, "stop": ["\n\n"]})
    assert [r.stop for r in asked] == [("\n\n", "<|im_end|>")]
    assert asked[0].prompt == service.template.render(messages, add_generation_prompt=True)
    want = generate([asked[0]], DecodingConfig())[0]
    assert reply["choices"][0]["message"]["content"] == want.text


@pytest.mark.server
def test_protocol_errors_are_one_line(served, remote, monkeypatch):
    headers = {"Authorization": f"Bearer {KEY}"}
    reply = requests.post(f"{served.url}/completions", json={"prompt": "x", "stream": True}, headers=headers, timeout=60)
    assert reply.status_code == 400 and "stream" in reply.json()["error"]["message"]
    reply = requests.post(f"{served.url}/completions", json={"prompt": "x", "model": "gpt-4"}, headers=headers, timeout=60)
    assert reply.status_code == 404 and "smollm2-135m" in reply.json()["error"]["message"]
    reply = requests.post(f"{served.url}/completions", json={"prompt": "x", "temperature": 0, "n": 2}, headers=headers,
                          timeout=60)
    assert reply.status_code == 400 and "greedy decoding returns one sequence" in reply.json()["error"]["message"]
    with pytest.raises(EvalkitError, match=r"answered 400: a prompt of .* exceeds the model's context"):
        remote.generate([Generate("x", max_new_tokens=remote.max_length + 1)], DecodingConfig())
    with pytest.raises(EvalkitError, match="does not serve 'gpt-4'"):
        OpenAIModel(served.url, "gpt-4", api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(EvalkitError) as error:
        OpenAIModel(served.url, api_key_env=KEY_ENV, max_retries=0)
    assert "401" in str(error.value) and KEY_ENV in str(error.value) and "sk-wrong" not in str(error.value)


@pytest.mark.unit
def test_request_fields_map_onto_decoding_config():
    """OpenAI's "off" values are unset; vLLM-style extras reach the matching DecodingConfig fields."""
    assert decoding_from_request({"temperature": 0, "top_p": 1, "top_k": -1, "presence_penalty": 0}) == DecodingConfig()
    assert decoding_from_request({"temperature": 0, "top_p": 0.5}) == DecodingConfig()  # greedy ignores top_p
    body = {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 3,
            "n": 2, "min_tokens": 2, "frequency_penalty": 0.5}
    assert decoding_from_request(body) == DecodingConfig(
        temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1, seed=3, num_return_sequences=2,
        min_new_tokens=2, frequency_penalty=0.5,
    )
    beams = {"temperature": 0, "num_beams": 4, "length_penalty": 0.8, "early_stopping": True, "n": 2}
    assert decoding_from_request(beams) == DecodingConfig(num_beams=4, length_penalty=0.8, early_stopping=True,
                                                          num_return_sequences=2)


@pytest.mark.integration
def test_token_pieces_join_to_the_text(smollm2):
    tokenizer = smollm2.tokenizer
    text = "Größe: 東京 — naïve café 🎉 done."
    ids = tokenizer.encode(text)

    def decode(x):
        return tokenizer.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pieces = token_pieces(decode, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == decode(ids) == text
