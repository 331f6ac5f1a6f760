"""The response cache and atomic result files (no model needed)."""

import json

import pytest

from evalkit.cache import ResponseCache, response_key
from evalkit.decoding.config import DecodingConfig
from evalkit.requests import Generate, Loglikelihood, Response, Timing
from evalkit.results import atomic_write_text

pytestmark = pytest.mark.unit


def test_generation_keys_depend_on_decoding_but_scoring_keys_do_not():
    gen = Generate("Q: 2+2?\nA:", stop=("\n",), max_new_tokens=8)
    greedy, sampled = DecodingConfig(), DecodingConfig(name="t", temperature=0.7)
    assert response_key("m", gen, greedy) != response_key("m", gen, sampled)
    assert response_key("m", gen, greedy) != response_key("other-model", gen, greedy)
    ll = Loglikelihood("ctx", " cont")
    assert response_key("m", ll, greedy) == response_key("m", ll, sampled) == response_key("m", ll, None)


def test_labels_do_not_split_the_cache():
    gen = Generate("x")
    assert response_key("m", gen, DecodingConfig(name="a")) == response_key("m", gen, DecodingConfig(name="b"))


def test_cache_round_trip_survives_reopening(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    response = Response(
        text="4", token_ids=[19], token_logprobs=[-0.5], finish_reason="stop", timing=Timing(0.1, 0.2, 5, 1),
        alternatives=[Response(text="5")],
    )
    cache.put_many({"k1": response})
    cache.close()
    reopened = ResponseCache(path)
    got = reopened.get_many(["k1", "missing"])
    assert list(got) == ["k1"]
    assert got["k1"] == response
    reopened.close()


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out" / "results.json"
    atomic_write_text(target, json.dumps({"a": 1}))
    atomic_write_text(target, json.dumps({"a": 2}))
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]
