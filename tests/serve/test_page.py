"""The playground page (``GET /``) in a real browser: Debian's headless Chromium driven by Playwright.

Each server is a real uvicorn in a thread on a free loopback port, serving random tiny adapters; the page's
answers are checked against the API's answers to the same texts (fetched with httpx). The tests skip where
playwright or Chromium is missing, unless ``LORATUNE_REQUIRE_BROWSER=1`` (``make test-browser`` sets it, after
installing both), where they fail instead. Screenshots go to a temporary folder, and are copied to the folder
``$LORATUNE_SHOTS`` names, when set, for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from conftest import TEXTS, make_adapter, serving
from loratune.serve.app import ServeSettings, create_app
from loratune.serve.runtime import Runtime

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("LORATUNE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
NER_TEXT = TEXTS[2]  # "Alice met Bob in Paris ."
PROMPT = "the movie was"
KEY = "open-sesame"


# ------------------------------------------------------------------------------------ browser, servers
def need_browser() -> None:
    """Skip (fail under ``LORATUNE_REQUIRE_BROWSER=1``) when playwright or Chromium is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (Debian's chromium package)")
    if missing:
        reason = f"no browser test: missing {' and '.join(missing)}; `make test-browser` installs what is missing"
        if os.environ.get("LORATUNE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def bert_url(browser, registry) -> Iterator[str]:
    """The serve conftest's registry (sent, topic: seq-cls; ner: token-cls on a tiny BERT), served."""
    with serving(create_app(Runtime(registry))) as url:
        yield url


@pytest.fixture(scope="module")
def lm_url(browser, tiny_llama_bf16_dir, tmp_path_factory) -> Iterator[str]:
    """A tiny Llama registry: "chat" (causal-lm) and "mood" (seq-cls), served."""
    root = tmp_path_factory.mktemp("lm-registry")
    make_lm_adapter(root / "chat" / "adapter", tiny_llama_bf16_dir)
    make_adapter(root / "mood" / "adapter", tiny_llama_bf16_dir, "seq-cls", ["calm", "angry"], 4, ["q_proj"], 0,
                 head="score")  # fmt: skip
    with serving(create_app(Runtime(root))) as url:
        yield url


def make_lm_adapter(folder: Path, base: Path) -> None:
    """A random causal-lm adapter on ``base`` with a plain prompt format (as test_runtime builds them)."""
    from loratune.artifacts import base_fingerprint
    from loratune.lora import LoraConfig, add_lora, save_adapter
    from loratune.models import load_tokenizer
    from loratune.tasks import get_task

    net = get_task("causal-lm").load_model(str(base), {})
    torch.manual_seed(0)
    add_lora(net, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    save_adapter(net, folder)
    load_tokenizer(str(base)).save_pretrained(folder)
    info = {"task": "causal-lm", "labels": None, "base_model": str(base), "max_length": 32, "data_format": "text",
            "prompt_format": "plain", "base_model_fingerprint": base_fingerprint(net)}  # fmt: skip
    (folder / "loratune.json").write_text(json.dumps(info))


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A fresh page (its own context: no shared storage) at 1280x800; no uncaught script error allowed."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)  # a first request loads its adapter; this is no speed check
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    page.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Callable[[Any, str], Path]:
    """``shoot(page, name)``: a full-page screenshot, also copied to ``$LORATUNE_SHOTS`` when set."""
    folder = tmp_path_factory.mktemp("screenshots")

    def take(page: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("LORATUNE_SHOTS"):
            Path(os.environ["LORATUNE_SHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(os.environ["LORATUNE_SHOTS"]) / path.name)
        return path

    return take


# ------------------------------------------------------------------------------------ page helpers
def open_page(page: Any, url: str) -> None:
    page.goto(url + "/")
    assert page.locator("#adapters").count() == 1, "GET / is not the playground page"  # fail now, not at a timeout
    page.locator(".adapter").first.wait_for()


def submit(page: Any, text: str) -> None:
    """Type ``text``, click Predict, and wait until the page shows the answer or an error."""
    page.fill("#text", text)
    page.eval_on_selector("#results", "el => { el.dataset.state = 'idle'; }")
    page.click("#predict")
    page.wait_for_function("['done', 'error'].includes(document.querySelector('#results').dataset.state)")


def marks(card: Any) -> list[tuple[str, int, int, str]]:
    """The highlighted entities of a card: (type, start, end, text)."""
    found = card.locator("mark.entity").evaluate_all(
        "ms => ms.map(m => [m.dataset.type, Number(m.dataset.start), Number(m.dataset.end), m.textContent])"
    )
    return [tuple(m) for m in found]


def spans(record: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    return [(e["type"], e["start"], e["end"], e["text"]) for e in record["entities"]]


def predictions(url: str, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The API's answers to a mixed request."""
    body = {"items": [{"adapter": name, "text": text} for name, text in items]}
    response = httpx.post(url + "/v1/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def check_label_card(card: Any, want: dict[str, Any]) -> None:
    """A seq-cls card shows the API's label, and one bar per label with its probability, the top one marked."""
    assert card.locator(".label").text_content() == want["label"]
    bars = card.locator(".bar").evaluate_all("bs => bs.map(b => [b.dataset.label, Number(b.dataset.prob)])")
    assert [b[0] for b in bars] == list(want["probs"])
    assert [b[1] for b in bars] == pytest.approx(list(want["probs"].values()), abs=1e-9)
    assert card.locator(".bar-value").all_text_contents() == [f"{p:.3f}" for p in want["probs"].values()]
    assert card.locator(".bar.top").get_attribute("data-label") == want["label"]


# ------------------------------------------------------------------------------------ tests
def test_the_page_lists_each_adapter_with_task_labels_rank_metric_and_state(page, bert_url):
    records = httpx.get(bert_url + "/v1/adapters").json()["adapters"]
    open_page(page, bert_url)
    assert page.locator(".adapter").evaluate_all("rows => rows.map(r => r.dataset.adapter)") == [
        r["name"] for r in records
    ]
    for r in records:
        row = page.locator(f'.adapter[data-adapter="{r["name"]}"]')
        field = lambda name, row=row: row.locator(f'[data-field="{name}"]').text_content()  # noqa: E731
        metric = r["metric"]
        assert field("task") == r["task"]
        assert field("labels") == f"{len(r['labels'])} labels"
        assert field("rank") == f"r={r['r']}"
        assert field("metric") == f"{metric['name']} {metric['value']:.3f} ({metric['split']})"
        assert field("state") in ("loaded", "not loaded", "pinned")


def test_a_prediction_shows_the_apis_label_and_probabilities(page, bert_url, shoot):
    (want,) = predictions(bert_url, [("topic", TEXTS[0])])
    open_page(page, bert_url)
    page.check("#adapter-topic")
    submit(page, TEXTS[0])
    cards = page.locator("#results .card")
    assert cards.count() == 1 and cards.get_attribute("data-adapter") == "topic"
    check_label_card(cards, want)
    assert page.locator("#error").is_hidden()
    shoot(page, "page-single")


def test_entities_are_highlighted_at_the_apis_spans(page, bert_url, shoot):
    (want,) = predictions(bert_url, [("ner", NER_TEXT)])
    assert want["entities"], "the random tagger finds no entity in the text: the test would check nothing"
    open_page(page, bert_url)
    page.check("#adapter-ner")
    submit(page, NER_TEXT)
    card = page.locator('#results .card[data-adapter="ner"]')
    assert marks(card) == spans(want)
    assert card.locator(".ner-text").text_content() == NER_TEXT  # the whole text, cut only at the spans
    titles = card.locator("mark.entity").evaluate_all("ms => ms.map(m => m.title)")
    assert titles == [f"{e['type']} · confidence {e['confidence']:.2f}" for e in want["entities"]]
    legend = card.locator(".legend li").all_text_contents()
    assert {e["type"] for e in want["entities"]} <= set(legend)
    shoot(page, "page-ner")


def test_entities_after_an_emoji_are_highlighted_at_the_apis_spans(page, bert_url):
    """The API counts code points; an emoji is one of them but two UTF-16 units in JavaScript."""
    text = "\U0001f600\U0001f44d " + NER_TEXT
    (want,) = predictions(bert_url, [("ner", text)])
    assert want["entities"], "the random tagger finds no entity in the text: the test would check nothing"
    open_page(page, bert_url)
    page.check("#adapter-ner")
    submit(page, text)
    card = page.locator('#results .card[data-adapter="ner"]')
    assert marks(card) == spans(want)
    assert card.locator(".ner-text").text_content() == text


def test_text_is_shown_as_text_never_as_markup(page, bert_url):
    text = 'Alice <img src=x onerror="window.pwned = 1"> <b>Paris</b>'
    open_page(page, bert_url)
    page.check("#adapter-ner")
    submit(page, text)
    assert page.locator(".ner-text").text_content() == text
    assert page.locator("#results img, #results b").count() == 0
    assert page.evaluate("window.pwned === undefined")


def test_mixed_mode_sends_one_request_and_shows_a_card_per_chosen_adapter(page, bert_url, shoot):
    order = ["ner", "sent", "topic"]  # the list's order (sorted names)
    want = dict(zip(order, predictions(bert_url, [(n, NER_TEXT) for n in order]), strict=True))
    open_page(page, bert_url)
    page.click('label[for="mode-mixed"]')
    for name in order:
        page.check(f"#adapter-{name}")
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/predict") else None)
    submit(page, NER_TEXT)
    assert sent == [{"items": [{"adapter": n, "text": NER_TEXT} for n in order]}]
    cards = page.locator("#results .card")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.adapter)") == order
    check_label_card(cards.nth(1), want["sent"])
    check_label_card(cards.nth(2), want["topic"])
    assert marks(cards.nth(0)) == spans(want["ner"])
    shoot(page, "page-mixed")

    page.uncheck("#adapter-sent")
    submit(page, NER_TEXT)
    assert sent[-1] == {"items": [{"adapter": n, "text": NER_TEXT} for n in ("ner", "topic")]}
    assert page.locator("#results .card").evaluate_all("cs => cs.map(c => c.dataset.adapter)") == ["ner", "topic"]


def error_message(url: str, path: str, body: dict[str, Any]) -> str:
    response = httpx.post(url + path, json=body, timeout=60)
    assert response.status_code >= 400
    return response.json()["error"]["message"]


def test_an_api_error_shows_its_message_and_an_unloaded_adapter_can_be_loaded_again(page, bert_url, shoot):
    open_page(page, bert_url)
    page.check("#adapter-sent")
    submit(page, "   ")
    assert page.locator("#error").is_visible()
    assert error_message(bert_url, "/v1/predict", {"adapter": "sent", "texts": ["   "]}) in page.text_content("#error")
    assert page.locator("#results .card").count() == 0

    assert httpx.delete(bert_url + "/v1/adapters/topic").status_code == 200
    try:
        page.click("#refresh")
        state = page.locator('.adapter[data-adapter="topic"] [data-field="state"]')
        state.filter(has_text="unloaded").wait_for()
        page.check("#adapter-topic")
        submit(page, TEXTS[0])
        message = error_message(bert_url, "/v1/predict", {"adapter": "topic", "texts": [TEXTS[0]]})
        assert message in page.text_content("#error")
        shoot(page, "page-error")
        page.click('button[data-load="topic"]')  # the page loads it again
        state.filter(has_text="loaded").wait_for()
        submit(page, TEXTS[0])
        assert page.locator("#error").is_hidden()
        assert page.locator('#results .card[data-adapter="topic"]').count() == 1
    finally:
        assert httpx.post(bert_url + "/v1/adapters/topic").status_code == 200


def test_the_api_key_is_sent_as_a_bearer_token_and_kept(page, registry):
    with serving(create_app(Runtime(registry), ServeSettings(api_key=KEY, api_key_all=True))) as url:
        page.goto(url + "/")
        refused = error_message(url, "/v1/predict", {"adapter": "sent", "texts": [TEXTS[0]]})
        page.locator("#error").filter(has_text=refused).wait_for()
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.locator(".adapter").first.wait_for()
        page.check("#adapter-sent")
        submit(page, TEXTS[0])
        (want,) = httpx.post(url + "/v1/predict", json={"adapter": "sent", "texts": [TEXTS[0]]},
                             headers={"Authorization": f"Bearer {KEY}"}).json()["predictions"]  # fmt: skip
        check_label_card(page.locator("#results .card"), want)
        page.reload()
        assert page.input_value("#api-key") == KEY  # kept in localStorage
        page.locator(".adapter").first.wait_for()


WATCH_COMPLETION = """() => {
  window.shown = [];  // every text the completion shows, as it grows
  new MutationObserver(() => {
    const out = document.querySelector('#results .completion');
    if (out) window.shown.push(out.textContent);
  }).observe(document.querySelector('#results'), {childList: true, subtree: true, characterData: true});
}"""


def test_a_completion_streams_into_the_page_and_equals_the_apis(page, lm_url, shoot):
    body = {"model": "chat", "prompt": PROMPT, "max_tokens": 12}
    want = httpx.post(lm_url + "/v1/completions", json=body, timeout=60).json()
    text = want["choices"][0]["text"]
    open_page(page, lm_url)
    page.check("#adapter-chat")
    page.fill("#max-tokens", "12")
    page.evaluate(WATCH_COMPLETION)
    submit(page, PROMPT)
    out = page.locator("#results .completion")
    assert out.text_content() == text
    assert int(out.get_attribute("data-chunks")) > 1
    shown = [s for s in dict.fromkeys(page.evaluate("window.shown")) if s]
    assert len(shown) > 1 and all(text.startswith(s) for s in shown), shown  # it grew, chunk by chunk
    assert f"{want['usage']['completion_tokens']} new tokens" in page.text_content(".lm-status")
    shoot(page, "page-completion")


def test_mixed_mode_mixes_a_causal_lm_with_a_classifier(page, lm_url):
    want = dict(zip(["chat", "mood"], predictions(lm_url, [("chat", PROMPT), ("mood", PROMPT)]), strict=True))
    open_page(page, lm_url)
    page.click('label[for="mode-mixed"]')
    page.check("#adapter-chat")
    page.check("#adapter-mood")
    submit(page, PROMPT)
    cards = page.locator("#results .card")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.adapter)") == ["chat", "mood"]
    assert cards.nth(0).locator(".completion").text_content() == want["chat"]["completion"]
    check_label_card(cards.nth(1), want["mood"])


def test_a_page_come_back_to_predicts_with_the_mode_and_adapter_it_shows(page, bert_url):
    open_page(page, bert_url)
    page.click('label[for="mode-mixed"]')
    page.goto(bert_url + "/health")
    page.go_back()  # the browser may restore the form it showed before
    page.locator(".adapter").first.wait_for()
    mode = page.eval_on_selector('input[name="mode"]:checked', "el => el.value")
    kind = page.eval_on_selector("#adapters input", "el => el.type")
    assert (mode, kind) in {("single", "radio"), ("mixed", "checkbox")}
    shown = page.eval_on_selector_all("#adapters input:checked", "els => els.map(e => e.value)")
    assert shown, "no adapter is shown as chosen"
    submit(page, "a fine film")
    assert page.eval_on_selector("#results", "el => el.dataset.state") == "done", page.inner_text("#error")
