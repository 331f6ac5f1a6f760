"""Progress: the plain reporter's throttling, steps, per-request progress in the runner and adapters, Ctrl-C keeping finished work."""

from __future__ import annotations

import io

import pytest

from evalkit.cache import ResponseCache, response_key
from evalkit.decoding.config import DecodingConfig
from evalkit.progress import PlainProgress, current, reporting, step
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood
from evalkit.runner import GridSettings, _respond, chunk_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(clock: FakeClock) -> tuple[PlainProgress, io.StringIO]:
    stream = io.StringIO()
    return PlainProgress(stream, every_s=10.0, step=0.1, min_gap_s=1.0, clock=clock), stream


@pytest.mark.unit
def test_plain_progress_prints_every_tenth_or_ten_seconds_never_twice_within_a_second():
    clock = FakeClock()
    progress, stream = plain(clock)
    progress.start("gsm8k [greedy]", 50)
    for at, amount in [
        (0.5, 1),   # 2%, half a second: nothing
        (2.0, 4),   # 10%: a line
        (2.5, 1),   # 12%: nothing
        (2.6, 5),   # 22%, a second 10% step, but 0.6 s after the last line: nothing
        (12.0, 1),  # 10 s since the last line: a line
        (13.0, 38),  # the total: left to finish()
    ]:
        clock.now = at
        progress.advance(amount)
    clock.now = 25.0
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "gsm8k [greedy] 0/50 (0%)",
        "gsm8k [greedy] 5/50 (10%) 2.50 it/s ETA 0:18",
        "gsm8k [greedy] 12/50 (24%) 1.00 it/s ETA 0:38",
        "gsm8k [greedy] 50/50 (100%) 2.00 it/s in 0:25",
    ]


@pytest.mark.unit
def test_plain_progress_rate_leaves_out_cached_items():
    clock = FakeClock()
    progress, stream = plain(clock)
    progress.start("wikitext2 [loglikelihood]", 10)
    progress.skip(6)  # found in the cache at once
    clock.now = 10.0
    progress.advance(2)
    assert stream.getvalue().splitlines()[-1] == "wikitext2 [loglikelihood] 8/10 (80%) 0.20 it/s ETA 0:10"


@pytest.mark.unit
def test_steps_say_what_runs_and_how_long_only_to_an_installed_reporter(capsys):
    with step("converting model.gguf"):  # nothing installed: evaluate() in a training loop stays silent
        pass
    assert capsys.readouterr().err == ""
    stream = io.StringIO()
    with reporting(PlainProgress(stream)) as reporter:
        assert current() is reporter
        with step("converting model.gguf"):
            pass
        with step("bootstrap sys: bleu", quiet_below=60):  # quick: says nothing
            pass
        with pytest.raises(KeyboardInterrupt), step("loading model"):
            raise KeyboardInterrupt
    lines = stream.getvalue().splitlines()
    assert lines[0] == "converting model.gguf ..."
    assert lines[1].startswith("converting model.gguf: done in ") and lines[1].endswith(" s")
    assert lines[2:] == ["loading model ..."]  # no done line for a step that failed
    assert current() is not reporter


class FakeModel:
    """Answers loglikelihood requests one by one; raises KeyboardInterrupt before answer number ``stop_at``."""

    name, tokenizer, max_length = "fake", None, 100

    def __init__(self, stop_at: int | None = None, with_on_done: bool = True) -> None:
        self.stop_at, self.answered = stop_at, 0
        if not with_on_done:
            self.loglikelihood = self._plain

    def loglikelihood(self, requests, on_done=None):
        out = []
        for j, request in enumerate(requests):
            if self.answered == self.stop_at:
                raise KeyboardInterrupt
            self.answered += 1
            out.append(Response(logprob=-float(len(request.continuation))))
            if on_done is not None:
                on_done({j: out[-1]})
        return out

    def _plain(self, requests):
        return [Response(logprob=-float(len(r.continuation))) for r in requests]


class Instance:
    def __init__(self, requests):
        self.requests = requests


def instances(n: int, per_instance: int) -> list[Instance]:
    return [Instance([Loglikelihood(f"q{i}", " " + "a" * (j + 1)) for j in range(per_instance)]) for i in range(n)]


@pytest.mark.unit
def test_ctrl_c_mid_chunk_keeps_every_reported_response(tmp_path):
    items = instances(10, 2)  # 20 requests: one chunk
    cache = ResponseCache(tmp_path / "responses.sqlite")
    reported = []
    with pytest.raises(KeyboardInterrupt):
        _respond(FakeModel(stop_at=7), items, None, GridSettings(batch_size=8), cache, "fake", reported.append)
    keys = [response_key("fake", r, None) for item in items for r in item.requests]
    cached = cache.get_many(keys)
    assert len(cached) == 7  # every request answered before the interrupt, not a whole chunk lost
    assert sum(reported) * 2 <= len(cached)  # progress (in items of 2 requests) never ran ahead of the cache
    assert reported == [0.0] + [0.5] * 7  # nothing cached yet, then half an item per request

    resumed, efficiency = _respond(FakeModel(), items, None, GridSettings(batch_size=8), cache, "fake", lambda _: None)
    assert efficiency.cached == 7 and [r[1].logprob for r in resumed] == [-3.0] * 10
    cache.close()


