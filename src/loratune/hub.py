"""The Hugging Face hub: fail fast when it is out of reach, and say why a download failed.

Without the probe, a hub name on a machine with no route to the hub costs a minute of retries before
the error. ``use_cache_only_if_unreachable()`` probes the hub endpoint once per process (one HEAD
request through huggingface_hub's own HTTP client, so ``HTTPS_PROXY`` / ``NO_PROXY`` apply) and, when
nothing answers, switches the hub libraries to offline mode, so that cached models and datasets still
load and missing ones fail at once.

``hub_error_message()`` turns the exceptions huggingface_hub raises (found anywhere in an exception's
chain, since transformers and datasets wrap them) into one line that names the problem and the fix.
"""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
LOGIN = "log in with `hf auth login` or set HF_TOKEN"

_forced_offline = False  # set once use_cache_only_if_unreachable() switched to offline mode


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
    global _forced_offline
    if offline_requested():
        return False
    if hub_reachable():
        return True
    _forced_offline = True
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


def exception_chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling (``__cause__``/``__context__``)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def hub_error_message(err: BaseException, kind: str, name: str, instead: str) -> str | None:
    """One line naming the problem and the fix for the first hub failure in ``err``'s chain, else None.

    ``kind`` is ``"model"`` or ``"dataset"``, ``name`` its hub id, and ``instead`` the local
    alternative to offer (e.g. ``"use --model minilm or a local folder with config.json"``).
    """
    for exc in exception_chain(err):
        message = _describe(exc, kind, name, instead)
        if message is not None:
            return message
    return None


def gated_message(kind: str, name: str) -> str:
    """The message for a gated repository: where to accept its licence, and how to log in."""
    return f"{kind} '{name}' is gated on the Hugging Face hub; accept its licence at {_page(kind, name)}, then {LOGIN}"


def _describe(exc: BaseException, kind: str, name: str, instead: str) -> str | None:
    from huggingface_hub import errors
    from huggingface_hub.utils import httpx

    if isinstance(exc, OSError) and exc.errno in _DENIED:
        return _permission_message(exc)
    if isinstance(exc, errors.HfHubHTTPError):
        return _http_message(exc, kind, name, instead)
    if isinstance(exc, httpx.ProxyError):
        return f"the proxy failed to connect to the Hugging Face hub ({_one_line(exc)}); check HTTPS_PROXY and NO_PROXY"
    if isinstance(exc, errors.HFValidationError):
        return f"{kind} '{name}' is neither a local path nor a valid hub id ({_one_line(exc)}); check it, or {instead}"
    if isinstance(exc, (errors.LocalEntryNotFoundError, ConnectionError, httpx.TransportError)):
        if offline_requested() and not _forced_offline:
            why = "HF_HUB_OFFLINE is set; unset it to download"
        else:
            why = "the Hugging Face hub is unreachable; check the network (and HTTPS_PROXY behind a proxy)"
        return f"{kind} '{name}' is not in the local Hugging Face cache and {why}, or {instead}"
    return None


def _http_message(exc: BaseException, kind: str, name: str, instead: str) -> str:
    """Messages for the HTTP errors (``HfHubHTTPError`` and its subclasses)."""
    from huggingface_hub import errors

    what = f"{kind} '{name}'"
    if isinstance(exc, errors.GatedRepoError):
        return gated_message(kind, name)
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"{what} is not on the Hugging Face hub, or is private; check the name (private: {LOGIN}), or {instead}"
    if isinstance(exc, errors.RevisionNotFoundError):
        page = _page(kind, name)
        return f"{what} has no such revision on the Hugging Face hub; pick a branch, tag or commit from {page}"
    if isinstance(exc, errors.DisabledRepoError):
        return f"{what} has been disabled on the Hugging Face hub; use another {kind}, or {instead}"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return f"the Hugging Face hub rejected your token for {what} (HTTP 401); {LOGIN} with a valid token"
    if status == 403:
        return f"the Hugging Face hub refused access to {what} (HTTP 403); use a token that may read it ({LOGIN})"
    if status == 429:
        return f"the Hugging Face hub is rate-limiting this machine (HTTP 429); wait a few minutes, or {LOGIN}"
    return f"the Hugging Face hub failed to serve {what} (HTTP {status}); retry later, or {instead}"


def _permission_message(exc: OSError) -> str:
    """A denied or read-only path: inside the Hugging Face cache, point at ``HF_HOME``."""
    from huggingface_hub import constants

    path = str(exc.filename or constants.HF_HUB_CACHE)
    reason = (exc.strerror or "permission denied").lower()
    if any(_is_within(path, root) for root in _cache_roots()):
        return (
            f"cannot write to the Hugging Face cache at {path} ({reason}); make it writable, "
            "or set HF_HOME to a writable folder"
        )
    return f"cannot access {path} ({reason}); make it readable and writable for your user"


def _cache_roots() -> list[str]:
    from huggingface_hub import constants

    roots = [constants.HF_HOME, constants.HF_HUB_CACHE]
    try:
        import datasets.config

        roots.append(str(datasets.config.HF_DATASETS_CACHE))
    except ImportError:  # pragma: no cover
        pass
    return roots


def _is_within(path: str, root: str) -> bool:
    return Path(os.path.abspath(os.path.expanduser(path))).is_relative_to(os.path.abspath(os.path.expanduser(root)))


def _page(kind: str, name: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{'datasets/' if kind == 'dataset' else ''}{name}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
