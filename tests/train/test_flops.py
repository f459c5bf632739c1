"""train.flops: sampled FLOP counting and the matmul peak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loratune import LoraConfig, add_lora
from loratune.train.flops import FlopSampler, matmul_peak_flops


def _step(layer: nn.Module, rows: int) -> None:
    n_in = next(m for m in layer.modules() if isinstance(m, nn.Linear)).in_features
    x = torch.randn(rows, n_in, requires_grad=True)
    layer(x).sum().backward()


def test_counts_sampled_batches_and_extrapolates_by_tokens():
    layer = nn.Linear(16, 8, bias=False)
    sampler = FlopSampler(every=2)
    for i, rows in enumerate([10, 30, 10, 30]):  # batches 0 and 2 are counted
        with sampler.batch(i, padded_tokens=rows):
            _step(layer, rows)
    per_token = 6 * 16 * 8  # forward 2, input gradient 2, weight gradient 2
    assert sampler.sampled_tokens == 20 and sampler.sampled_flops == per_token * 20
    assert sampler.tokens == 80
    assert sampler.total == pytest.approx(per_token * 80)


def test_frozen_weights_count_no_weight_gradient_and_state_round_trips():
    layer = nn.Linear(16, 8, bias=False).requires_grad_(False)
    sampler = FlopSampler(every=1)
    with sampler.batch(0, padded_tokens=5):
        _step(layer, 5)
    assert sampler.total == 4 * 16 * 8 * 5
    restored = FlopSampler(every=1)
    restored.load_state(sampler.state())
    assert restored.total == sampler.total
    assert FlopSampler(every=0).total == 0.0


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_layer_counts_every_product_including_in_place_ones(dropout):
    """A LoRA layer accumulates with ``addmm_``, which torch's own counter skips."""
    n_in, n_out, r, rows = 32, 24, 4, 10
    model = nn.Sequential(nn.Linear(n_in, n_out))
    add_lora(model, LoraConfig(r=r, alpha=8, dropout=dropout, target_modules=["0"]))
    sampler = FlopSampler(every=1)
    with sampler.batch(0, padded_tokens=rows):
        _step(model, rows)
    frozen = 4 * n_in * n_out  # forward and input gradient (the input gradient is an addmm_)
    lora = 6 * r * (n_in + n_out)  # A and B: forward, input gradient, weight gradient
    assert sampler.total == (frozen + lora) * rows


def test_matmul_peak_is_positive():
    assert matmul_peak_flops("cpu", "fp32", n=256, repeats=2) > 1e8


def test_matmul_peak_on_cpu_times_single_2048_products(monkeypatch):
    shapes = []
    mm = torch.mm

    def spy(a, b, **kwargs):
        shapes.append((tuple(a.shape), a.dtype, kwargs))
        return mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    assert matmul_peak_flops("cpu", "bf16") > 0
    assert shapes == [((2048, 2048), torch.bfloat16, {})] * 6  # a warm-up and 5 timed products


def test_matmul_peak_on_cuda_halves_n_until_it_fits(monkeypatch):
    """The CUDA dispatch, without a GPU: the timing itself is faked."""
    from contextlib import nullcontext

    from loratune.train import flops

    tried, fits = [], {"n": 2048}

    def seconds(device, dtype, n, repeats, iters):
        tried.append((device, dtype, n, repeats, iters))
        if n > fits["n"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 1e-3

    monkeypatch.setattr(flops, "_cuda_matmul_seconds", seconds)
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert matmul_peak_flops("cuda:1", "bf16") == 2.0 * 2048**3 / 1e-3
    cuda1 = torch.device("cuda:1")
    assert tried == [(cuda1, torch.bfloat16, n, 3, 10) for n in (8192, 4096, 2048)]
    tried.clear()
    fits["n"] = 0
    with pytest.raises(torch.cuda.OutOfMemoryError):
        matmul_peak_flops("cuda", "fp32", n=4096)
    assert [t[2] for t in tried] == [4096, 2048, 1024]


def test_activation_checkpointing_recompute_is_not_counted():
    from conftest import tiny_bert_cls

    ids, labels = torch.randint(0, 120, (3, 16)), torch.tensor([0, 1, 2])
    totals = {}
    for checkpointing, discount in ((False, False), (True, False), (True, True)):
        model = tiny_bert_cls().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        sampler = FlopSampler(every=1, recomputes_forward=discount)
        with sampler.batch(0, padded_tokens=ids.numel()) as forward_done:
            loss = model(input_ids=ids, labels=labels).loss
            forward_done()
            loss.backward()
        totals[checkpointing, discount] = sampler.total
    plain, recounted, discounted = totals[False, False], totals[True, False], totals[True, True]
    assert recounted > 1.2 * plain  # the recomputed forward, counted as if it were model work
    # taken off again (with the head's small forward: 3 rows of 32 x 32 and 32 x 3)
    assert discounted == pytest.approx(plain, rel=0.01) and discounted < plain
