"""The HTML leaderboard in a real browser: Playwright driving Debian's Chromium, headless.

Every page is opened from disk with the network cut: any request other than
the file itself is recorded and aborted, so "no network at view time" is
checked, not assumed. The page's Content-Security-Policy stays on (waits use
locators, which need no eval), so the tests see exactly what a reader sees.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from evalkit.report import build_report
from evalkit.report.leaderboard import build_leaderboard
from evalkit.report.runs import load_runs

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's Chromium is absent at /usr/bin/chromium (apt-get install -y chromium; CI installs it)"
    ),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page with its console errors, network requests and dialogs recorded."""

    def __init__(self, browser, path: Path, viewport=(1400, 900)) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.dialogs: list[str] = []
        self.url = path.resolve().as_uri()
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)

    def _route(self, route) -> None:
        if route.request.url == self.url:
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, timeout_ms: float = 30_000) -> float:
        start = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=timeout_ms)
        return time.perf_counter() - start

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory, write_run, injections) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "alpha", model="tiny-lm")
    write_run(root, "beta", model="other-lm", backend="native", decodings={"greedy": 0.5, "beam2": 0.45}, seed=1)
    write_run(root, "evil<i>run", model='<img src=x onerror=alert("model")>', tasks=("qa-gen",), outputs=dict(enumerate(injections)))
    return root, build_report([root], root.parent / "report.html")


@pytest.fixture
def watched(browser, report):
    page = Watched(browser, report[1])
    page.open()
    yield page
    page.close()


def overview_column(page, column: int) -> list[str]:
    return page.eval_on_selector_all("#overview-table tbody tr", f"rows => rows.map(r => r.cells[{column}].dataset.v)")


def test_page_loads_without_errors_or_network_and_sorts(watched, report):
    page = watched.page
    assert watched.errors == [] and watched.foreign == [] and watched.dialogs == []
    headers = page.eval_on_selector_all("#overview-table thead th", "ths => ths.map(th => th.textContent)")
    column = next(i for i, text in enumerate(headers) if text.startswith("qa-gen"))
    board = build_leaderboard(load_runs([report[0]]))
    values = sorted((r.cells["qa-gen"].values["exact_match"] for r in board.rows), reverse=True)

    page.click(f"#overview-table thead th:nth-child({column + 1})")
    assert [float(v) for v in overview_column(page, column)] == values  # best first for a higher-is-better metric
    page.click(f"#overview-table thead th:nth-child({column + 1})")
    assert [float(v) for v in overview_column(page, column)] == values[::-1]
    rank = headers.index(next(h for h in headers if h.startswith("Mean rank")))
    page.click(f"#overview-table thead th:nth-child({rank + 1})")
    ranks = [float(v) for v in overview_column(page, rank)]
    assert ranks == sorted(ranks)
    assert watched.errors == []


def test_sample_browser_filters_sorts_and_pages(watched, report):
    page = watched.page
    board = build_leaderboard(load_runs([report[0]]))
    task = next(t for t in board.tasks if t.name == "qa-gen")
    page.select_option("#sb-task", label=f"qa-gen ({len(task.cells[0].samples)} items)")
    assert page.locator("#sb-rows tr").count() == 20  # first page only
    shown = [c for c in task.cells if c.samples][:6]  # the browser shows the first six columns by default
    expected = sum(
        any("lantern" in text.lower() for text in (s.prompt, s.reference, *(c.samples[i].output for c in shown)))
        for i, s in enumerate(task.cells[0].samples)
    )
    page.fill("#sb-filter", "LANTERN")
    expect(page.locator("#sb-count")).to_contain_text(f"of {expected} ")
    assert page.locator("#sb-rows tr").count() == min(expected, 20)
    for text in page.eval_on_selector_all("#sb-rows tr", "rows => rows.map(r => r.textContent.toLowerCase())"):
        assert "lantern" in text

    page.fill("#sb-filter", "")
    expect(page.locator("#sb-count")).to_contain_text("rows 1–20 of 30 ")
    option = page.eval_on_selector_all("#sb-sort option", "os => os.map(o => o.textContent).find(t => t.startsWith('bleu') && t.endsWith('low first'))")
    page.select_option("#sb-sort", label=option)
    first_column = page.eval_on_selector_all("#sb-rows tr", "rows => rows.map(r => r.cells[3].querySelector('.scores').textContent)")
    bleu = [float(text.split("bleu = ")[1].split(" ")[0]) for text in first_column]
    assert bleu == sorted(bleu) and len(bleu) == 20
    page.click("#sb-next")
    assert page.locator("#sb-rows tr").count() == 10 and "rows 21–30 of 30" in page.text_content("#sb-count")
    assert watched.errors == []


