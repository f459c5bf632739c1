"""Issue 26's server cases: the body limit however the body arrives, cross-site requests, a server that
answers its probes while the model is busy, the adapter budget, OpenAI's model list, and bad Unicode."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from conftest import serving
from loratune.serve.app import ServeSettings, create_app
from loratune.serve.runtime import Runtime
from loratune.serve.schemas import Limits


@pytest.fixture(scope="module")
def url(registry):
    limits = Limits(max_body_bytes=20_000)
    settings = ServeSettings(limits=limits, allowed_origins=("https://app.example",))
    with serving(create_app(Runtime(registry), settings)) as base:
        yield base


def _chunks(total: int, size: int = 4096):
    yield b'{"adapter": "sent", "texts": ["'
    for _ in range(total // size):
        yield b"a" * size
    yield b'"]}'


def test_a_chunked_body_over_the_limit_is_refused_while_read(url):
    sent = []

    def body():
        for chunk in _chunks(10_000_000):
            sent.append(len(chunk))
            yield chunk

    try:
        response = httpx.post(url + "/v1/predict", content=body(), headers={"content-type": "application/json"},
                              timeout=60)  # fmt: skip
    except httpx.HTTPError:  # the server answered and closed before the client sent it all
        pass
    else:
        assert response.status_code == 413, response.text
        assert "more than the limit of 20000" in response.json()["error"]["message"]
    assert sum(sent) < 10_000_000  # refused long before the end


def test_a_small_chunked_body_is_answered(url):
    response = httpx.post(url + "/v1/predict", content=_chunks(8192), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("origin", "status"), [("https://evil.example", 403), ("null", 403), ("https://app.example", 200), (None, 200)]
)
def test_a_cross_site_origin_is_refused(url, origin, status):
    headers = {"content-type": "text/plain"} | ({"origin": origin} if origin else {})
    response = httpx.post(url + "/v1/adapters/sent?pin=true", headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert "--allow-origin" in response.json()["error"]["message"]
        assert httpx.get(url + "/v1/adapters").json()["adapters"][1]["pinned"] is False
    assert httpx.get(url + "/health", headers={"origin": url}).status_code == 200  # the server's own page


def test_a_foreign_host_is_refused_on_loopback(registry):
    settings = ServeSettings(allowed_hosts=("localhost", "127.0.0.1", "::1"))
    with serving(create_app(Runtime(registry), settings)) as base:
        assert httpx.get(base + "/health").status_code == 200
        refused = httpx.get(base + "/health", headers={"host": "attacker.example"})
        assert refused.status_code == 421 and "attacker.example" in refused.json()["error"]["message"]
        port = base.rsplit(":", 1)[1]
        assert httpx.get(base + "/health", headers={"host": f"localhost:{port}"}).status_code == 200


class SlowRuntime(Runtime):
    """Each prediction holds the model lock for 8 s."""

    def predict_mixed(self, items, **kw):
        with self._lock:
            time.sleep(8)
            return super().predict_mixed(items, **kw)


def test_probes_answer_at_once_while_the_model_is_busy(registry):
    with serving(create_app(SlowRuntime(registry))) as base:
        body = {"adapter": "sent", "texts": ["x"]}
        busy = threading.Thread(target=lambda: httpx.post(base + "/v1/predict", json=body, timeout=60))
        busy.start()
        time.sleep(0.5)
        start = time.perf_counter()
        for path in ("/health", "/metrics", "/v1/adapters", "/v1/models", "/"):
            assert httpx.get(base + path, timeout=60).status_code == 200
        assert time.perf_counter() - start < 5  # none waited for the 8 s prediction
        assert busy.is_alive()
        busy.join(60)


def test_a_refused_third_adapter_is_not_left_loaded(registry):
    with serving(create_app(Runtime(registry, max_adapters=2))) as base:
        for name in ("sent", "topic"):
            assert httpx.post(base + f"/v1/adapters/{name}?pin=true").status_code == 200
        refused = httpx.post(base + "/v1/predict", json={"adapter": "ner", "texts": ["x"]})
        assert refused.status_code == 400 and "budget" in refused.json()["error"]["message"]
        listed = {a["name"]: a["loaded"] for a in httpx.get(base + "/v1/adapters").json()["adapters"]}
        assert listed == {"ner": False, "sent": True, "topic": True}
        assert httpx.get(base + "/health").json()["loaded"] == 2


def test_an_unloaded_pinned_adapter_is_unpinned(registry):
    with serving(create_app(Runtime(registry))) as base:
        assert httpx.post(base + "/v1/adapters/sent?pin=true").json()["pinned"] is True
        assert httpx.delete(base + "/v1/adapters/sent").json()["pinned"] is False
        assert httpx.post(base + "/v1/adapters/sent").json()["pinned"] is False  # a plain reload does not re-pin


def test_models_lists_the_served_adapters(url):
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list"
    assert sorted(m["id"] for m in models["data"]) == ["ner", "sent", "topic"]
    assert all(m["object"] == "model" for m in models["data"])


@pytest.mark.parametrize("body", [b'{"adapter": "sent", "texts": ["a\\ud800b"]}',
                                  b'{"items": [{"adapter": "sent", "text": "\\udc00"}]}'])  # fmt: skip
def test_a_lone_surrogate_is_a_422(url, body):
    response = httpx.post(url + "/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "lone surrogate" in response.json()["error"]["message"]
