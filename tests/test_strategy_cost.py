"""The deterministic cost of decoding strategies: Efficiency's forward-pass counts, strategy rows starred on
quality vs cost, speculative rows against their base strategy, and results without the counts.

Every expected value is worked out by hand from the small inputs next to it.
"""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from evalkit.cache import ResponseCache
from evalkit.cli import comparison_tables
from evalkit.decoding.compare import base_strategy, is_speculative, strategy_rows
from evalkit.metrics.base import MetricResult
from evalkit.requests import Generate, Response, Timing
from evalkit.results import CellResult, Efficiency, RunResult
from evalkit.runner import GridSettings, _respond

pytestmark = pytest.mark.unit

# ----------------------------------------------------------------- Efficiency


def test_efficiency_times_computed_responses_and_counts_all_of_them():
    computed = Response(timing=Timing(prefill_s=0.5, decode_s=1.5, prompt_tokens=10, generated_tokens=20,
                                      forwards=20, forward_tokens=30, cost=20.0))
    cached = Response(timing=Timing(prefill_s=1.0, decode_s=1.0, prompt_tokens=6, generated_tokens=12,
                                    forwards=6, forward_tokens=21, draft_forwards=12, draft_tokens=12,
                                    drafted=12, accepted=9, cost=9.0))  # 6 + 12 draft forwards x 0.25
    old = Response(timing=Timing(decode_s=3.0, generated_tokens=8))  # a cache entry from before the counts
    eff = Efficiency.from_responses([computed], all_responses=[computed, cached, old], requests=3, cached=2)
    # wall clock: the computed response only
    assert (eff.prefill_s, eff.decode_s, eff.prompt_tokens, eff.generated_tokens) == (0.5, 1.5, 10, 20)
    assert eff.tokens_per_s == pytest.approx(10.0)  # 20 tokens / 2 s
    # counts: every response that has them (not the old one)
    assert (eff.counted_requests, eff.counted_generated_tokens) == (2, 32)
    assert (eff.forwards, eff.forward_tokens, eff.draft_forwards, eff.draft_tokens) == (26, 51, 12, 12)
    assert (eff.drafted, eff.accepted, eff.cost) == (12, 9, 29.0)
    out = json.loads(json.dumps(eff.to_dict()))
    assert out["cost_per_token"] == pytest.approx(0.90625)  # 29 / 32
    assert out["tokens_per_forward"] == pytest.approx(1.2307692)  # 32 / 26
    assert out["acceptance_rate"] == 0.75  # 9 / 12
    assert out["tokens_per_s"] == pytest.approx(10.0) and out["requests"] == 3 and out["cached"] == 2


def test_efficiency_counts_default_to_the_timed_responses():
    greedy = [Response(timing=Timing(decode_s=1.0, generated_tokens=5, forwards=5, cost=5.0)) for _ in range(2)]
    eff = Efficiency.from_responses(greedy).to_dict()
    assert (eff["counted_requests"], eff["forwards"], eff["cost"]) == (2, 10, 10.0)
    assert eff["cost_per_token"] == 1.0 and eff["tokens_per_forward"] == 1.0  # plain greedy: one forward per token
    assert eff["acceptance_rate"] is None  # nothing drafted
    beam = Efficiency.from_responses([Response(timing=Timing(generated_tokens=10, forwards=41, cost=41.0))]).to_dict()
    assert beam["cost_per_token"] == pytest.approx(4.1) and beam["tokens_per_forward"] == pytest.approx(10 / 41)


def test_efficiency_without_counts_has_no_derived_values():
    eff = Efficiency.from_responses([Response(timing=Timing(decode_s=2.0, generated_tokens=10))]).to_dict()
    assert eff["tokens_per_s"] == 5.0
    assert eff["counted_requests"] == 0 and eff["cost"] == 0.0
    assert eff["cost_per_token"] is None and eff["tokens_per_forward"] is None and eff["acceptance_rate"] is None
    assert Efficiency().to_dict()["cost_per_token"] is None  # an empty cell (another rank's share)


