"""The CUDA path: the same engine and loop on a GPU, fp32 and bf16. Skipped where there is no GPU."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import tiny_bert_cls
from lora.test_model import QV, perturb
from loratune import BASE, LoraConfig, add_lora, merge_adapter, mixed_adapters, set_adapter, unmerge_adapter
from loratune.train.precision import resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_lora_on_cuda_matches_cpu_fp32(tokens):
    cpu = add_lora(tiny_bert_cls(), LoraConfig(**QV))
    perturb(cpu)
    gpu = copy.deepcopy(cpu).cuda()
    torch.testing.assert_close(gpu(tokens.cuda()).logits.cpu(), cpu(tokens).logits, rtol=1e-4, atol=1e-4)
    merge_adapter(gpu)
    torch.testing.assert_close(gpu(tokens.cuda()).logits.cpu(), cpu(tokens).logits, rtol=1e-4, atol=1e-4)
    unmerge_adapter(gpu)


def test_bf16_autocast_training_step_on_cuda(tokens):
    model = add_lora(tiny_bert_cls(), LoraConfig(**QV)).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(tokens.cuda(), labels=torch.tensor([0, 1, 2, 0], device="cuda")).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_mixed_batch_on_cuda(tokens):
    model = tiny_bert_cls()
    for i, name in enumerate(["a", "b"]):
        add_lora(model, LoraConfig(**QV), name)
        perturb(model, seed=i)
    model = model.cuda().eval()
    names = ["a", BASE, "b", "a"]
    with mixed_adapters(model, names):
        mixed = model(tokens.cuda()).logits
    set_adapter(model, "b")
    torch.testing.assert_close(mixed[2:3], model(tokens[2:3].cuda()).logits, rtol=1e-4, atol=1e-4)


def test_cli_train_and_resume_on_cuda(tiny_model_dir, toy_data, tmp_path):
    from loratune.cli import main

    out = tmp_path / "gpu"
    args = ["train", "--model", str(tiny_model_dir), "--dataset", str(toy_data), "--output", str(out),
            "--max-length", "32", "--batch-size", "8", "--epochs", "2", "--device", "cuda",
            "--no-progress"]  # fmt: skip
    assert main([*args, "--max-steps", "6"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["peak_memory_bytes"] > 0
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
