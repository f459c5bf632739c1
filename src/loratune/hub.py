"""Fail fast when the Hugging Face hub is out of reach.

Without the probe, a hub name on a machine with no route to the hub costs a minute of retries before
the error. ``use_cache_only_if_unreachable()`` probes the hub endpoint once per process (one HEAD
request through huggingface_hub's own HTTP client, so ``HTTPS_PROXY`` / ``NO_PROXY`` apply) and, when
nothing answers, switches the hub libraries to offline mode, so that cached models and datasets still
load and missing ones fail at once.
"""

from __future__ import annotations

import functools
import os

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (by the user, or by loratune for an unreachable hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub endpoint (``HF_ENDPOINT``) answers a HEAD request, whatever its status.

    The request goes through huggingface_hub's HTTP client (``get_session``), so the proxy variables
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, and their lower-case forms) and a client
    set with ``set_client_factory`` apply. ``timeout`` bounds each phase (connect, write, read).
    """
    if offline_requested():
        return False
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, httpx

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except (httpx.TransportError, OSError):  # connect, proxy, TLS, timeout; OfflineModeIsEnabled
        return False
    return True


def use_cache_only_if_unreachable() -> bool:
    """Switch the hub libraries to offline (cache-only) mode when the hub does not answer.

    Returns True when the hub is reachable; False (and probes nothing) when offline mode is already set.
    """
    if offline_requested():
        return False
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
