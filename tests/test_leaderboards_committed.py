"""The pages in leaderboards/ are what their committed run folders and today's template produce, byte for byte.

A change to the report (template, numbers, layout) that leaves them stale fails
here instead of letting the published pages drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.report.pages import REBUILD_COMMAND, read_pages, rebuild_pages

pytestmark = pytest.mark.unit

LEADERBOARDS = Path(__file__).resolve().parent.parent / "leaderboards"
STALE = f"is stale or hand-edited: run `{REBUILD_COMMAND}` from the repository root and commit the result"


def test_every_committed_page_is_listed_with_its_runs():
    listed = {page.file for page in read_pages(LEADERBOARDS)}
    on_disk = {path.name for path in LEADERBOARDS.glob("*.html")}
    assert on_disk == listed, f"leaderboards/pages.json must list exactly the committed pages (on disk: {sorted(on_disk)})"
    for page in read_pages(LEADERBOARDS):
        for run in page.runs:
            assert (LEADERBOARDS / run / "results.json").is_file(), f"{page.file}: run folder {run} is not committed"


def test_rebuilding_every_page_gives_the_committed_bytes(tmp_path):
    for path in rebuild_pages(LEADERBOARDS, tmp_path):
        committed = LEADERBOARDS / path.name
        assert path.read_bytes() == committed.read_bytes(), f"leaderboards/{path.name} {STALE}"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"a.html": "\xff"}', "byte offset 12: byte 0xff is not valid UTF-8"),
        (b"", "is not valid JSON"),
        (b'{"a.html": {"title": "t"}}', 'needs a file name NAME.html, a "title" string and a non-empty "runs" list'),
    ],
)
def test_a_broken_pages_json_is_one_line(tmp_path, one_line_error, content, needle):
    """Non-UTF-8, empty or incomplete pages.json: one error line naming the file and the fix, no traceback."""
    (tmp_path / "pages.json").write_bytes(content)
    one_line_error(["report", "--rebuild", str(tmp_path)], "pages.json", needle)
