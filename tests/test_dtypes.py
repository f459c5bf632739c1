"""Checkpoints stored in bf16 (Llama, Qwen, Gemma on the hub): fp32 master weights, and fp32 runs in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from loratune import LoraConfig, prepare_model
from loratune.cli import main
from loratune.models import head_module_names, load_model_for_sequence_classification
from loratune.train.precision import cpu_has_native_bf16

HALF = (torch.bfloat16, torch.float16)
needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")


def _floating(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: t for name, t in tensors.items() if t.is_floating_point()}


def _lora(model: nn.Module) -> LoraConfig:
    targets = ["q_proj", "v_proj"] if model.config.model_type == "llama" else ["query", "value"]
    return LoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=head_module_names(model))


def _batch(model: nn.Module) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}


def test_a_bf16_checkpoint_loads_in_fp32_unless_the_run_computes_in_bf16(tiny_llama_bf16_dir, tiny_model_dir):
    assert load_model_for_sequence_classification(str(tiny_llama_bf16_dir), 2).dtype == torch.float32
    kept = load_model_for_sequence_classification(str(tiny_llama_bf16_dir), 2, compute_dtype=torch.bfloat16)
    assert kept.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    stored_fp32 = load_model_for_sequence_classification(str(tiny_model_dir), 2, compute_dtype=torch.bfloat16)
    assert stored_fp32.dtype == torch.float32  # as stored: prepare_model puts its frozen linears in bf16


@pytest.mark.parametrize("folder", ["tiny_llama_bf16_dir", "tiny_bert_bf16_dir"])
def test_bf16_precision_keeps_the_frozen_base_in_bf16_and_trains_fp32_master_weights(folder, request):
    path = str(request.getfixturevalue(folder))
    model = load_model_for_sequence_classification(path, 2, compute_dtype=torch.bfloat16)
    prepare_model(model, _lora(model), precision="bf16")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not ("lora_" in n or "save." in n)]
    assert len(frozen) > 8 and {m.weight.dtype for m in frozen} == {torch.bfloat16}  # as stored
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**_batch(model)).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())


@pytest.mark.parametrize("folder", ["tiny_llama_bf16_dir", "tiny_bert_bf16_dir"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fp32_precision_computes_a_bf16_model_in_fp32(folder, method, request):
    """Loaded as stored (bf16), then prepared for fp32: every weight, buffer and the logits are fp32."""
    path = str(request.getfixturevalue(folder))
    model = load_model_for_sequence_classification(path, 2, compute_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    prepare_model(model, _lora(model) if method == "lora" else None, precision="fp32")
    assert {t.dtype for t in _floating(model).values()} == {torch.float32}
    out = model(**_batch(model))
    assert out.logits.dtype == torch.float32
    out.loss.backward()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_full_finetuning_of_a_bf16_model_trains_fp32_weights(tiny_llama_bf16_dir, precision):
    """All parameters train: all are fp32 master weights, whatever the checkpoint and autocast dtypes."""
    model = load_model_for_sequence_classification(str(tiny_llama_bf16_dir), 2, compute_dtype=torch.bfloat16)
    prepare_model(model, None, precision=precision)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_base_under_fp16_autocast_is_stored_in_fp16_not_mixed(tiny_llama_bf16_dir):
    """Another half dtype than the run's: the frozen base is upcast, then its linears stored in fp16."""
    model = load_model_for_sequence_classification(str(tiny_llama_bf16_dir), 2, compute_dtype=torch.bfloat16)
    prepare_model(model, _lora(model), precision="fp16")
    dtypes = {t.dtype for t in _floating(model).values()}
    assert torch.bfloat16 not in dtypes and dtypes == {torch.float32, torch.float16}


def _train(model: Path, data: Path, out: Path, precision: str, capsys) -> dict:
    argv = ["train", "--model", str(model), "--dataset", str(data), "--output", str(out), "--max-length", "32",
            "--batch-size", "8", "--max-steps", "3", "--precision", precision, "--no-progress", "--r", "4"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("folder", ["tiny_llama_bf16_dir", "tiny_bert_bf16_dir"])
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_loratune_train_on_a_bf16_checkpoint_saves_fp32_adapters_and_head(
    folder, precision, request, toy_data, tmp_path, capsys
):
    summary = _train(request.getfixturevalue(folder), toy_data, tmp_path / "run", precision, capsys)
    assert summary["precision"] == precision
    tensors = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors)
    assert any(k.endswith(("score.weight", "classifier.weight")) for k in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert (summary["frozen_linears_in_compute_dtype"] > 0) is (precision == "bf16")


@pytest.mark.parametrize("folder", ["tiny_llama_bf16_dir", "tiny_bert_bf16_dir"])
def test_the_run_s_model_for_fp32_is_fp32_throughout(folder, request, toy_data):
    from loratune.train.config import build_config
    from loratune.train.setup import prepare

    cfg = build_config(model=str(request.getfixturevalue(folder)), dataset=str(toy_data), precision="fp32")
    model = prepare(cfg).model
    assert {t.dtype for t in _floating(model).values()} == {torch.float32}
    assert model(**_batch(model)).logits.dtype == torch.float32
