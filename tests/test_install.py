"""The README's install resolves in one pass: pip never backtracks through releases (bounds in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def test_install_resolves_without_backtracking(tmp_path):
    """A dry-run install of the README's command in a fresh virtualenv, on the package index this machine uses."""
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    run = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "torch==2.13.0", "-e", f"{REPO}[test]"],
        capture_output=True, text=True, timeout=1800,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Would install" in output
    assert "looking at multiple versions" not in output and "backtracking" not in output, output[-3000:]