class CountingModel:
    """Generates 4 tokens per request in 2 forwards, 3 of 4 drafted tokens accepted (a speculative step)."""

    name, tokenizer, max_length = "counting", None, 100

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests, decoding):
        self.calls += len(requests)
        return [Response(text="abcd", timing=Timing(decode_s=0.25, prompt_tokens=3, generated_tokens=4, forwards=2,
                                                   forward_tokens=8, drafted=4, accepted=3, cost=2.0))
                for _ in requests]


class Instance:
    def __init__(self, requests):
        self.requests = requests


def test_a_cached_rerun_reports_the_same_counts(tmp_path):
    items = [Instance([Generate(f"q{i}")]) for i in range(3)]
    cache = ResponseCache(tmp_path / "responses.sqlite")
    model = CountingModel()
    _, fresh = _respond(model, items, None, GridSettings(batch_size=8), cache, "counting", lambda _: None)
    _, again = _respond(model, items, None, GridSettings(batch_size=8), cache, "counting", lambda _: None)
    cache.close()
    assert model.calls == 3  # the second run was answered from the cache
    assert (fresh.generated_tokens, fresh.decode_s) == (12, 0.75)
    assert (again.cached, again.generated_tokens, again.decode_s) == (3, 0, 0.0)  # no time spent now
    for eff in (fresh, again):
        assert (eff.counted_requests, eff.counted_generated_tokens, eff.forwards, eff.cost) == (3, 12, 6, 6.0)
        assert eff.to_dict()["cost_per_token"] == 0.5 and eff.to_dict()["acceptance_rate"] == 0.75


# ----------------------------------------------------------------- strategy rows

QUALITY = {  # label: (exact_match, cost_per_token, tokens_per_s, acceptance_rate, tokens_per_forward)
    "greedy": (0.50, 1.00, 20.0, None, 1.0),
    "greedy+lookup4": (0.50, 0.50, 30.0, 0.4, 2.0),
    "beam4": (0.60, 4.00, 50.0, None, 0.25),
    "temp0.7": (0.40, 1.00, 60.0, None, 1.0),
    "temp0.7+draft4": (0.40, 0.25, None, 0.6, 3.0),  # answered from the cache: no tokens/s this run
    "lookup8": (0.45, 0.80, 25.0, 0.3, 1.25),
}


def results_with(table: dict, counts: bool = True) -> dict:
    efficiency = {}
    for label, (_, cost, tps, acceptance, per_forward) in table.items():
        efficiency[label] = {"tokens_per_s": tps}
        if counts:
            efficiency[label].update(cost_per_token=cost, acceptance_rate=acceptance, tokens_per_forward=per_forward)
    return {
        "model": "m", "backend": "native",
        "results": {"qa": {label: {"exact_match": q, "exact_match_ci": [0.0, 1.0], "distinct-1": 0.5, "length": 7.0}
                           for label, (q, *_) in table.items()}},
        "n_items": {"qa": 4},
        "efficiency": {"qa": efficiency},
    }


def test_strategy_rows_star_quality_vs_cost_not_tokens_per_s():
    rows = {row["strategy"]: row for row in strategy_rows(results_with(QUALITY), "qa")}
    # greedy: same quality as greedy+lookup4 at twice the cost; temp0.7 and lookup8: beaten by greedy+lookup4
    # (higher quality, lower cost). On tokens/s the front would be beam4 and temp0.7 instead.
    assert {label for label, row in rows.items() if row["pareto"]} == {"greedy+lookup4", "beam4", "temp0.7+draft4"}
    assert all(row["pareto_axis"] == "cost_per_token" for row in rows.values())
    assert rows["beam4"]["cost_per_token"] == 4.0 and rows["temp0.7"]["tokens_per_s"] == 60.0


