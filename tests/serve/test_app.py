"""The HTTP server, through uvicorn on a loopback port and a real HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import ADAPTERS, TEXTS, assert_close, serving
from loratune.serve.app import ServeSettings, create_app
from loratune.serve.runtime import Runtime
from loratune.serve.schemas import Limits


@pytest.fixture(scope="module")
def url(registry):
    limits = Limits(max_texts=16, max_text_chars=200, max_body_bytes=20_000)
    with serving(create_app(Runtime(registry), ServeSettings(limits=limits))) as base:
        yield base


def post(url: str, path: str, body=None, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kw)


def predictions(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_each_adapter_answers_as_loaded_alone(url, offline):
    for name in ADAPTERS:
        got = predictions(post(url, "/v1/predict", {"adapter": name, "texts": TEXTS}))
        for g, want in zip(got, offline[name], strict=True):
            assert g.pop("adapter") == name
            assert_close(g, want)
    assert any(r["entities"] for r in offline["ner"])


@pytest.mark.parametrize("form", ["list", "items"])
def test_a_mixed_request_answers_each_item_with_its_adapter(url, offline, form):
    items = [{"adapter": name, "text": text} for text in TEXTS for name in ("ner", "topic", "sent")]
    got = predictions(post(url, "/v1/predict", items if form == "list" else {"items": items}))
    for item, record in zip(items, got, strict=True):
        assert record.pop("adapter") == item["adapter"]
        assert_close(record, offline[item["adapter"]][TEXTS.index(item["text"])])


def test_adapters_are_listed_loaded_pinned_and_unloaded(registry, offline):
    with serving(create_app(Runtime(registry, max_adapters=1))) as base:
        listed = {a["name"]: a for a in httpx.get(base + "/v1/adapters").json()["adapters"]}
        assert sorted(listed) == sorted(ADAPTERS)
        assert listed["topic"]["labels"] == ["sport", "news", "art"] and listed["topic"]["r"] == 2
        assert listed["topic"]["metric"] == {"name": "accuracy", "value": 0.6, "split": "best"}
        assert not any(a["loaded"] for a in listed.values())
        assert (
            post(base, "/v1/adapters/sent?pin=true").json() | {"loaded": True, "pinned": True}
            == post(base, "/v1/adapters/sent").json()
        )
        with pytest.raises(AssertionError):  # the pinned adapter fills the budget of one
            predictions(post(base, "/v1/predict", {"adapter": "topic", "texts": ["x"]}))
        assert post(base, "/v1/adapters/sent?pin=false").json()["pinned"] is False
        predictions(post(base, "/v1/predict", {"adapter": "topic", "texts": ["x"]}))  # evicts sent
        gone = httpx.delete(base + "/v1/adapters/ner")
        assert gone.status_code == 200 and gone.json()["available"] is False
        refused = post(base, "/v1/predict", {"adapter": "ner", "texts": ["x"]})
        assert refused.status_code == 404 and "was unloaded" in refused.json()["error"]["message"]
        assert post(base, "/v1/adapters/ner").json()["loaded"] is True
        assert_close(predictions(post(base, "/v1/predict", {"adapter": "ner", "texts": TEXTS[2:3]}))[0] | {},
                     {"adapter": "ner", **offline["ner"][2]})  # fmt: skip


def test_delete_then_post_serves_an_adapter_retrained_in_place(registry, offline, tmp_path):
    shutil.copytree(registry / "topic", tmp_path / "reg" / "model")
    with serving(create_app(Runtime(tmp_path / "reg"))) as base:
        predictions(post(base, "/v1/predict", {"adapter": "model", "texts": TEXTS[:1]}))
        shutil.rmtree(tmp_path / "reg" / "model")
        shutil.copytree(registry / "sent", tmp_path / "reg" / "model")  # retrained: two labels instead of three
        assert httpx.delete(base + "/v1/adapters/model").status_code == 200
        assert post(base, "/v1/adapters/model").json()["labels"] == ["negative", "positive"]
        got = predictions(post(base, "/v1/predict", {"adapter": "model", "texts": TEXTS[:1]}))[0]
        assert_close(got, {"adapter": "model", **offline["sent"][0]})


LONG = "x" * 201
BAD = [  # (method, path, body, status, words of the message)
    ("post", "/v1/predict", {"adapter": "nope", "texts": ["a"]}, 404, "unknown adapter 'nope'; the registry"),
    ("post", "/v1/predict", [{"adapter": "sent", "text": "a"}, {"adapter": "nope", "text": "b"}], 404, "'nope'"),
    ("post", "/v1/predict", {"adapter": "../etc", "texts": ["a"]}, 400, "not a folder name in the registry"),
    ("post", "/v1/predict", {"adapter": "__base__", "texts": ["a"]}, 404, "served for language models only"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": []}, 422, "texts is empty"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": ["a", "  "]}, 422, "texts[1] is empty"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": ["a", 7]}, 422, "texts[1]: Input should be a valid string"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": "a"}, 422, "texts: Input should be a valid list"),
    ("post", "/v1/predict", {"adapter": "sent"}, 422, 'pass "adapter" with "texts"'),
    ("post", "/v1/predict", {"adapter": "sent", "texts": ["a"], "extra": 1}, 422, "extra: Extra inputs"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": ["a"] * 17}, 413, "17 texts in one request, more than"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": [LONG]}, 413, "201 characters, more than the limit of 200"),
    ("post", "/v1/predict", {"adapter": "sent", "texts": ["é" * 190] * 16 * 4}, 413, "bytes, more than the limit"),
    ("post", "/v1/completions", {"model": "sent", "prompt": "hi"}, 400, "is a seq-cls adapter; completions need"),
    ("post", "/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "unknown adapter"),
    ("post", "/v1/completions", {"prompt": "hi"}, 422, "model: Field required"),
    ("post", "/v1/chat/completions", {"model": "sent", "messages": []}, 422, "messages: List should have at least"),
    ("post", "/v1/adapters/nope", None, 404, "unknown adapter 'nope'"),
    ("post", "/v1/adapters/.hidden", None, 400, "not a folder name"),
    ("delete", "/v1/adapters/nope", None, 404, "unknown adapter"),
    ("get", "/v1/nothing", None, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD, ids=[f"{b[3]}-{b[4][:30]}" for b in BAD])
def test_bad_input_gets_a_4xx_json_error_with_a_message(url, method, path, body, status, words):
    kw = {"json": body} if body is not None else {}
    response = httpx.request(method.upper(), url + path, timeout=60, **kw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["code"] == status
    assert "Traceback" not in response.text and "\n" not in error["message"]


def test_a_body_that_is_not_json_gets_422(url):
    response = httpx.post(url + "/v1/predict", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("the body is not valid JSON")


def test_a_key_protects_loading_and_unloading(registry):
    with serving(create_app(Runtime(registry), ServeSettings(api_key="s3cret"))) as base:
        for method in ("POST", "DELETE"):
            refused = httpx.request(method, base + "/v1/adapters/sent")
            assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
            wrong = httpx.request(method, base + "/v1/adapters/sent", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        assert post(base, "/v1/adapters/sent", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.delete(base + "/v1/adapters/sent", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert post(base, "/v1/predict", {"adapter": "topic", "texts": ["a"]}).status_code == 200  # open


def test_api_key_all_protects_every_route_but_health(registry):
    with serving(create_app(Runtime(registry), ServeSettings(api_key="k", api_key_all=True))) as base:
        for method, path in [("POST", "/v1/predict"), ("GET", "/v1/adapters"), ("GET", "/metrics"),
                             ("POST", "/v1/completions")]:  # fmt: skip
            assert httpx.request(method, base + path, json={}).status_code == 401, path
        assert httpx.get(base + "/health").json()["status"] == "ok"
        assert httpx.get(base + "/").status_code == 200
        ok = post(base, "/v1/predict", {"adapter": "topic", "texts": ["a"]}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200


def test_metrics_count_requests_per_adapter_and_batches(url):
    post(url, "/v1/predict", {"adapter": "topic", "texts": ["a", "b"]})
    post(url, "/v1/predict", {"adapter": "nope", "texts": ["a"]})
    text = httpx.get(url + "/metrics").text
    assert 'loratune_requests_total{adapter="topic",route="/v1/predict",status="200"}' in text
    assert 'loratune_requests_total{adapter="-",route="/v1/predict",status="404"}' in text  # no label from bad names
    assert 'adapter="nope"' not in text
    assert "loratune_request_seconds_bucket" in text and "loratune_batch_items_count" in text
    assert "loratune_adapters_loaded " in text and "loratune_adapter_evictions_total 0.0" in text


def test_docs_and_openapi(url):
    assert httpx.get(url + "/docs").status_code == 200
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/completions", "/v1/chat/completions", "/v1/adapters", "/v1/adapters/{name}"):
        assert path in paths


def test_load_test_across_adapters_while_one_is_hot_loaded_and_another_unloaded(registry, offline, tmp_path):
    """200 concurrent requests over 3 adapters; meanwhile a 4th, copied into the registry while the server
    runs, is loaded and used, and a 5th is unloaded: every answer equals the offline one, 0 errors, and
    every request for the unloaded adapter after its unload gets 404."""
    reg = tmp_path / "reg"
    shutil.copytree(registry, reg)
    shutil.copytree(registry / "sent", reg / "gone")
    runtime = Runtime(reg)
    app = create_app(runtime)
    with serving(app) as base:
        post(base, "/v1/adapters/gone")
        results = asyncio.run(_load_test(base, registry, reg))
    main, added, gone = results
    assert len(main) == 200
    for (name, i), response in main:
        assert response.status_code == 200, response.text
        record = response.json()["predictions"][0]
        assert record.pop("adapter") == name
        assert_close(record, offline[name][i])
    for i, response in added:
        assert response.status_code == 200, response.text
        assert_close(response.json()["predictions"][0], {"adapter": "added", **offline["topic"][i]})
    assert [r.status_code for r in gone] == [404] * 10
    assert all("was unloaded" in r.json()["error"]["message"] for r in gone)
    assert app.state.metrics.batch.collect()[0].samples  # batches were observed
    batches = {s.name: s.value for s in app.state.metrics.batch.collect()[0].samples if not s.labels.get("le")}
    assert batches["loratune_batch_items_sum"] >= 200 and batches["loratune_batch_items_count"] < 200  # shared


async def _load_test(base: str, registry: Path, reg: Path):
    names = ["sent", "topic", "ner"]
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(name: str, i: int):
            return (name, i), await client.post("/v1/predict", json={"adapter": name, "texts": [TEXTS[i]]})

        async def hot_load():
            await asyncio.to_thread(shutil.copytree, registry / "topic", reg / "added")  # trained meanwhile
            assert (await client.post("/v1/adapters/added")).status_code == 200
            bodies = [{"adapter": "added", "texts": [TEXTS[i % 4]]} for i in range(10)]
            answers = await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))
            return list(zip([i % 4 for i in range(10)], answers, strict=True))

        async def unload():
            assert (await client.delete("/v1/adapters/gone")).status_code == 200
            return await asyncio.gather(*(client.post("/v1/predict", json={"adapter": "gone", "texts": ["x"]})
                                          for _ in range(10)))  # fmt: skip

        main = [one(names[k % 3], k % 4) for k in range(200)]
        return await asyncio.gather(asyncio.gather(*main), hot_load(), unload())
