"""Third-party chatter kept off the terminal unless asked for (``evalkit --verbose``).

Libraries that metrics call print their own lines: PyTorch Lightning's
"GPU available" / "TPU available" banners and tips on every COMET
``predict``, deprecation warnings, comet's "Encoder model frozen.",
transformers' weight-loading warnings, tqdm bars. ``library_output()`` wraps
such a call (a metric model's load or predict): writes to stdout/stderr are
captured and dropped; the Lightning loggers are set to ERROR, comet's to
WARNING and transformers' to ERROR for its duration; logging set up by an
import inside it is undone (comet's import calls ``logging.basicConfig(INFO)``,
which would print every library's INFO records for the rest of the process),
and a log handler created inside it is pointed back at the real stderr. When
the call raises, the captured text is written to stderr before the error
propagates, so nothing needed to debug it is lost.

``set_verbose(True)`` (the CLI's ``--verbose``; or ``EVALKIT_VERBOSE=1`` in
the environment) lets everything through untouched. Capturing swaps
``sys.stdout``/``sys.stderr`` for the whole process, so output of other
threads during a wrapped call is dropped too.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

QUIET_LEVELS = {
    "lightning.pytorch": logging.ERROR,
    "pytorch_lightning": logging.ERROR,
    "lightning.fabric": logging.ERROR,
    "lightning_fabric": logging.ERROR,
    "comet": logging.WARNING,
    "transformers": logging.ERROR,
}

_VERBOSE = False


def set_verbose(flag: bool) -> None:
    """Let third-party output through (True) or capture it (False; EVALKIT_VERBOSE=1 still lets it through)."""
    global _VERBOSE
    _VERBOSE = bool(flag)


def is_verbose() -> bool:
    if _VERBOSE:
        return True
    return os.environ.get("EVALKIT_VERBOSE", "").strip().lower() in ("1", "true", "yes")


def _rebind_handlers(buffer: io.StringIO) -> None:
    """A StreamHandler created while output was captured (``logging.StreamHandler()`` binds the sys.stderr of
    that moment) would write into the dead buffer forever; point it at the real stderr."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is buffer:
                handler.setStream(sys.stderr)


@contextmanager
def library_output() -> Iterator[None]:
    """Capture a library call's stdout/stderr writes and quiet its loggers (nothing changes when verbose)."""
    if is_verbose():
        yield
        return
    loggers = {name: logging.getLogger(name) for name in QUIET_LEVELS}
    levels = {name: logger.level for name, logger in loggers.items()}
    quiet = {name: max(QUIET_LEVELS[name], logger.getEffectiveLevel()) for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(quiet[name])
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    buffer = io.StringIO()
    failed = False
    try:
        with redirect_stdout(buffer), redirect_stderr(buffer):
            yield
    except BaseException:
        failed = True
        raise
    finally:
        for name, logger in loggers.items():
            if logger.level == quiet[name]:  # else an import inside set the library's own level: keep that one
                logger.setLevel(levels[name])
        for handler in [h for h in root.handlers if h not in root_handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)
        _rebind_handlers(buffer)
        if failed and buffer.getvalue():
            sys.stderr.write(buffer.getvalue())
