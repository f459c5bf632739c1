"""The PEFT adapter format: loratune <-> PEFT round trips, atomic writes, and load errors."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_bert_cls, tiny_gpt2_lm, tiny_roberta_cls
from lora.test_model import QV, perturb
from loratune import LoraConfig, add_lora, list_adapters, load_adapter, save_adapter, set_adapter
from loratune.errors import AdapterFileError, AdapterShapeError, LoratuneError
from loratune.lora import read_adapter_config, read_adapter_shapes


def _train_steps(model, tokens, steps: int = 3) -> None:
    """A few real AdamW steps, so that A, B and the head are all non-zero and trained."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    labels = torch.arange(tokens.shape[0]) % 2
    for _ in range(steps):
        model(tokens, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_loratune_adapter_loads_in_peft_with_same_logits(tmp_path, tokens):
    base = tiny_bert_cls()
    model = add_lora(copy.deepcopy(base), LoraConfig(**QV, task_type="SEQ_CLS"))
    _train_steps(model, tokens)
    layer = model.bert.encoder.layer[1].attention.self.value
    assert layer.lora_B["default"].weight.abs().min() > 0 and layer.lora_A["default"].weight.abs().min() > 0
    expected = model(tokens).logits
    save_adapter(model, tmp_path / "ad")

    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.classifier.weight" in keys and "base_model.model.classifier.bias" in keys
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    for field in (
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "modules_to_save",
        "use_rslora",
        "fan_in_fan_out",
    ):
        assert field in config
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["modules_to_save"] == ["classifier"]

    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ad")).eval()
    assert (pm(tokens).logits - expected).abs().max() <= 1e-5


def test_peft_adapter_loads_in_loratune_with_same_logits(tmp_path, tokens):
    base = tiny_bert_cls()
    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"),
    )
    _train_steps(pm, tokens)
    expected = pm(tokens).logits
    pm.save_pretrained(str(tmp_path / "peft"))
    model = load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
    assert (model(tokens).logits - expected).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in model.parameters())  # loaded for inference


