"""User-facing errors.

Every mistake a user can make (a bad flag, a malformed task file, an unknown
name, a prompt that does not fit) raises :class:`EvalkitError` with one line
that names the thing and the fix. The CLI prints that line and exits with
status 2 instead of showing a traceback from deep inside a library.
"""


class EvalkitError(Exception):
    """A problem with the user's input, explained in one line."""
