"""User-facing errors.

Every mistake a user can make (a bad flag, a malformed task file, an unknown
name, a prompt that does not fit) raises :class:`EvalkitError` with one line
that names the thing and the fix. The CLI prints that line and exits with
status 2 instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations

import os


class EvalkitError(Exception):
    """A problem with the user's input, explained in one line."""


def check_utf8(path: str | os.PathLike) -> None:
    """Raise :func:`not_utf8`'s error when the file is not valid UTF-8 (read in 1 MiB chunks)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(2**20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def not_utf8(path: str | os.PathLike) -> EvalkitError:
    """The one-line error for a text file that is not UTF-8: the file, the line and the byte offset of the first bad byte."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return EvalkitError(
            f"{path}: line {line}, byte offset {err.start}: byte 0x{data[err.start]:02x} is not valid UTF-8 "
            f"({err.reason}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )
    return EvalkitError(f"{path}: not valid UTF-8; save the file as UTF-8")
