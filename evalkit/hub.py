"""Is the Hugging Face hub usable right now? Asked once, answered fast.

Every loader accepts hub ids, because real users have the hub; but on a
machine without network the hub clients retry for half a minute before
failing. One short probe, cached for the process, lets models and datasets
fall back to local files (or fail with a clear message) at once.
"""

from __future__ import annotations

import os
from functools import lru_cache

PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in names)


def hub_reachable() -> bool:
    """False at once in offline mode; else the answer of one quick probe, asked once per process."""
    return not hub_offline() and _probe()


@lru_cache(maxsize=1)
def _probe(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub endpoint; any failure (no network, proxy, timeout) means unreachable."""
    import requests
    from huggingface_hub import constants

    try:
        requests.head(constants.ENDPOINT, timeout=timeout)
    except requests.RequestException:
        return False
    return True