def test_gpt2_conv1d_roundtrip_with_peft(tmp_path, tokens):
    base = tiny_gpt2_lm()
    model = add_lora(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    perturb(model)
    expected = model(tokens).logits
    save_adapter(model, tmp_path / "g")
    assert json.loads((tmp_path / "g" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "g")).eval()
    assert (pm(tokens).logits - expected).abs().max() <= 1e-5


def test_roberta_head_and_second_adapter_roundtrip(tmp_path, tokens):
    base = tiny_roberta_cls()
    model = add_lora(copy.deepcopy(base), LoraConfig(**QV))
    perturb(model)
    expected = model(tokens).logits
    save_adapter(model, tmp_path / "r")
    keys = load_file(str(tmp_path / "r" / "adapter_model.safetensors"))
    assert "base_model.model.classifier.dense.weight" in keys and "base_model.model.classifier.out_proj.bias" in keys
    # Into a model that already holds another adapter, under a new name.
    other = add_lora(copy.deepcopy(base), LoraConfig(**QV), "other")
    load_adapter(other, tmp_path / "r", "sentiment")
    assert list_adapters(other) == ["other", "sentiment"]
    torch.testing.assert_close(other(tokens).logits, expected)
    set_adapter(other, "other")
    assert not torch.allclose(other(tokens).logits, expected)
    # Saving the loaded adapter again gives the same files.
    save_adapter(other, tmp_path / "again", "sentiment")
    a = json.loads((tmp_path / "r" / "adapter_config.json").read_text())
    b = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert a == b


def test_save_is_atomic_and_replaces(tmp_path, tokens, monkeypatch):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    save_adapter(model, tmp_path / "ad")
    before = (tmp_path / "ad" / "adapter_model.safetensors").read_bytes()
    perturb(model)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("loratune.lora.io.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]  # no temp litter
    monkeypatch.undo()
    save_adapter(model, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_model.safetensors").read_bytes() != before


def test_saved_files_follow_the_umask(tmp_path, umask):
    save_adapter(add_lora(tiny_bert_cls(), LoraConfig(**QV)), tmp_path / "ad")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ad").iterdir()}
    assert modes == dict.fromkeys(["adapter_config.json", "adapter_model.safetensors"], 0o666 & ~umask)


def test_old_peft_config_with_unknown_and_missing_fields(tmp_path, tokens):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV, task_type="SEQ_CLS"))
    perturb(model)
    expected = model(tokens).logits
    save_adapter(model, tmp_path / "ad")
    cfg_file = tmp_path / "ad" / "adapter_config.json"
    config = json.loads(cfg_file.read_text())
    for field in ("modules_to_save", "use_rslora", "fan_in_fan_out", "init_lora_weights", "rank_pattern"):
        config.pop(field)
    config["some_future_field"] = {"x": 1}
    config["enable_lora"] = None
    cfg_file.write_text(json.dumps(config))
    loaded = load_adapter(tiny_bert_cls(), tmp_path / "ad").eval()  # SEQ_CLS implies the classifier head
    torch.testing.assert_close(loaded(tokens).logits, expected)


def test_pickle_refused_unless_opted_in(tmp_path, tokens):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    perturb(model)
    expected = model(tokens).logits
    save_adapter(model, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    torch.save(tensors, tmp_path / "ad" / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match=r"pickle file.*save_pretrained\(.*safe_serialization=True\)") as err:
        load_adapter(tiny_bert_cls(), tmp_path / "ad")
    assert "--allow-pickle" not in str(err.value)  # no such option: the message names what exists
    with pytest.raises(AdapterFileError, match="pickle file"):
        read_adapter_shapes(tmp_path / "ad")
    assert read_adapter_shapes(tmp_path / "ad", allow_pickle=True) == {k: tuple(t.shape) for k, t in tensors.items()}
    loaded = load_adapter(tiny_bert_cls(), tmp_path / "ad", allow_pickle=True)
    torch.testing.assert_close(loaded(tokens).logits, expected)


def test_file_errors(tmp_path):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter(tiny_bert_cls(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match=r"has no adapter_config\.json"):
        load_adapter(tiny_bert_cls(), tmp_path / "empty")
    save_adapter(model, tmp_path / "ad")
    weights = tmp_path / "ad" / "adapter_model.safetensors"
    shapes = read_adapter_shapes(tmp_path / "ad")
    assert shapes == {k: tuple(t.shape) for k, t in load_file(str(weights)).items()}
    for size in (100, weights.stat().st_size - 8):  # a cut header, then cut tensor data
        weights.write_bytes(weights.read_bytes()[:size])
        with pytest.raises(AdapterFileError, match="corrupt or truncated"):
            load_adapter(tiny_bert_cls(), tmp_path / "ad")
        with pytest.raises(AdapterFileError, match="corrupt or truncated"):
            read_adapter_shapes(tmp_path / "ad")
    weights.unlink()
    with pytest.raises(AdapterFileError, match=r"has no adapter_model\.safetensors"):
        load_adapter(tiny_bert_cls(), tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        load_adapter(tiny_bert_cls(), tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(AdapterFileError, match="use_dora"):
        load_adapter(tiny_bert_cls(), tmp_path / "ad")


@pytest.mark.parametrize(
    "key,value",
    [("r", "8"), ("r", 0), ("r", True), ("lora_alpha", None), ("lora_dropout", "0.1"), ("use_rslora", 1),
     ("target_modules", ["query", 3]), ("modules_to_save", "classifier"), ("rank_pattern", []), ("task_type", 2)],
)  # fmt: skip
def test_config_field_of_the_wrong_type_is_named(tmp_path, key, value):
    save_adapter(add_lora(tiny_bert_cls(), LoraConfig(**QV)), tmp_path / "ad")
    cfg_file = tmp_path / "ad" / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), key: value}))
    with pytest.raises(AdapterFileError, match=f"'{key}' must be"):
        read_adapter_config(tmp_path / "ad")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    save_adapter(model, tmp_path / "ad")
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(
        BertConfig(
            vocab_size=120,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
        )
    )
    with pytest.raises(AdapterShapeError) as err:
        load_adapter(wider, tmp_path / "ad")
    msg = str(err.value)
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in msg
    assert "(4, 32)" in msg and "(4, 48)" in msg
    assert not any(type(m).__name__ == "LoraLinear" for m in wider.modules())  # model left untouched
    two_labels = tiny_bert_cls(num_labels=2)
    with pytest.raises(AdapterShapeError, match=r"classifier\.(weight|bias).*shape \(3,( 32)?\).*expects \(2,( 32)?\)"):
        load_adapter(two_labels, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    tensors["base_model.model.bert.encoder.layer.9.attention.self.query.lora_A.weight"] = torch.zeros(4, 32)
    tensors["base_model.model.bert.encoder.layer.9.attention.self.query.lora_B.weight"] = torch.zeros(32, 4)
    save_file(tensors, str(tmp_path / "ad" / "adapter_model.safetensors"))
    with pytest.raises(AdapterShapeError, match=r"layer\.9\.attention\.self\.query.*does not have"):
        load_adapter(tiny_bert_cls(), tmp_path / "ad")


def test_all_errors_are_loratune_errors_with_one_line():
    for cls in (AdapterFileError, AdapterShapeError):
        assert issubclass(cls, LoratuneError)


def test_a_disk_error_while_saving_tensors_is_an_os_error_naming_the_file(tmp_path):
    import errno

    from loratune.lora.io import save_tensors

    path = tmp_path / ("o" * 300)
    with pytest.raises(OSError) as raised:
        save_tensors({"w": torch.zeros(2)}, path)
    assert raised.value.errno == errno.ENAMETOOLONG and raised.value.filename == str(path)