@pytest.mark.unit
def test_adapters_without_on_done_are_reported_and_cached_per_chunk(tmp_path):
    model = FakeModel(with_on_done=False)
    calls: list[int] = []
    plain_call = model.loglikelihood
    model.loglikelihood = lambda requests: calls.append(len(requests)) or plain_call(requests)
    reported: list[float] = []
    cache = ResponseCache(tmp_path / "responses.sqlite")
    responses, _ = _respond(model, instances(40, 1), None, GridSettings(batch_size=1), cache, "fake", reported.append)
    assert len(responses) == 40 and calls == [32, 8] and reported == [0.0, 32.0, 8.0]  # none cached, then one update per chunk
    cache.close()


@pytest.mark.unit
def test_chunks_stay_large_for_adapters_that_report_each_request():
    assert chunk_size(8, per_request=False) == 32  # reported and cached per chunk: small
    assert chunk_size(8, per_request=True) == 128  # continuous batching and sorting over many requests


# ---------------------------------------------------------------- the adapters' on_done


def _check_on_done(method, requests, *args) -> tuple[list[Response], list[list[int]]]:
    """Every request handed over once, as the very response returned; also the indices of each hand-over."""
    seen: dict[int, Response] = {}
    batches: list[list[int]] = []

    def on_done(done):
        assert done and not set(done) & set(seen), f"requests reported twice: {set(done) & set(seen)}"
        seen.update(done)
        batches.append(sorted(done))

    out = method(requests, *args, on_done=on_done)
    assert sorted(seen) == list(range(len(requests)))
    assert all(seen[i] is out[i] for i in range(len(out)))  # the final response, not a draft
    return out, batches


TEXTS = ["The cat sat on the mat. " * 30, "A short one.", "Rain falls on the plain in Spain. " * 60]


@pytest.fixture(scope="module")
def native(smollm2_folder):
    from evalkit.models.native import load_native

    # 256-token windows, two per forward call: rolling documents are scored in groups of at least two windows
    return load_native(str(smollm2_folder), batch_size=2, name="smollm2-135m", max_length=256, token_budget=512)


@pytest.mark.integration
def test_native_engine_reports_each_request_as_it_finishes(native):
    pairs = [Loglikelihood("The capital of France is", c) for c in (" Paris", " London", " a city")]
    scored, _ = _check_on_done(native.loglikelihood, pairs)
    assert [r.logprob for r in scored] == pytest.approx([r.logprob for r in native.loglikelihood(pairs)], abs=1e-4)
    docs = [RollingLoglikelihood(t) for t in TEXTS]  # documents of about 1, 1 and 3 windows: two groups
    rolled, groups = _check_on_done(native.loglikelihood_rolling, docs)
    assert len(groups) > 1, groups  # documents finish group by group, not all at the end
    assert [r.logprob for r in rolled] == pytest.approx([r.logprob for r in native.loglikelihood_rolling(docs)], rel=1e-4)
    prompts = [Generate(prompt=p, max_new_tokens=n) for p, n in [("1 + 1 =", 2), ("The sky is", 6), ("Once upon", 4)]]
    greedy, finished = _check_on_done(native.generate, prompts, DecodingConfig())  # continuous batching: 3 requests, 2 rows
    assert finished[0] == [0]  # the 2-token answer is handed over before the others are done
    assert [r.text for r in greedy] == [r.text for r in native.generate(prompts, DecodingConfig())]
    _check_on_done(native.generate, prompts, DecodingConfig(temperature=1.0, top_k=5, seed=1))  # the shared loop


@pytest.mark.integration
def test_hf_adapter_reports_each_request_as_it_finishes(smollm2):
    pairs = [Loglikelihood("The capital of France is", c) for c in (" Paris", " London")]
    _check_on_done(smollm2.loglikelihood, pairs)
    docs = [RollingLoglikelihood(t) for t in TEXTS]
    rolled, _ = _check_on_done(smollm2.loglikelihood_rolling, docs)
    assert [r.logprob for r in rolled] == pytest.approx([r.logprob for r in smollm2.loglikelihood_rolling(docs)], rel=1e-4)
    _check_on_done(smollm2.generate, [Generate(prompt="1 + 1 =", max_new_tokens=2)], DecodingConfig())
