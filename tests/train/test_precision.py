import contextlib

import pytest
import torch

from loratune.errors import RunError
from loratune.train import precision
from loratune.train.precision import (
    autocast_context,
    grad_scaler,
    resolve_device,
    resolve_precision,
    store_frozen_linears,
)

CPU = torch.device("cpu")


def _flags(monkeypatch, flags):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))


def test_resolve_device():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("cpu") == CPU
    with pytest.raises(RunError, match="--device"):
        resolve_device("banana")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(RunError, match="--device cpu"):
        resolve_device("cuda")


def test_auto_on_cpu_follows_flags(monkeypatch):
    _flags(monkeypatch, {"fpu", "avx2"})
    assert resolve_precision("auto", CPU) == "fp32"
    _flags(monkeypatch, {"avx512f", "avx512_bf16"})
    assert resolve_precision("auto", CPU) == "bf16"
    _flags(monkeypatch, {"amx_bf16"})
    assert resolve_precision("AUTO", CPU) == "bf16"


def test_explicit_precisions(monkeypatch):
    _flags(monkeypatch, set())
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("float32", CPU) == "fp32"
    with pytest.raises(RunError, match="--precision fp32"):
        resolve_precision("bf16", CPU)
    with pytest.raises(RunError, match="--precision fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(RunError, match="unknown precision"):
        resolve_precision("int3", CPU)
    _flags(monkeypatch, {"avx512_bf16"})
    assert resolve_precision("bfloat16", CPU) == "bf16"


def test_real_cpu_flags_parse():
    assert isinstance(precision._cpu_flags(), frozenset)
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")


def test_autocast_context():
    assert isinstance(autocast_context("fp32", CPU), contextlib.nullcontext)
    lin = torch.nn.Linear(4, 4)
    with autocast_context("bf16", CPU):
        out = lin(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32
    with pytest.raises(ValueError):
        autocast_context("auto", CPU)


def test_grad_scaler_disabled_off_fp16():
    assert not grad_scaler("fp32", CPU).is_enabled()
    assert not grad_scaler("bf16", CPU).is_enabled()


def _lora_bert():
    from conftest import tiny_bert_cls
    from loratune import LoraConfig, add_lora

    config = LoraConfig(r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    return add_lora(tiny_bert_cls(), config)


def _loss_and_grads(model, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_frozen_linears_stored_in_bf16_give_the_same_loss_and_gradients():
    from torch import nn

    ref, stored = _lora_bert(), _lora_bert()
    stored.load_state_dict(ref.state_dict())
    count = store_frozen_linears(stored, "bf16")
    frozen = [m for m in stored.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]
    assert count == len(frozen) > 0
    assert all(m.weight.dtype == torch.bfloat16 and m.bias.dtype == torch.bfloat16 for m in frozen)
    assert all(p.dtype == torch.float32 for p in stored.parameters() if p.requires_grad)  # adapters, head
    assert stored.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    batch = {"input_ids": torch.randint(0, 120, (3, 10)), "labels": torch.tensor([0, 1, 2])}
    loss_a, grads_a = _loss_and_grads(ref, batch)
    loss_b, grads_b = _loss_and_grads(stored, batch)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=name)


def test_fp32_tied_weights_and_frozen_adapters_keep_their_dtype():
    from conftest import tiny_gpt2_lm
    from loratune import LoraConfig, add_lora, set_adapter

    assert store_frozen_linears(_lora_bert(), "fp32") == 0
    model = tiny_gpt2_lm()
    add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["c_attn"]), adapter_name="one")
    add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["c_attn"]), adapter_name="two")
    set_adapter(model, "two")  # "one" is now frozen, yet an adapter: it keeps fp32
    assert store_frozen_linears(model, "bf16") > 0
    assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16  # a frozen Conv1D
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: left alone
    assert model.lm_head.weight.dtype == torch.float32
    layer = model.transformer.h[0].attn.c_attn
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert {layer.lora_A[n].weight.dtype for n in ("one", "two")} == {torch.float32}
