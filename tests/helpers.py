"""Small helpers several test files share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from pathlib import Path
from types import ModuleType

from evalkit.cli import main as cli_main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module, so tests reuse its exact task definitions."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cached_rows(cache_file: Path) -> int:
    """How many responses a (possibly still running) evalkit process has committed to its cache.

    Only a missing file or table counts as 0: a read that finds the database
    busy is retried, so a poll never mistakes a busy moment for an empty cache.
    """
    if not cache_file.exists():
        return 0
    for _ in range(50):
        db = sqlite3.connect(cache_file, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return 0
        finally:
            db.close()
        time.sleep(0.1)
    raise AssertionError(f"{cache_file} stayed busy for every read")


class CharTokenizer:
    """Printable ASCII characters as tokens (0 pad, 1 BOS, 2 EOS, others "?"): every stop string spans tokens."""

    vocab_size = 3 + 95
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def encode(self, text, add_special_tokens=True):
        return [1] * add_special_tokens + [ord(ch) - 29 if " " <= ch <= "~" else ord("?") - 29 for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(chr(i + 29) for i in ids if i >= 3)


def assert_one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """In-process: exit status 2, one 'error:' line on stderr naming the problem, no traceback."""
    assert cli_main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
