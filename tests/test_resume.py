"""A run killed mid-way (SIGINT or SIGKILL) resumes from the response cache and ends with the same results."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evalkit

pytestmark = pytest.mark.integration

LIMIT = 16  # 16 hellaswag items = 64 loglikelihood requests, cached as they finish, plus 16 generations


def run_args(data_dir: Path, output: Path) -> list[str]:
    return [
        sys.executable, "-m", "evalkit", "run", "--model", "smollm2-135m", "--tasks", "hellaswag,demo-arith",
        "--limit", str(LIMIT), "--batch-size", "4", "--data-dir", str(data_dir), "--output", str(output),
        "--bootstrap", "100",
    ]


@pytest.fixture(scope="module")
def uninterrupted(smollm2, data_dir):
    """The same grid in one go, in process, without any cache."""
    return evalkit.evaluate(
        smollm2, tasks="hellaswag,demo-arith", limit=LIMIT, data_dir=data_dir, batch_size=4, bootstrap=100, cache=False
    )


def _sigint_as_in_a_shell() -> None:
    """Runs in the child before exec: Ctrl-C at its default and unblocked, as a shell starts a command.

    An ignored or blocked SIGINT is inherited through exec, and then Python
    installs no KeyboardInterrupt handler; libraries in this test session can
    leave it so (lightning's distributed teardown sets SIG_IGN). Two CI runs
    saw the interrupted run finish with rc 0.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_identical_results(sig, tmp_path, data_dir, uninterrupted, cached_rows):
    env = {**os.environ, "EVALKIT_CACHE": str(tmp_path / "cache")}
    cache_file = tmp_path / "cache" / "responses.sqlite"
    output = tmp_path / "run"
    proc = subprocess.Popen(
        run_args(data_dir, output), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_as_in_a_shell,
    )
    deadline = time.monotonic() + 600
    while cached_rows(cache_file) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before any response reached the cache: nothing to interrupt"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        parent = f"pytest's SIGINT handler {signal.getsignal(signal.SIGINT)}, blocked {signal.pthread_sigmask(signal.SIG_BLOCK, [])}"
        assert proc.returncode == 130, f"{parent}\n{stderr[-2000:]}"
        assert "rerun the same command to resume" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    done_before = cached_rows(cache_file)
    assert 0 < done_before < 4 * LIMIT, "the kill must land mid-run"
    if sig == signal.SIGINT:  # Ctrl-C caches every response the progress reported (a SIGKILL may lose the last second)
        shown = [int(n) for n in re.findall(rf"^hellaswag \[loglikelihood\] (\d+)/{LIMIT} ", stderr, re.M)]
        assert shown, f"no plain progress line for hellaswag on stderr:\n{stderr[-2000:]}"
        assert done_before >= 4 * shown[-1], f"{done_before} cached requests, progress showed {shown[-1]} items of 4"
    assert not (output / "results.json").exists()

    resumed = subprocess.run(run_args(data_dir, output), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((output / "results.json").read_text())
    assert results["efficiency"]["hellaswag"]["loglikelihood"]["cached"] == done_before
    assert results["results"] == uninterrupted["results"]