def test_injection_strings_render_as_text_and_run_nothing(watched, injections):
    page = watched.page
    for box in page.locator("#sb-columns input").all():  # the hostile run's columns are past the first six
        box.check()
    expect(page.locator("#sb-count")).to_contain_text("rows 1–20 ")
    texts = page.eval_on_selector_all("#sb-rows pre.text", "nodes => nodes.map(n => n.textContent)")
    for injection in injections:  # items 0-5 of the hostile run, all on the first page
        assert injection in texts
    page.fill("#sb-filter", "</textarea>")
    expect(page.locator("#sb-count")).to_contain_text("rows 1–1 of 1 ")
    overview = page.text_content("#overview-table")
    assert '<img src=x onerror=alert("model")>' in overview and "evil<i>run" in overview
    assert page.locator("img").count() == 0 and page.locator("a[href^='javascript']").count() == 0
    assert page.locator("#sb-rows b, #overview-table i, textarea").count() == 0
    page.mouse.wheel(0, 5000)
    page.wait_for_timeout(300)
    assert watched.dialogs == [] and watched.errors == [] and watched.foreign == []


def test_screenshot_is_not_blank(watched, tmp_path):
    from PIL import Image

    png = watched.page.screenshot(full_page=True)
    image = Image.open(io.BytesIO(png)).convert("L")
    assert image.size[0] >= 1000 and image.size[1] > 900
    histogram = image.histogram()
    non_white = sum(histogram[:240]) / sum(histogram)
    assert non_white > 0.02 and len([h for h in histogram if h]) > 50  # text, table lines, plot colours


SCALE = {"runs": 10, "tasks": 5, "strategies": 6, "samples": 500}
MAX_SCALE_MB = 60
MAX_READY_S = 20


@pytest.fixture(scope="module")
def scale_report(tmp_path_factory, write_run) -> Path:
    root = tmp_path_factory.mktemp("scale")
    strategies = {name: 0.8 - 0.1 * i for i, name in enumerate(["greedy", "beam2", "beam4", "top-p0.9", "top-k50", "min-p0.1"][: SCALE["strategies"]])}
    tasks = tuple(f"task-{i}" for i in range(SCALE["tasks"]))
    for r in range(SCALE["runs"]):
        write_run(root, f"run-{r:02d}", model=f"model-{r}", decodings=strategies, tasks=tasks, n=SCALE["samples"], seed=r, with_bleu=False, filler=30)
    started = time.perf_counter()
    path = build_report([root], root.parent / "scale.html")
    print(f"scale report built in {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
    return path


def test_scale_report_opens_and_stays_responsive(browser, scale_report):
    size_mb = scale_report.stat().st_size / 1e6
    assert size_mb < MAX_SCALE_MB
    watched = Watched(browser, scale_report)
    try:
        ready_s = watched.open(timeout_ms=MAX_READY_S * 1000)
        assert ready_s < MAX_READY_S
        page = watched.page
        assert page.locator("#overview-table tbody tr").count() == SCALE["runs"] * SCALE["strategies"]
        assert page.locator("#sb-rows tr").count() == 20  # lazy: one page of 500 rendered
        started = time.perf_counter()
        page.fill("#sb-filter", "lantern")
        expect(page.locator("#sb-count")).not_to_contain_text("of 500 ")
        page.click("#sb-next")
        page.select_option("#sb-task", index=SCALE["tasks"] - 1)
        expect(page.locator("#sb-count")).to_contain_text("rows 1–20 ")
        interaction_s = time.perf_counter() - started
        assert interaction_s < 5
        started = time.perf_counter()
        page.click("#overview-table thead th:nth-child(5)")
        assert time.perf_counter() - started < 5
        print(f"scale: {size_mb:.1f} MB, interactive after {ready_s:.2f} s, filter+page+task switch {interaction_s:.2f} s")
        assert watched.errors == [] and watched.foreign == []
    finally:
        watched.close()
