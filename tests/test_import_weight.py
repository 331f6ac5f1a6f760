"""Adapters import no heavy optional library at module top: loading a model must not pull in lm-eval or metrics.

Each check runs in a fresh interpreter, so what other tests imported earlier
cannot hide (or fake) an import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY_OPTIONAL = ("lm_eval", "datasets", "sacrebleu", "comet")


@pytest.mark.parametrize("module", ["evalkit.models.hf", "evalkit.models.native", "evalkit.models.registry"])
def test_adapters_import_no_heavy_optional_library(module):
    probe = f"import sys, {module}; print([m for m in {HEAVY_OPTIONAL!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} imported {out.strip()}"
