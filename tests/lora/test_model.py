"""add_lora and adapter management on tiny transformers, checked against PEFT where it applies."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from conftest import tiny_bert_cls, tiny_gpt2_lm, tiny_llama_lm, tiny_roberta_cls
from loratune import (
    BASE,
    LoraConfig,
    LoraLinear,
    ModulesToSaveWrapper,
    active_adapter,
    add_lora,
    delete_adapter,
    disable_adapter,
    list_adapters,
    merge_adapter,
    merge_and_unload,
    mixed_adapters,
    parameter_report,
    set_adapter,
    unmerge_adapter,
)
from loratune.errors import AdapterNameError, TargetModulesError, UnknownAdapterError

QV = dict(r=4, alpha=8, dropout=0.1, target_modules=["query", "value"], modules_to_save=["classifier"])


def perturb(model, seed: int = 0, scale: float = 0.3) -> None:
    """Give the trainable parameters trained-looking (non-zero) values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize(
    "factory,targets",
    [(tiny_bert_cls, ["query", "value"]), (tiny_llama_lm, ["q_proj", "v_proj"]), (tiny_gpt2_lm, ["c_attn"])],
)
def test_fresh_adapter_leaves_outputs_identical(factory, targets, tokens):
    base = factory()
    ref = base(tokens).logits
    model = add_lora(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=targets))
    assert torch.equal(model(tokens).logits, ref)


def test_only_lora_and_head_get_gradients_and_count_matches_peft(tokens):
    base = tiny_bert_cls()
    model = add_lora(copy.deepcopy(base), LoraConfig(**QV)).train()
    model(tokens, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert all(".lora_A." in n or ".lora_B." in n or "classifier.modules_to_save.default" in n for n in trainable)
    # B starts at zero, so A's gradient is zero on the first step; B and the head must get one.
    assert any(".lora_B." in n for n in with_grad) and any("classifier" in n for n in with_grad)

    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.1,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
            task_type="SEQ_CLS",
        ),
    )
    peft_trainable, peft_total = pm.get_nb_trainable_parameters()
    report = parameter_report(model)
    assert (report.trainable, report.total) == (peft_trainable, peft_total)
    assert str(report).startswith(f"trainable params: {peft_trainable:,d} || all params: {peft_total:,d}")
    assert report.trainable_bytes == 4 * report.trainable


def test_target_module_forms(tokens):
    base = tiny_bert_cls()
    suffix = add_lora(copy.deepcopy(base), LoraConfig(target_modules=["attention.self.query"]))
    assert len([n for n, _ in suffix.named_modules() if isinstance(_, LoraLinear)]) == 2
    regex = add_lora(copy.deepcopy(base), LoraConfig(target_modules=r".*layer\.0\..*(query|key)"))
    assert sorted(n for n, m in regex.named_modules() if isinstance(m, LoraLinear)) == [
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.query",
    ]
    every = add_lora(copy.deepcopy(base), LoraConfig(target_modules="all-linear", modules_to_save=["classifier"]))
    wrapped = {n for n, m in every.named_modules() if isinstance(m, LoraLinear)}
    assert len(wrapped) == 2 * 6 + 1  # q, k, v, attn out, intermediate, output per layer + pooler
    assert "classifier" not in wrapped
    lm = add_lora(tiny_llama_lm(), LoraConfig(target_modules="all-linear"))
    lm_wrapped = {n for n, m in lm.named_modules() if isinstance(m, LoraLinear)}
    assert "lm_head" not in lm_wrapped and len(lm_wrapped) == 2 * 7


def test_rslora_and_gaussian_init():
    model = add_lora(
        tiny_bert_cls(),
        LoraConfig(r=4, alpha=8, target_modules=["query"], use_rslora=True, init_lora_weights="gaussian"),
    )
    layer = model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(8 / 2)
    assert layer.lora_A["default"].weight.std().item() == pytest.approx(1 / 4, rel=0.2)


