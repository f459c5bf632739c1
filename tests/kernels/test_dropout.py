"""kernels.dropout: the fast CPU mask and the 1-byte-mask dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loratune.kernels import LeanDropout, dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_keeps_one_minus_p_and_scale_is_exact_inverse(p):
    torch.manual_seed(0)
    mask, scale = dropout_mask((1000, 999), p)
    assert mask.dtype == torch.bool and mask.shape == (1000, 999)
    assert abs(1 / scale - (1 - p)) < 2e-5  # 15-bit threshold
    assert abs(mask.float().mean().item() - (1 - p)) < 3e-3  # 1e6 draws: ~6 standard errors


def test_mask_bits_are_independent_of_position():
    """Each of the four 16-bit words cut from one 64-bit draw keeps at the same rate."""
    torch.manual_seed(1)
    mask, _ = dropout_mask((400_000,), 0.5)
    rates = mask.view(-1, 4).float().mean(0)
    assert torch.all((rates - 0.5).abs() < 5e-3), rates
    # neighbours are uncorrelated
    a, b = mask[:-1].float(), mask[1:].float()
    assert abs((a * b).mean().item() - 0.25) < 5e-3


def test_mask_is_deterministic_under_seed_and_odd_sizes():
    torch.manual_seed(3)
    m1, _ = dropout_mask((7, 3), 0.3)
    torch.manual_seed(3)
    m2, _ = dropout_mask((7, 3), 0.3)
    assert torch.equal(m1, m2)
    g = torch.Generator().manual_seed(5)
    m3, _ = dropout_mask((5,), 0.3, generator=g)
    assert m3.shape == (5,)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1])
def test_mask_rejects_degenerate_p(p):
    with pytest.raises(ValueError, match="dropout probability"):
        dropout_mask((3,), p)


def test_dropout_forward_and_gradient_match_the_mask():
    x = torch.randn(6, 10, requires_grad=True)
    torch.manual_seed(7)
    y = dropout(x, 0.25)
    torch.manual_seed(7)
    mask, scale = dropout_mask(x.shape, 0.25)
    torch.testing.assert_close(y, x.detach() * mask * scale)
    w = torch.randn(6, 10)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, w * mask * scale)


def test_dropout_saves_a_one_byte_mask():
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    x = torch.randn(64, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dropout(x, 0.1).sum()
    assert saved == [(torch.bool, 64 * 32)]


def test_lean_dropout_is_a_drop_in_for_nn_dropout():
    lean = LeanDropout(0.3)
    assert isinstance(lean, nn.Dropout) and lean.state_dict() == nn.Dropout(0.3).state_dict()
    x = torch.randn(4, 5)
    lean.eval()
    assert torch.equal(lean(x), x)
    lean.train()
    y = lean(x)
    assert ((y == 0) | torch.isclose(y, x / 0.7, atol=1e-4)).all()
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 0.0), x)


def test_bf16_dropout_keeps_dtype():
    x = torch.randn(8, 8, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.5)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