def test_speculative_rows_against_their_base_strategy():
    rows = {row["strategy"]: row for row in strategy_rows(results_with(QUALITY), "qa")}
    lookup = rows["greedy+lookup4"]
    assert lookup["speculative"] and lookup["base_strategy"] == "greedy"
    assert lookup["acceptance_rate"] == 0.4 and lookup["tokens_per_forward"] == 2.0
    assert lookup["cost_speedup"] == 2.0  # 1.00 / 0.50 forward passes per token
    assert lookup["wall_speedup"] == 1.5  # 30 / 20 tokens/s
    draft = rows["temp0.7+draft4"]
    assert draft["base_strategy"] == "temp0.7" and draft["cost_speedup"] == 4.0  # 1.00 / 0.25
    assert draft["wall_speedup"] is None  # no tokens/s for the cached strategy
    bare = rows["lookup8"]
    assert bare["base_strategy"] == "greedy" and bare["cost_speedup"] == 1.25 and bare["wall_speedup"] == 1.25
    plain = rows["beam4"]
    assert not plain["speculative"] and plain["base_strategy"] is None and plain["cost_speedup"] is None
    assert plain["acceptance_rate"] is None and plain["tokens_per_forward"] is None


def test_a_speculative_strategy_without_its_base_has_no_speedup():
    table = {"greedy": QUALITY["greedy"], "top-p0.9+lookup4": (0.3, 0.6, 40.0, 0.5, 1.5)}
    row = strategy_rows(results_with(table), "qa")[1]
    assert row["speculative"] and row["base_strategy"] is None
    assert row["cost_speedup"] is None and row["wall_speedup"] is None and row["acceptance_rate"] == 0.5


def test_base_strategy_by_label_and_by_decoding_config():
    labels = ["Greedy", "greedy+lookup4", "fast", "temp0.7+top-p0.9", "temp0.7+top-p0.9+draft2"]
    assert base_strategy("greedy+lookup4", labels) == "Greedy"  # spec parts are case-insensitive
    assert base_strategy("temp0.7+top-p0.9+draft2", labels) == "temp0.7+top-p0.9"
    plain = {"name": "", "label": "Greedy", "temperature": 0.0, "seed": 0, "speculative": None, "num_speculative_tokens": 0}
    fast = {**plain, "name": "fast", "label": "fast", "speculative": "lookup", "num_speculative_tokens": 4}
    assert base_strategy("fast", labels, {"Greedy": plain, "fast": fast}) == "Greedy"
    assert base_strategy("fast", labels, {"Greedy": {**plain, "seed": 1}, "fast": fast}) is None  # other settings
    assert is_speculative("fast", fast) and not is_speculative("greedy", plain)
    assert is_speculative("temp0.7+draft4") and is_speculative("lookup8") and not is_speculative("beam4")


def test_old_results_without_counts_star_on_tokens_per_s():
    old = results_with(QUALITY, counts=False)
    rows = {row["strategy"]: row for row in strategy_rows(old, "qa")}
    assert {label for label, row in rows.items() if row["pareto"]} == {"beam4", "temp0.7"}  # the old front
    assert all(row["pareto_axis"] == "tokens_per_s" and row["cost_per_token"] is None for row in rows.values())
    assert rows["greedy+lookup4"]["cost_speedup"] is None and rows["greedy+lookup4"]["wall_speedup"] == 1.5
    del old["efficiency"]["qa"]["beam4"]  # a cell with no efficiency at all: no crash, no star
    assert not next(r for r in strategy_rows(old, "qa") if r["strategy"] == "beam4")["pareto"]


def test_a_row_without_counts_among_rows_with_them_gets_no_star():
    results = results_with(QUALITY)
    results["efficiency"]["qa"]["beam4"] = {"tokens_per_s": 50.0}  # best quality, but no counts
    rows = {row["strategy"]: row for row in strategy_rows(results, "qa")}
    assert not rows["beam4"]["pareto"]
    assert {label for label, row in rows.items() if row["pareto"]} == {"greedy+lookup4", "temp0.7+draft4"}


# ----------------------------------------------------------------- the CLI tables


def render(results: dict, width: int = 80) -> str:
    console = Console(width=width, record=True)
    for table in comparison_tables(results):
        console.print(table)
    return console.export_text()


