"""The CUDA path: the same engine and loop on a GPU, fp32 and bf16. Skipped where there is no GPU."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import tiny_bert_cls
from lora.test_model import QV, perturb
from loratune import BASE, LoraConfig, add_lora, merge_adapter, mixed_adapters, set_adapter, unmerge_adapter
from loratune.train.flops import matmul_peak_flops
from loratune.train.precision import resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def native_bf16() -> bool:
    """bf16 in hardware (compute capability 8.0+), as resolve_precision wants; emulation does not count."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


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
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if native_bf16() else "fp32")


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


def cli_args(model, data, out) -> list[str]:
    return ["train", "--model", str(model), "--dataset", str(data), "--output", str(out),
            "--max-length", "32", "--batch-size", "8", "--epochs", "2", "--device", "cuda",
            "--no-progress"]  # fmt: skip


def test_cli_train_pause_and_resume_on_cuda(tiny_model_dir, toy_data, tmp_path):
    """96 rows, batch 8, 2 epochs: 24 steps, paused at 6, then resumed to the end."""
    from loratune.cli import main

    out = tmp_path / "gpu"
    assert main([*cli_args(tiny_model_dir, toy_data, out), "--pause-at-step", "6"]) == 0
    paused = json.loads((out / "summary.json").read_text())
    assert paused["paused"] is True and paused["final"]["step"] == 6
    assert main([*cli_args(tiny_model_dir, toy_data, out), "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["paused"] is False and summary["resumed_from_step"] == 6 and summary["final"]["step"] == 24
    assert summary["device"].startswith("cuda") and summary["peak_memory_bytes"] > 0
    assert summary["precision"] == ("bf16" if native_bf16() else "fp32")
    assert 0 < summary["mfu"] < 1


def test_peak_memory_is_the_training_peak(tiny_model_dir, toy_data, tmp_path):
    """The tiny run's peak, not the MFU benchmark's 8192 x 8192 matrices (needs run.py to read it first)."""
    from loratune.cli import main

    out = tmp_path / "peak"
    assert main([*cli_args(tiny_model_dir, toy_data, out), "--max-steps", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["peak_memory_bytes"] < 2 * 8192**2 * 2  # two bf16 benchmark matrices


def test_matmul_peak_runs_on_the_given_device():
    """Timed on the device asked for (the last one), and no other device allocates anything."""
    count = torch.cuda.device_count()
    device = torch.device(f"cuda:{count - 1}")
    for i in range(count):
        torch.cuda.reset_peak_memory_stats(i)
    before = [torch.cuda.max_memory_allocated(i) for i in range(count)]
    precision = "bf16" if native_bf16() else "fp32"
    flops = matmul_peak_flops(device, precision, n=4096)
    assert math.isfinite(flops) and flops > 0
    element = 2 if precision == "bf16" else 4
    assert torch.cuda.max_memory_allocated(device) >= before[-1] + 3 * 4096**2 * element
    assert [torch.cuda.max_memory_allocated(i) for i in range(count - 1)] == before[:-1]