def test_switching_adapters_switches_head_and_trainability(tokens):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV), "a")
    perturb(model, seed=1)
    add_lora(model, LoraConfig(**QV), "b")
    perturb(model, seed=2)
    assert list_adapters(model) == ["a", "b"] and active_adapter(model) == "b"
    out_b = model(tokens).logits
    set_adapter(model, "a")
    out_a = model(tokens).logits
    assert not torch.allclose(out_a, out_b)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".a." in n or n.endswith(".a.weight") for n in trainable)
    assert isinstance(model.classifier, ModulesToSaveWrapper)
    assert model.classifier.active_adapter == "a"
    delete_adapter(model, "a")
    assert list_adapters(model) == ["b"] and active_adapter(model) == "b"
    torch.testing.assert_close(model(tokens).logits, out_b)


def test_disable_adapter_gives_base_outputs(tokens):
    base = tiny_bert_cls()
    ref = base(tokens).logits
    model = add_lora(copy.deepcopy(base), LoraConfig(**QV))
    perturb(model)
    assert not torch.allclose(model(tokens).logits, ref)
    with disable_adapter(model):
        torch.testing.assert_close(model(tokens).logits, ref)
    assert not torch.allclose(model(tokens).logits, ref)


@pytest.mark.parametrize("factory,targets", [(tiny_bert_cls, ["query", "value"]), (tiny_gpt2_lm, ["c_attn"])])
def test_merge_matches_unmerged_and_unmerge_restores(factory, targets, tokens):
    model = add_lora(factory(), LoraConfig(r=4, alpha=8, target_modules=targets))
    perturb(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    unmerged = model(tokens).logits
    merge_adapter(model)
    merged = model(tokens).logits
    assert (merged - unmerged).abs().max() <= 1e-4 * unmerged.abs().max()
    changed = [n for n, p in model.named_parameters() if "base_layer.weight" in n and not torch.equal(p, weights[n])]
    assert changed
    unmerge_adapter(model)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)


def test_merge_and_unload_returns_plain_model(tokens):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    perturb(model)
    expected = model(tokens).logits
    plain = merge_and_unload(model)
    assert not any(isinstance(m, LoraLinear | ModulesToSaveWrapper) for m in plain.modules())
    assert type(plain.classifier).__name__ == "Linear"
    torch.testing.assert_close(plain(tokens).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory", [tiny_bert_cls, tiny_roberta_cls])
def test_mixed_batch_equals_each_example_alone(factory, tokens):
    model = factory()
    for i, name in enumerate(["a", "b", "c"]):
        add_lora(
            model,
            LoraConfig(r=2 + 2 * i, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
            name,
        )
        perturb(model, seed=i)
    model.eval()
    names = ["c", BASE, "a", "b"]
    with mixed_adapters(model, names):
        mixed = model(tokens).logits
    for i, name in enumerate(names):
        if name == BASE:
            with disable_adapter(model):
                alone = model(tokens[i : i + 1]).logits
        else:
            set_adapter(model, name)
            alone = model(tokens[i : i + 1]).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_errors_have_clear_messages():
    model = tiny_bert_cls()
    with pytest.raises(TargetModulesError, match=r"matched no linear layer.*query, key, value.*dense|dense.*query"):
        add_lora(model, LoraConfig(target_modules=["q", "v"]))
    with pytest.raises(TargetModulesError) as err:
        add_lora(model, LoraConfig(target_modules=["q", "v"]))
    assert "classifier" in str(err.value) and "query" in str(err.value) and "\n" not in str(err.value)
    add_lora(model, LoraConfig(target_modules=["query"]), "ok")
    with pytest.raises(UnknownAdapterError, match=r"unknown adapter 'nope'; the model holds: 'ok'"):
        set_adapter(model, "nope")
    for bad in ["", "a.b", "../x", "__base__", "x" * 65, "has space"]:
        with pytest.raises(AdapterNameError, match="not a safe identifier"):
            add_lora(model, LoraConfig(target_modules=["query"]), bad)
    with pytest.raises(AdapterNameError, match="already exists"):
        add_lora(model, LoraConfig(target_modules=["query"]), "ok")
    model.eval()
    with (
        pytest.raises(UnknownAdapterError, match="unknown adapter 'zzz'"),
        mixed_adapters(model, ["ok", "zzz"]),
    ):
        pass


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(r=0), "rank r must be an integer >= 1"),
        (dict(alpha=0), "alpha must be > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(target_modules=[]), "target_modules is empty"),
    ],
)
def test_config_validation(kwargs, match):
    args = {"target_modules": ["query"], **kwargs}
    with pytest.raises(ValueError, match=match):
        LoraConfig(**args)
