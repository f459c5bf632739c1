"""The multi-adapter runtime: shared trunk, mixed batches equal to one adapter at a time, checks, LRU, threads."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from conftest import ADAPTERS, TEXTS, assert_close, make_adapter, make_lm_registry
from loratune.artifacts import load_artifact
from loratune.errors import (
    AdapterNameError,
    AdapterShapeError,
    AdapterUnavailableError,
    LoratuneError,
    TargetModulesError,
    UnknownAdapterError,
)
from loratune.models import load_tokenizer
from loratune.serve.runtime import Runtime
from loratune.tasks import get_task


def test_list_describes_every_adapter(registry):
    records = {r["name"]: r for r in Runtime(registry).list()}
    assert sorted(records) == sorted(ADAPTERS)
    topic = records["topic"]
    assert topic["task"] == "seq-cls" and topic["labels"] == ["sport", "news", "art"] and topic["r"] == 2
    assert sorted(topic["target_modules"]) == ["dense", "key"]
    assert topic["size_bytes"] == (registry / "topic" / "adapter" / "adapter_model.safetensors").stat().st_size
    assert topic["metric"] == {"name": "accuracy", "value": 0.6, "split": "best"}
    assert (topic["loaded"], topic["pinned"], topic["available"]) == (False, False, True)


def test_list_reports_a_broken_adapter_and_an_odd_name_and_skips_folders_without_one(registry, tmp_path):
    import shutil

    shutil.copytree(registry / "sent", tmp_path / "reg" / "good")
    shutil.copytree(registry / "sent" / "adapter", tmp_path / "reg" / "broken")
    (tmp_path / "reg" / "broken" / "adapter_config.json").write_text("{not json")
    shutil.copytree(registry / "sent" / "adapter", tmp_path / "reg" / "odd.name")
    (tmp_path / "reg" / "notes").mkdir()
    records = {r["name"]: r for r in Runtime(tmp_path / "reg").list()}
    assert sorted(records) == ["broken", "good", "odd.name"]
    assert records["good"]["available"] and records["good"]["metric"]["value"] == 0.5
    assert not records["odd.name"]["available"] and "not a safe identifier" in records["odd.name"]["error"]
    assert not records["broken"]["available"] and "not valid JSON" in records["broken"]["error"]


def test_each_adapter_predicts_as_loaded_alone(registry, offline):
    rt = Runtime(registry)
    for name in ADAPTERS:
        for got, want in zip(rt.predict(name, TEXTS), offline[name], strict=True):
            assert_close(got, want)
    assert any(r["entities"] for r in offline["ner"])  # the token-cls comparison covers entities


def test_adapters_share_one_trunk(registry):
    rt = Runtime(registry)
    for name in ADAPTERS:
        rt.load(name)
    trunks = {id(rt._entry(n).model.bert) for n in ADAPTERS}
    assert trunks == {id(rt._trunk)}
    query = rt._trunk.encoder.layer[0].attention.self.query
    assert set(query.lora_A) == {"sent", "ner"}
    assert len({id(rt._entry(n).tokenizer) for n in ADAPTERS}) == 1  # the same tokenizer files: loaded once


def test_adapters_with_their_own_tokenizer_keep_it(registry, tmp_path):
    import shutil

    reg = tmp_path / "reg"
    for name in ("sent", "topic"):
        shutil.copytree(registry / name, reg / name)
    config = reg / "topic" / "adapter" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 17}))
    rt = Runtime(reg)
    rt.load("sent")
    rt.load("topic")
    assert rt._entry("topic").tokenizer.model_max_length == 17 != rt._entry("sent").tokenizer.model_max_length


@pytest.mark.parametrize(("batch_size", "forwards"), [(32, [4, 8]), (3, [1, 2, 3, 3, 3])])
def test_mixed_batch_equals_one_adapter_at_a_time(registry, offline, batch_size, forwards):
    rt = Runtime(registry, batch_size=batch_size)
    items = [(name, text) for text in TEXTS for name in ("topic", "ner", "sent")]
    calls = []
    forward = rt._trunk_forward
    rt._trunk_forward = lambda batch, names: calls.append(list(names)) or forward(batch, names)
    got = rt.predict_mixed(items)
    for (name, text), record in zip(items, got, strict=True):
        assert_close(record, offline[name][TEXTS.index(text)])
    assert sorted(len(c) for c in calls) == forwards  # one trunk forward per task family (per batch_size)


def test_unload_makes_an_adapter_unavailable_until_loaded(registry, offline):
    rt = Runtime(registry)
    rt.load("sent")
    rt.unload("sent")
    with pytest.raises(AdapterUnavailableError, match="was unloaded; load it again"):
        rt.predict("sent", TEXTS[:1])
    assert {r["name"]: r["available"] for r in rt.list()}["sent"] is False
    rt.load("sent")
    assert_close(rt.predict("sent", TEXTS[:1])[0], offline["sent"][0])
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'"):
        rt.predict("nope", TEXTS[:1])
    with pytest.raises(UnknownAdapterError, match=r"'__base__' .* is served for language models only"):
        rt.predict_mixed([("sent", "a"), ("__base__", "b")])


def test_lru_eviction_reloads_on_demand_and_keeps_pinned(registry, offline):
    rt = Runtime(registry, max_adapters=2)
    rt.pin("sent")
    rt.load("topic")
    rt.load("ner")  # evicts topic (sent is pinned)
    assert rt.loaded() == ["sent", "ner"] and rt.evictions == 1
    assert "topic" not in rt._trunk.encoder.layer[0].attention.self.key.lora_A
    assert_close(rt.predict("topic", TEXTS[:1])[0], offline["topic"][0])  # reloaded, evicting ner
    assert rt.loaded() == ["sent", "topic"] and rt.evictions == 2
    rt.unpin("sent")
    rt.load("ner")
    assert rt.loaded() == ["topic", "ner"] and rt.evictions == 3


def test_memory_budget_evicts(registry):
    sizes = {r["name"]: r["size_bytes"] for r in Runtime(registry).list()}
    rt = Runtime(registry, adapter_memory_mb=(sizes["sent"] + sizes["topic"] + 1) / 2**20)
    rt.load("sent")
    rt.load("topic")
    assert rt.evictions == 0
    rt.load("ner")
    assert "sent" not in rt.loaded() and rt.evictions >= 1


def test_too_small_a_budget_for_one_request_is_an_error(registry):
    rt = Runtime(registry, max_adapters=1)
    with pytest.raises(LoratuneError, match="exceed the adapter budget"):
        rt.predict_mixed([("sent", "a"), ("topic", "b")])


@pytest.mark.parametrize("name", ["..", "../x", "/etc", ".hidden", "a/b", ""])
def test_unsafe_names_are_refused(registry, name):
    with pytest.raises(AdapterNameError):
        Runtime(registry).load(name)


def test_symlink_outside_the_registry_is_refused(registry, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (registry / "escape").symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(AdapterNameError, match="outside the registry"):
            Runtime(registry).load("escape")
        assert "escape" not in Runtime(registry).names()
    finally:
        os.unlink(registry / "escape")


@pytest.mark.parametrize("link", ["adapter", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"])
def test_a_symlink_below_the_adapter_name_is_refused(registry, tmp_path, link):
    import shutil

    reg, outside = tmp_path / "reg", tmp_path / "outside"
    shutil.copytree(registry / "sent", reg / "escape")
    shutil.copytree(registry / "sent" / "adapter", outside)
    target = reg / "escape" / link
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(outside / link.removeprefix("adapter").lstrip("/"))
    with pytest.raises(AdapterNameError, match="outside the registry"):
        Runtime(reg).load("escape")
    assert Runtime(reg).names() == []


@pytest.mark.parametrize("folder", ["sst2.v1", "my adapter", "sentiment-é", "x" * 65])
def test_a_folder_whose_name_is_not_an_adapter_name_is_listed_unavailable_with_the_reason(registry, tmp_path, folder):
    import shutil

    reg = tmp_path / "reg"
    shutil.copytree(registry / "sent", reg / "sent")
    shutil.copytree(registry / "sent", reg / folder)
    shutil.copytree(registry / "sent", reg / ".hidden")  # hidden, as ls hides it
    rt = Runtime(reg)
    assert rt.names() == ["sent"]
    records = {r["name"]: r for r in rt.list()}
    assert sorted(records) == sorted(["sent", folder])
    assert records[folder]["available"] is False and "not a safe identifier" in records[folder]["error"]
    assert "rename or copy the folder" in records[folder]["error"] and records["sent"]["available"] is True


def test_a_symlink_out_of_the_registry_is_listed_unavailable_with_the_reason(registry, tmp_path):
    import shutil

    reg = tmp_path / "reg"
    shutil.copytree(registry / "sent", tmp_path / "outside")
    reg.mkdir()
    (reg / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (record,) = Runtime(reg).list()
    assert record["name"] == "escape" and record["available"] is False and "outside the registry" in record["error"]


def test_an_adapter_retrained_in_place_serves_its_new_labels_once_reloaded(registry, offline, tmp_path):
    import shutil

    shutil.copytree(registry / "topic", tmp_path / "reg" / "model")
    rt = Runtime(tmp_path / "reg")
    assert_close(rt.predict("model", TEXTS[:1])[0], offline["topic"][0])
    shutil.rmtree(tmp_path / "reg" / "model")
    shutil.copytree(registry / "sent", tmp_path / "reg" / "model")  # retrained: two labels instead of three
    rt.unload("model")
    rt.load("model")
    assert rt.describe("model")["labels"] == ["negative", "positive"]
    assert_close(rt.predict("model", TEXTS[:1])[0], offline["sent"][0])


def test_adapter_of_another_base_is_refused(registry, tiny_model_dir, tmp_path):
    from transformers import BertConfig, BertModel

    other = tmp_path / "other-bert"
    torch.manual_seed(7)
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(other)  # fmt: skip
    load_tokenizer(str(tiny_model_dir)).save_pretrained(other)
    make_adapter(tmp_path / "reg" / "wide", other, "seq-cls", ["a", "b"], 2, ["query"], 0)
    info = json.loads((tmp_path / "reg" / "wide" / "loratune.json").read_text())
    rt = Runtime(registry, model=str(tiny_model_dir))  # explicit: the name check is off, the weights decide
    rt.load("sent")
    rt.registry = tmp_path / "reg"  # same served base, an adapter trained on another one
    with pytest.raises(AdapterShapeError, match="embeddings differ"):
        rt.load("wide")
    info["base_model_fingerprint"] = None
    (tmp_path / "reg" / "wide" / "loratune.json").write_text(json.dumps(info))
    rt._entries.pop("wide")
    with pytest.raises(AdapterShapeError, match="does not fit"):
        rt.load("wide")


def test_adapter_naming_another_base_is_refused(registry, tmp_path):
    import shutil

    shutil.copytree(registry / "sent" / "adapter", tmp_path / "reg" / "other")
    info = json.loads((tmp_path / "reg" / "other" / "loratune.json").read_text())
    (tmp_path / "reg" / "other" / "loratune.json").write_text(json.dumps({**info, "base_model": "another/model"}))
    rt = Runtime(registry)
    rt.load("sent")
    rt.registry = tmp_path / "reg"
    with pytest.raises(AdapterShapeError, match=r"trained on 'another/model'.*one base model per registry"):
        rt.load("other")
    served = Runtime(tmp_path / "reg", model=info["base_model"])  # an explicit model serves it (same weights)
    assert served.predict("other", ["a"])[0]["label"] in ("negative", "positive")


def test_a_peft_saved_adapter_takes_its_labels_from_its_head(registry, offline, tmp_path):
    import shutil

    shutil.copytree(registry / "topic" / "adapter", tmp_path / "reg" / "peft")
    (tmp_path / "reg" / "peft" / "loratune.json").unlink()
    got = Runtime(tmp_path / "reg", model=json.loads((registry / "topic" / "adapter" / "loratune.json").read_text())[
        "base_model"]).predict("peft", TEXTS[:1])[0]  # fmt: skip
    assert list(got["probs"]) == ["0", "1", "2"]
    assert list(got["probs"].values()) == pytest.approx(list(offline["topic"][0]["probs"].values()), abs=1e-5)


def test_targets_matching_nothing_are_refused(registry, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    reg = tmp_path / "reg"
    shutil.copytree(registry / "sent" / "adapter", reg / "odd")
    weights = reg / "odd" / "adapter_model.safetensors"
    tensors = {
        k.replace(".query.", ".nosuch.").replace(".value.", ".nosuch2."): v for k, v in load_file(weights).items()
    }
    save_file(tensors, weights)
    with pytest.raises(TargetModulesError, match="match no layer"):
        Runtime(reg).load("odd")


def test_threads_predict_while_another_loads_and_unloads(registry, offline):
    rt = Runtime(registry)
    rt.load("sent")
    answers, errors = [], []

    def ask() -> None:
        try:
            for _ in range(5):
                answers.append(rt.predict("sent", TEXTS[:2]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def churn() -> None:
        try:
            for _ in range(20):
                rt.load("topic")
                rt.unload("topic")
        except Exception as err:  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(2)] + [threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(answers) == 10
    for got in answers:
        for g, w in zip(got, offline["sent"][:2], strict=True):
            assert_close(g, w)


def test_causal_lm_adapters_share_a_trunk_and_complete_as_loaded_alone(tiny_llama_bf16_dir, tmp_path):
    reg = make_lm_registry(tmp_path / "lm-registry", tiny_llama_bf16_dir)
    prompts = ["the movie was", "good and bad"]
    offline = {}
    for name in ("chat", "poet"):
        loaded = load_artifact(reg / name / "adapter")
        offline[name] = get_task("causal-lm").predict(
            loaded.model, loaded.tokenizer, prompts, loaded.info, max_length=32
        )
    rt = Runtime(reg)
    items = [(n, p) for p in prompts for n in ("chat", "poet")]
    got = rt.predict_mixed(items)
    assert got == [offline[n][prompts.index(p)] for n, p in items]
    assert offline["chat"] != offline["poet"]
    assert rt._entry("chat").model.model is rt._entry("poet").model.model is rt._trunk


def test_base_weights_are_never_modified(registry, tiny_model_dir):
    from transformers import AutoModel

    rt = Runtime(registry, max_adapters=1)
    rt.predict_mixed([("sent", TEXTS[0])])
    rt.predict_mixed([("ner", TEXTS[2])])
    rt.predict_mixed([("topic", TEXTS[1])])
    assert rt.evictions == 2 and rt.loaded() == ["topic"]
    fresh = AutoModel.from_pretrained(tiny_model_dir).state_dict()
    served = {k.replace(".base_layer.", "."): v for k, v in rt._trunk.state_dict().items() if ".lora_" not in k}
    assert served.keys() == fresh.keys()
    assert all(torch.equal(served[k], fresh[k]) for k in fresh)
    assert [n for n, m in rt._trunk.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0]


def test_decoder_classifiers_mix_on_a_llama_trunk(tiny_llama_bf16_dir, tmp_path):
    """Llama classifiers read the last real token of each row: right padding in the mixed batch keeps it."""
    reg = tmp_path / "llama-registry"
    make_adapter(reg / "two" / "adapter", tiny_llama_bf16_dir, "seq-cls", ["a", "b"], 4, ["q_proj"], 0, head="score")
    make_adapter(reg / "three" / "adapter", tiny_llama_bf16_dir, "seq-cls", ["x", "y", "z"], 2, ["v_proj"], 1, "score")
    texts = ["the movie was good", "bad", "really dull and boring plot"]
    offline = {}
    for name in ("two", "three"):
        loaded = load_artifact(reg / name / "adapter")
        offline[name] = get_task("seq-cls").predict(loaded.model, loaded.tokenizer, texts, loaded.info, max_length=32)
    items = [(n, t) for t in texts for n in ("three", "two")]
    for (name, text), record in zip(items, Runtime(reg).predict_mixed(items), strict=True):
        assert_close(record, offline[name][texts.index(text)])
