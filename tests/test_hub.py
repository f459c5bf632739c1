"""hub.py: the reachability probe (through proxies, on loopback servers only) and the hub error messages."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import close_session, httpx

from loratune import hub
from loratune.hub import hub_error_message, hub_reachable, use_cache_only_if_unreachable

PROXY_VARS = [f"{s}_proxy" for s in ("http", "https", "all", "no")]
INSTEAD = "use --model minilm or a local folder with config.json"


class _Recorder(BaseHTTPRequestHandler):
    """Answers every HEAD/GET/CONNECT with 200 and records the request line (as a hub or a proxy)."""

    def _answer(self) -> None:
        self.server.lines.append(self.requestline)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = do_CONNECT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    """Start loopback HTTP servers on 127.0.0.1; yields a function returning (url, recorded lines)."""
    servers: list[ThreadingHTTPServer] = []

    def start() -> tuple[str, list[str]]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.lines = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", server.lines  # type: ignore[attr-defined]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Online mode, no proxy variables, a fresh probe and a fresh hub HTTP client (which reads the proxies)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    hub_reachable.cache_clear()
    close_session()
    yield monkeypatch
    hub_reachable.cache_clear()
    close_session()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the probe ------------------------------------------------------------------------------------


def test_probe_direct(online: pytest.MonkeyPatch, serve) -> None:
    url, lines = serve()
    online.setattr(constants, "ENDPOINT", url)
    assert hub_reachable() is True
    assert lines == ["HEAD / HTTP/1.1"]
    hub_reachable()
    assert len(lines) == 1  # cached per process
    hub_reachable.cache_clear()
    online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert hub_reachable() is False


@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_probe_goes_through_the_proxy(online: pytest.MonkeyPatch, serve, var: str) -> None:
    """An endpoint that only the proxy can reach (a name that never resolves) counts as reachable."""
    proxy, lines = serve()
    online.setenv(var, proxy)
    online.setattr(constants, "ENDPOINT", "http://hub.invalid")
    assert hub_reachable() is True
    assert lines == ["HEAD http://hub.invalid/ HTTP/1.1"]


def test_probe_tunnels_https_through_https_proxy(online: pytest.MonkeyPatch, serve) -> None:
    proxy, lines = serve()
    online.setenv("https_proxy", proxy)
    online.setattr(constants, "ENDPOINT", "https://hub.invalid")
    hub_reachable()  # the loopback proxy speaks no TLS: only where the request went matters here
    assert lines == ["CONNECT hub.invalid:443 HTTP/1.1"]


@pytest.mark.parametrize("var", ["NO_PROXY", "no_proxy"])
def test_probe_skips_the_proxy_for_no_proxy(online: pytest.MonkeyPatch, serve, var: str) -> None:
    proxy, proxied = serve()
    endpoint, direct = serve()
    online.setenv("HTTP_PROXY", proxy)
    online.setenv(var, "127.0.0.1")
    online.setattr(constants, "ENDPOINT", endpoint)
    assert hub_reachable() is True
    assert direct == ["HEAD / HTTP/1.1"] and proxied == []


def test_unreachable_switches_to_offline(online: pytest.MonkeyPatch) -> None:
    import datasets.config

    online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    online.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    online.setattr(hub, "_forced_offline", False)
    online.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert use_cache_only_if_unreachable() is False
    assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE and hub.offline_requested()
    assert hub._forced_offline


def test_offline_requested_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda: pytest.fail("probed"))
    assert use_cache_only_if_unreachable() is False


# --- error messages -------------------------------------------------------------------------------


def response(status: int, url: str = "https://huggingface.co/api/models/org/x") -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", url))


def wrapped(err: BaseException) -> OSError:
    """``err`` wrapped as transformers does: an OSError raised from it."""
    try:
        raise OSError("Can't load the configuration of 'org/x'. Check the hub.") from err
    except OSError as outer:
        return outer


def message(err: BaseException, kind: str = "model") -> str:
    text = hub_error_message(wrapped(err), kind, "org/x", INSTEAD)
    assert text is not None and "\n" not in text
    return text


def test_gated_names_the_licence_page_and_the_login() -> None:
    text = message(GatedRepoError("403 gated", response=response(403)))
    assert text.startswith("model 'org/x' is gated on the Hugging Face hub")
    assert f"{constants.ENDPOINT}/org/x" in text and "hf auth login" in text and "HF_TOKEN" in text
    assert f"{constants.ENDPOINT}/datasets/org/x" in message(GatedRepoError("g", response=response(401)), "dataset")


@pytest.mark.parametrize(
    ("err", "needles"),
    [
        (RepositoryNotFoundError("404", response=response(404)), ["not on the Hugging Face hub", "private", INSTEAD]),
        (RevisionNotFoundError("404", response=response(404)), ["no such revision", "branch, tag or commit"]),
        (DisabledRepoError("403", response=response(403)), ["disabled", INSTEAD]),
        (HfHubHTTPError("401", response=response(401)), ["rejected your token", "hf auth login"]),
        (HfHubHTTPError("429", response=response(429)), ["rate-limiting", "wait"]),
        (HfHubHTTPError("503", response=response(503)), ["HTTP 503", "retry later"]),
        (httpx.ProxyError("407 Proxy Authentication Required"), ["proxy", "407", "HTTPS_PROXY"]),
        (HFValidationError("Repo id must use alphanumeric chars"), ["nor a valid hub id", "alphanumeric"]),
    ],
)
def test_each_hub_error_has_its_message(err: BaseException, needles: list[str]) -> None:
    text = message(err)
    assert all(n in text for n in needles), text
    assert "unreachable" not in text


@pytest.mark.parametrize(
    "err", [LocalEntryNotFoundError("not cached"), OfflineModeIsEnabled("offline"), httpx.ConnectError("refused")]
)
def test_offline_says_why(monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_forced_offline", False)
    assert message(err) == (
        "model 'org/x' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; unset it to download, "
        f"or {INSTEAD}"
    )
    monkeypatch.setattr(hub, "_forced_offline", True)
    assert "the Hugging Face hub is unreachable; check the network (and HTTPS_PROXY" in message(err)


def test_permission_error_in_the_cache_is_not_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "huggingface"))
    lock = tmp_path / "huggingface" / "hub" / ".locks" / "models--org--x" / "a.lock"
    text = message(PermissionError(13, "Permission denied", str(lock)))
    assert text == (
        f"cannot write to the Hugging Face cache at {lock} (permission denied); make it writable, "
        "or set HF_HOME to a writable folder"
    )
    elsewhere = message(OSError(30, "Read-only file system", "/srv/models/x/model.safetensors"))
    assert elsewhere.startswith("cannot access /srv/models/x/model.safetensors (read-only file system)")


def test_other_errors_are_not_hub_errors() -> None:
    assert hub_error_message(wrapped(ValueError("bad config")), "model", "org/x", INSTEAD) is None
    assert hub_error_message(FileNotFoundError(2, "No such file", "/x/config.json"), "model", "x", INSTEAD) is None