def test_cli_strategy_table_shows_cost_and_speculative_columns_within_80_columns():
    table = dict(QUALITY)
    table["temp0.7+top-p0.9+top-k50+rep1.2+draft4-with-a-long-name"] = (0.1, 0.9, 10.0, 0.2, 1.1)
    text = render(results_with(table))
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "cost" in text and "accept" in text and "tok/fwd" in text
    flat = " ".join(text.split())
    assert "*: pareto-best on quality vs cost (forward passes per token, machine-independent)" in flat
    spec = text[text.index("speculative decoding on qa"):]
    assert re.search(r"greedy\+lookup4\s+greedy\s+40%\s+2\.00\s+2\.00x\s+1\.50x", spec)
    assert re.search(r"temp0\.7\+draft4\s+temp0\.7\s+60%\s+3\.00\s+4\.00x\s+-", spec)
    main = text[:text.index("speculative decoding on qa")]
    names = dict(re.findall(r"^(s\d+): (\S+)", main, flags=re.M))  # long names: numbered rows and a key
    assert names["s1"] == "greedy"
    lines = {names[line.split()[0]]: line.split() for line in main.splitlines() if line.split()[:1] and line.split()[0] in names}
    assert lines["beam4"][-3:] == ["50.0", "4.00", "*"]  # tok/s, cost, star
    assert lines["greedy"][-2:] == ["20.0", "1.00"]
    assert lines["temp0.7+draft4"][-3:] == ["-", "0.25", "*"]


def test_cli_tables_of_old_results_say_the_star_is_on_tokens_per_s():
    flat = " ".join(render(results_with({"greedy": QUALITY["greedy"], "beam4": QUALITY["beam4"]}, counts=False)).split())
    assert "pareto-best on quality vs tok/s" in flat and "not recorded" in flat
    assert "speculative decoding" not in flat  # no speculative strategy: no second table


def test_cli_caption_names_rows_without_counts():
    results = results_with({"greedy": QUALITY["greedy"], "beam4": QUALITY["beam4"]})
    results["efficiency"]["qa"]["beam4"] = {"tokens_per_s": 50.0}
    flat = " ".join(render(results, width=160).split())
    assert "no forward-pass counts for beam4" in flat and "no star on cost" in flat


# ----------------------------------------------------------------- the HTML report


def test_report_plots_cost_and_shows_the_counts(tmp_path):
    from evalkit.report import build_report

    cells = {}
    for label, timing in {
        "greedy": Timing(decode_s=1.0, generated_tokens=8, forwards=8, cost=8.0),
        "greedy+lookup4": Timing(decode_s=0.5, generated_tokens=8, forwards=4, drafted=8, accepted=4, cost=4.0),
    }.items():
        eff = Efficiency.from_responses([Response(timing=timing)], requests=1)
        metrics = {"exact_match": MetricResult("exact_match", 0.5, "em", [0.5])}
        samples = [{"doc_id": 0, "prompt": "p", "output": "o", "reference": "r", "scores": {"exact_match": 0.5}}]
        cells[label] = CellResult(metrics=metrics, samples=samples, decoding={"name": label}, efficiency=eff, n_items=1)
    RunResult(model="m", backend="native", cells={"qa": cells}, meta={}).write(tmp_path / "run")
    html = build_report([tmp_path / "run"], tmp_path / "report.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg xmlns=.*?</svg>", html, flags=re.S)
    assert "forward passes / generated token (cost) ↓" in svgs[0]  # the cost plot first, lower is better
    assert "generated tokens / s (decode)" in svgs[1]  # tokens/s kept
    assert "cost/token" in html and "tokens/forward" in html and "acceptance" in html
    efficiency = html[html.index('id="efficiency-table"'):]
    assert 'data-v="0.5">0.5000' in efficiency  # greedy+lookup4: 4 forward-equivalents / 8 tokens; acceptance 4 / 8
    assert 'data-v="2.0">2.00' in efficiency  # 8 tokens / 4 forwards
