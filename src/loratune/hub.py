"""Fail fast when the Hugging Face hub is out of reach.

Without this, a hub name on a machine with no route to the hub costs a minute of retries before
the error. ``use_cache_only_if_unreachable()`` probes the hub endpoint once (a TCP connect, a few
seconds at most) and, when it is unreachable, switches the hub libraries to offline mode, so that
cached models and datasets still load and missing ones fail at once with a clear message.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    if offline_requested():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def use_cache_only_if_unreachable() -> bool:
    """Switch the hub libraries to offline (cache-only) mode when the hub is unreachable.

    Returns True when the hub is reachable.
    """
    if hub_reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    return False
