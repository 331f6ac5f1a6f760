"""The HTML leaderboard without a browser: numbers, flags, escaping and the CLI.

Fixtures are real run folders written through ``RunResult.write``; their
metric values are inputs to the report (constructed, not produced by a model),
which is what a report test needs. Expected statistics come from scipy and
sacrebleu inside the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from evalkit.cli import main
from evalkit.report import build_report
from evalkit.report.leaderboard import build_leaderboard
from evalkit.report.plots import nice_ticks, scatter
from evalkit.report.runs import load_runs
from evalkit.report.stats import headline_metric, higher_is_better, pareto_front, ranks, win_rates

pytestmark = pytest.mark.unit


class ScriptCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self.tags: list[tuple[str, dict]] = []
        self._open: dict | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data):
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open, "".join(self._text)))
            self._open = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_run) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "alpha", model="tiny-lm")
    write_run(root, "beta", model="other-lm", backend="native", decodings={"greedy": 0.5, "beam2": 0.45}, seed=1)
    return root


def test_report_is_self_contained_and_its_data_block_is_inert(tmp_path, runs, write_run, injections):
    hostile = write_run(tmp_path, "evil<b>run</b>", model='<script>alert("model")</script>', tasks=("qa-gen",), outputs=dict(enumerate(injections)))
    out = build_report([runs, hostile], tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    parser = ScriptCounter()
    parser.feed(html)
    assert [attrs.get("type") for attrs, _ in parser.scripts] == ["application/json", None]  # nothing broke out of the data block
    assert not [t for t, a in parser.tags if t in ("link", "img", "iframe") or "src" in a]
    data = json.loads(parser.scripts[0][1])
    for text in injections:
        assert text in data["strings"]
    # the one inline script is allowed by its hash and nothing may be fetched
    csp = next(a["content"] for t, a in parser.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    digest = base64.b64encode(hashlib.sha256(parser.scripts[1][1].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp
    # markup: names are escaped, templates syntax is not evaluated
    assert '<script>alert("model")' not in html and "&lt;script&gt;alert(&#34;model&#34;)&lt;/script&gt;" in html
    assert "evil&lt;b&gt;run&lt;/b&gt;" in html
    assert "<b>run</b>" not in html and "\u2028" not in html


def test_overview_ranks_and_paired_tests_match_scipy(runs, resampled_items):
    board = build_leaderboard(load_runs([runs]))
    labels = [(board.runs[r.runs[0]].name, r.decoding) for r in board.rows]
    assert labels == [("alpha", "greedy"), ("alpha", "beam2"), ("alpha", "top-p0.9"), ("beta", "greedy"), ("beta", "beam2")]
    gen = next(t for t in board.tasks if t.name == "qa-gen")
    assert gen.headline == "exact_match" and next(t for t in board.tasks if t.name == "mc-choice").headline == "acc"
    # every row shows the run's single loglikelihood cell for the scoring task
    assert {r.cells["mc-choice"].label for r in board.rows} == {"loglikelihood"}

    values = {(r.runs[0], r.decoding): r.cells["qa-gen"].values["exact_match"] for r in board.rows}
    best_key = max(values, key=values.get)
    comparison = gen.comparisons["exact_match"]
    best = next(c for c in gen.cells if (c.run, c.label) == best_key)
    assert comparison.best == best.key and not comparison.approximate
    for cell in gen.cells:
        if cell is best:
            continue
        a = np.array([s.scores["exact_match"] for s in best.samples], bool)
        b = np.array([s.scores["exact_match"] for s in cell.samples], bool)
        only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
        expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert comparison.pvalues[cell.key] == pytest.approx(expected)
        assert comparison.n_paired[cell.key] == 30
    # corpus BLEU is not the mean of sentence BLEU: the report says the test is approximate
    bleu = gen.comparisons["bleu"]
    assert bleu.approximate
    # the reference: a paired bootstrap of mean sentence BLEU over the same 1000 resamples (seed 0), with the
    # two-sided p-value of deltas centred on the observed one, (count of |delta - observed| >= |observed| + 1) / 1001.
    # Sentence BLEU takes few values here, so many resamples tie |delta - observed| with |observed| exactly; a tie
    # counts as extreme (>=), whatever order the floats were summed in.
    items = resampled_items(30, 1000, 0)
    best_bleu = np.array([s.scores["bleu"] for s in next(c for c in gen.cells if c.key == bleu.best).samples])
    for cell in gen.cells:
        if cell.key == bleu.best:
            continue
        other = np.array([s.scores["bleu"] for s in cell.samples])
        observed = best_bleu.mean() - other.mean()
        distance = np.abs(best_bleu[items].mean(axis=1) - other[items].mean(axis=1) - observed) - abs(observed)
        extreme = np.count_nonzero(distance >= -1e-9)
        assert bleu.pvalues[cell.key] == pytest.approx((extreme + 1) / 1001, abs=1e-12), cell.key

    for row in board.rows:
        assert set(row.ranks) == {"qa-gen", "mc-choice"}
        assert row.mean_rank == pytest.approx(np.mean(list(row.ranks.values())))
    ordered = sorted(board.rows, key=lambda r: r.ranks["qa-gen"])
    assert ordered[0].cells["qa-gen"].values["exact_match"] == max(values.values())
    assert not board.flags


def test_differing_task_sets_item_counts_and_signatures_are_flagged(tmp_path, runs, write_run):
    small = write_run(tmp_path, "small", tasks=("qa-gen",), n=12)
    board = build_leaderboard(load_runs([runs, small]))
    text = " ".join(board.flags)
    assert "Run small has no results for mc-choice" in text
    assert "Task qa-gen was run on different numbers of items (alpha: 30, beta: 30, small: 12)" in text
    assert all("item counts differ" in board.cell_flags[c.key] for t in board.tasks if t.name == "qa-gen" for c in t.cells)
    html = build_report([runs, small], tmp_path / "flags.html").read_text(encoding="utf-8")
    assert "Not directly comparable" in html and "not run" in html
    # only the 12 shared items are paired
    gen = next(t for t in board.tasks if t.name == "qa-gen")
    comparison = gen.comparisons["exact_match"]
    small_cells = [c.key for c in gen.cells if board.runs[c.run].name == "small" and c.key != comparison.best]
    assert small_cells and all(comparison.n_paired[k] == 12 for k in small_cells)


def test_decoding_plots_have_axes_legend_and_pareto_front(runs, tmp_path):
    html = build_report([runs], tmp_path / "plots.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg xmlns=.*?</svg>", html, flags=re.S)
    assert len(svgs) == 2  # qa-gen: quality vs tokens/s and quality vs diversity; mc-choice has no decoding
    assert "generated tokens / s (decode)" in svgs[0] and "exact_match" in svgs[0] and "distinct_1" in svgs[1]
    assert 'class="front"' in html and "Pareto front" in html and 'class="legend"' in html


def test_pareto_ranks_ticks_and_directions():
    assert pareto_front([(1, 1), (2, 0.5), (0.5, 0.5), (2, 1)]) == [False, False, False, True]
    assert pareto_front([(1, 3), (2, 2), (3, 1), (1, 1)]) == [True, True, True, False]
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [1.5, 4.0, 1.5, 3.0]
    assert win_rates([3.0, 1.0, 3.0]) == [0.75, 0.0, 0.75]
    assert nice_ticks(0.13, 0.92) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [higher_is_better(m) for m in ("acc", "bleu", "ter", "word_perplexity", "bits_per_byte", "wer", "chrf")] == [
        True, True, False, False, False, False, True]
    assert headline_metric(["distinct_2", "rouge1", "rougeL"]) == "rougeL"
    plot = scatter("t", "x", "y", {"a": [("p", 1.0, 2.0), ("q", 2.0, 1.0), ("r", 0.5, 0.5)]})
    assert [p.on_front for p in plot.series[0].points] == [True, True, False]
    assert plot.series[0].front.count(",") == 2


def test_tolerates_missing_samples_and_extra_fields(tmp_path, write_run):
    run = write_run(tmp_path, "lean", tasks=("qa-gen",), n=5)
    for path in (run / "samples").glob("*beam2*"):
        path.unlink()
    greedy = next((run / "samples").glob("*greedy*"))
    records = [json.loads(line) for line in greedy.read_text().splitlines()]
    for record in records:  # top-level scores and unknown fields, as a future task might write them
        record["exact_match"] = record.pop("scores")["exact_match"]
        record["choices"] = ["a", "<b>"]
    greedy.write_text("".join(json.dumps(r) + "\n" for r in records))
    board = build_leaderboard(load_runs([run]))
    gen = board.tasks[0]
    cell = next(c for c in gen.cells if c.label == "greedy")
    assert cell.samples[0].scores == {"exact_match": records[0]["exact_match"]}
    assert cell.samples[0].other == {"filtered": records[0]["filtered"], "finish_reason": "stop", "choices": "a\n<b>"}
    assert any("No per-sample records for 1 cell(s)" in f for f in board.flags)
    beam = next(c for c in gen.cells if c.label == "beam2")
    if gen.comparisons["exact_match"].best != beam.key:
        assert gen.comparisons["exact_match"].pvalues[beam.key] is None


def test_cli_report_writes_file_and_explains_bad_input(tmp_path, runs, capsys):
    out = tmp_path / "leaderboards" / "demo.html"
    assert main(["report", str(runs / "alpha"), str(runs / "beta"), "-o", str(out), "--title", "Demo & friends"]) == 0
    html = out.read_text(encoding="utf-8")
    assert "<title>Demo &amp; friends</title>" in html
    assert str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    assert main(["report", str(broken), "-o", str(out)]) == 2
    assert "results.json is not valid JSON" in capsys.readouterr().err


def test_runs_of_one_model_split_by_task_share_rows(tmp_path, write_run):
    write_run(tmp_path, "part-gen", tasks=("qa-gen",))
    write_run(tmp_path, "part-mc", tasks=("mc-choice",))
    write_run(tmp_path, "other", model="other-lm", tasks=("qa-gen",))
    board = build_leaderboard(load_runs([tmp_path]))
    names = [r.name for r in board.runs]
    merged = [r for r in board.rows if len(r.runs) == 2]
    assert [r.decoding for r in merged] == ["greedy", "beam2", "top-p0.9"]
    assert all({names[i] for i in r.runs} == {"part-gen", "part-mc"} for r in merged)
    assert all(r.cells["qa-gen"] is not None and r.cells["mc-choice"].label == "loglikelihood" for r in merged)
    assert board.flags == ["Run other has no results for mc-choice; its mean rank and win rate cover only the tasks it ran."]


def test_prompt_formats_are_named_and_never_merged(tmp_path, write_run):
    """A plain and a chat-templated run of one model and backend are separate rows, each labelled with its prompt
    format; the system instruction is shown escaped; runs of one format split by task still share rows."""
    from evalkit.tasks.chat import ChatTemplate, PromptFormat

    template = ChatTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}", "tokenizer")
    system = "<script>alert(1)</script> Answer with a number."
    chat = PromptFormat(chat=True, chat_template=template, system_instruction=system, fewshot_as_multiturn=True).meta()
    wrap = "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    write_run(tmp_path, "plain-gen", tasks=("qa-gen",), prompt=PromptFormat().meta())
    write_run(tmp_path, "chat-gen", tasks=("qa-gen",), prompt=chat, prompt_text=wrap)
    write_run(tmp_path, "chat-mc", tasks=("mc-choice",), prompt=chat, prompt_text=wrap)
    write_run(tmp_path, "plain-mc", tasks=("mc-choice",))  # results.json from before prompt formats: plain
    board = build_leaderboard(load_runs([tmp_path]))
    names = [r.name for r in board.runs]
    groups = {tuple(sorted(names[i] for i in r.runs)) for r in board.rows}
    assert groups == {("chat-gen", "chat-mc"), ("plain-gen", "plain-mc")}
    label = f"chat template (tokenizer, sha256 {template.sha256[:8]}…)"
    by_name = {r.name: r.prompt_label for r in board.runs}
    assert by_name["plain-gen"] == by_name["plain-mc"] == "plain prompt"
    assert by_name["chat-gen"] == f'{label} · system: "<script>alert(1)</script> Answer with a number." · few-shot as multi-turn'

    html = build_report([tmp_path], tmp_path / "prompts.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html  # nowhere: not in the markup, not in the data block
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Answer with a number." in html
    assert label in html and template.sha256 in html and "few-shot as multi-turn" in html
    overview = html.split('id="overview-table"')[1].split("</table>")[0]
    assert overview.count(label) == 3 and overview.count("<td class=\"prompt\">plain prompt</td>") == 3  # 3 strategies each
    parser = ScriptCounter()
    parser.feed(html)
    data = json.loads(parser.scripts[0][1])
    task = next(t for t in data["tasks"] if t["name"] == "qa-gen")
    columns = {(c["run"], c["decoding"]): c for c in task["columns"]}
    assert columns[("plain-gen", "greedy")]["prompt"] == "plain prompt"
    assert columns[("chat-gen", "greedy")]["prompt"].startswith(label)
    # the docs table holds the first run's prompt (chat-gen sorts first); a run whose prompt differs carries its own
    strings = data["strings"]

    def fields(run):
        other = columns[(run, "greedy")]["other"][0]
        return dict(zip([strings[i] for i in other[::2]], [strings[i] for i in other[1::2]]))

    assert strings[task["docs"][0][1]] == wrap.format("Q0: where is the river number 0?")
    assert "prompt" not in fields("chat-gen") and fields("plain-gen")["prompt"] == "Q0: where is the river number 0?"
