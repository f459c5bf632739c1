"""train.flops: sampled FLOP counting and the matmul peak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loratune.train.flops import FlopSampler, matmul_peak_flops


def _step(layer: nn.Linear, rows: int) -> None:
    x = torch.randn(rows, layer.in_features, requires_grad=True)
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


def test_matmul_peak_is_positive():
    assert matmul_peak_flops("cpu", "fp32", n=256, repeats=2) > 1e8
