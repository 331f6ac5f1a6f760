"""Progress reports for everything that takes more than a few seconds, on stderr, only when asked for.

Two shapes of report, one reporter:

* a counted piece of work: ``start(description, total)``, ``advance(n)`` as
  items finish, ``finish()`` (the runner's task x strategy cells);
* a step: ``with step("converting x.gguf"):`` reports a start line and a done
  line with its seconds (GGUF conversion, model loading, each metric of
  ``evalkit score``); ``step(..., quiet_below=s)`` says nothing unless the step
  is still running after ``s`` seconds (bootstrap resampling).

Library code reports to :func:`current`, which is silent until someone installs
a reporter with :func:`reporting`. The CLI does (rich's live bar on a terminal,
:class:`PlainProgress`'s lines otherwise); ``evaluate()`` called from a training
loop prints nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO


class Progress(Protocol):
    """What the runner reports a cell's work to (the unit is an item, fractions allowed)."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, amount: float) -> None: ...

    def finish(self) -> None: ...


class Reporter(Progress, Protocol):
    """A :class:`Progress` that also takes work found already done and one-line notes; what :func:`reporting` installs."""

    def skip(self, amount: float) -> None:
        """Items found done (in the response cache): they count toward the total, not toward the rate."""

    def note(self, message: str) -> None:
        """One line of what is happening (a step's start or end)."""

    def close(self) -> None: ...


class SilentProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: float) -> None:
        pass

    def skip(self, amount: float) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def duration(seconds: float) -> str:
    """``0:29``, ``12:05``, ``1:02:03``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(description: str, done: float, total: float, rate: float | None, seconds: float, finished: bool = False) -> str:
    """``gsm8k [greedy] 12/50 (24%) 1.30 it/s ETA 0:29``; finished: ``... 50/50 (100%) 1.30 it/s in 0:38``."""
    percent = 100 * done / total if total else 100.0
    text = f"{description} {int(done + 1e-6)}/{int(total)} ({percent:.0f}%)"  # fractions of items add up to a hair under
    if rate:
        text += f" {rate:.2f} it/s" if rate < 100 else f" {rate:.0f} it/s"
    if finished:
        return f"{text} in {duration(seconds)}"
    if rate:
        text += f" ETA {duration((total - done) / rate)}"
    return text


class PlainProgress:
    """One line per update, for logs (stderr not a terminal: CI, ``| tee``).

    A cell prints a line when it starts, then whenever ``every_s`` seconds have
    passed or another ``step`` of the total (10%) is done (but not within
    ``min_gap_s`` of the last line: a batch finishing at once is one line), and
    a last line with its count and seconds when it finishes. The rate leaves
    out items found in the cache, so a resumed run's ETA is about the work
    still to do.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every_s: float = 10.0,
        step: float = 0.1,
        min_gap_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream  # None: sys.stderr at the time of writing (pytest's capsys swaps it)
        self.every_s = every_s
        self.step = step
        self.min_gap_s = min_gap_s
        self.clock = clock
        self._description: str | None = None
        self._lock = threading.Lock()  # a step's delayed note comes from a timer thread

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def start(self, description: str, total: int) -> None:
        self._description, self._total = description, total
        self._done = self._skipped = 0.0
        self._started = self._last = self.clock()
        self._shown_steps = 0
        self._write(progress_line(description, 0, total, None, 0.0))

    def _rate(self, now: float) -> float | None:
        fresh, seconds = self._done - self._skipped, now - self._started
        return fresh / seconds if fresh > 0 and seconds > 0 else None

    def _steps(self) -> int:
        return int(self._done / self._total / self.step + 1e-9) if self._total and self.step else 0

    def skip(self, amount: float) -> None:
        if self._description is not None:
            self._skipped += amount
            self.advance(amount)

    def advance(self, amount: float) -> None:
        if self._description is None:
            return
        self._done += amount
        if self._done >= self._total:
            return  # finish() prints the last line
        now = self.clock()
        steps = self._steps()
        since = now - self._last
        if since >= self.every_s or (steps > self._shown_steps and since >= self.min_gap_s):
            self._last, self._shown_steps = now, steps
            self._write(progress_line(self._description, self._done, self._total, self._rate(now), now - self._started))

    def finish(self) -> None:
        if self._description is None:
            return
        now = self.clock()
        self._write(progress_line(self._description, self._done, self._total, self._rate(now), now - self._started, finished=True))
        self._description = None

    def note(self, message: str) -> None:
        self._write(message)

    def close(self) -> None:
        pass


_SILENT = SilentProgress()
_installed: list[Reporter] = []


def current() -> Reporter:
    """The installed reporter, or a silent one."""
    return _installed[-1] if _installed else _SILENT


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Report to ``reporter`` for the duration (the CLI wraps each command in this); closes it at the end."""
    _installed.append(reporter)
    try:
        yield reporter
    finally:
        _installed.remove(reporter)
        reporter.close()


@contextmanager
def step(description: str, *, quiet_below: float | None = None) -> Iterator[None]:
    """Report ``description ...`` when the step starts and ``description: done in 1.2 s`` when it ends.

    With ``quiet_below``: nothing for a step that ends within that many
    seconds; a longer one gets its start line at that moment and its done line.
    A step that raises gets no done line (the error says what happened).
    """
    reporter = current()
    if reporter is _SILENT:
        yield
        return
    started = time.perf_counter()
    timer = None
    if quiet_below is None:
        reporter.note(f"{description} ...")
    else:
        timer = threading.Timer(quiet_below, reporter.note, [f"{description} ..."])
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
    seconds = time.perf_counter() - started
    if quiet_below is None or seconds >= quiet_below:
        reporter.note(f"{description}: done in {seconds:.1f} s")
