"""Committed leaderboard pages, rebuilt from the run folders committed next to them.

A folder of published pages (``leaderboards/``) holds ``pages.json``, which
names each page's file, title and run folders (relative to that folder), and
the run folders themselves. ``evalkit report --rebuild leaderboards`` writes
every page again from them; since a page depends only on its runs and title
(:mod:`evalkit.report.render`), a page that has not drifted from the template
comes back byte for byte, which ``tests/test_leaderboards_committed.py`` checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError, not_utf8
from evalkit.report.render import build_report

MANIFEST = "pages.json"
REBUILD_COMMAND = "evalkit report --rebuild leaderboards"


@dataclass(frozen=True)
class Page:
    """One published page: its file name, its title and the run folders it shows (relative to the pages folder)."""

    file: str
    title: str
    runs: tuple[str, ...]


def read_pages(folder: Path) -> list[Page]:
    """The pages ``folder/pages.json`` lists: ``{"NAME.html": {"title": ..., "runs": [RUN_DIR, ...]}, ...}``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise EvalkitError(f"{path} does not exist: --rebuild takes a folder with a {MANIFEST} naming its pages and their run folders")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvalkitError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if not isinstance(data, dict) or not data:
        raise EvalkitError(f'{path} must be an object of pages: {{"NAME.html": {{"title": "...", "runs": ["RUN_DIR", ...]}}}}')
    pages = []
    for name, spec in data.items():
        runs = spec.get("runs") if isinstance(spec, dict) else None
        title = spec.get("title") if isinstance(spec, dict) else None
        if not name.endswith(".html") or "/" in name or not isinstance(title, str) or not runs or not all(isinstance(r, str) for r in runs):
            raise EvalkitError(f'{path}: page {name!r} needs a file name NAME.html, a "title" string and a non-empty "runs" list of folders')
        pages.append(Page(file=name, title=title, runs=tuple(runs)))
    return pages


def rebuild_pages(folder: Path, output_dir: Path | None = None) -> list[Path]:
    """Write every page of ``folder`` (into ``output_dir``, default ``folder`` itself); return their paths.

    Run folders are named on the pages relative to ``folder``, wherever the pages are written.
    """
    folder = Path(folder)
    output_dir = folder if output_dir is None else Path(output_dir)
    return [
        build_report([folder / run for run in page.runs], output_dir / page.file, title=page.title, folders_relative_to=folder)
        for page in read_pages(folder)
    ]
