"""Signatures: one string that records every setting behind a number (sacrebleu style).

Two scores are only comparable when their signatures are equal, so each metric
writes its options and the versions of the libraries that computed it here.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata


@cache
def version(package: str) -> str:
    """The installed version of ``package`` ("none" when it is absent)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    return str(value)


def make_signature(name: str, **fields: object) -> str:
    """``name|key:value|...``; booleans print as yes/no like sacrebleu's signatures."""
    return "|".join([name, *(f"{key.replace('_', '-')}:{_text(value)}" for key, value in fields.items())])
