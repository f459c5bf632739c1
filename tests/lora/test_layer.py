"""LoraLinear on its own: forward maths, the lean autograd function, merge, Conv1D."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loratune.kernels import dropout_mask
from loratune.lora.layer import LoraLinear, MixedRouting, in_out_features


def _layer(p: float = 0.0, r: int = 4, seed: int = 0) -> LoraLinear:
    torch.manual_seed(seed)
    layer = LoraLinear(nn.Linear(16, 24))
    layer.add_adapter("a", r=r, scaling=2.0, dropout=p)
    nn.init.normal_(layer.lora_B["a"].weight)  # trained-looking B
    layer.active_adapter = "a"
    layer.base_layer.requires_grad_(False)
    return layer


def test_fresh_adapter_is_identity_and_init_is_kaiming_zero():
    layer = LoraLinear(nn.Linear(16, 24))
    layer.add_adapter("a", r=4, scaling=2.0)
    layer.active_adapter = "a"
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), layer.base_layer(x))
    assert torch.count_nonzero(layer.lora_B["a"].weight) == 0
    bound = 1 / 16**0.5  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    a = layer.lora_A["a"].weight
    assert a.abs().max() <= bound and a.std() > bound / 4


def test_forward_matches_formula():
    layer = _layer()
    x = torch.randn(3, 5, 16)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    expected = layer.base_layer(x) + 2.0 * (x @ a.t() @ b.t())
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_lean_autograd_matches_reference_gradients(p):
    layer = _layer(p=p).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    torch.manual_seed(123)
    y = layer(x)
    (y * torch.linspace(-1, 1, 24)).sum().backward()
    got = (x.grad.clone(), layer.lora_A["a"].weight.grad.clone(), layer.lora_B["a"].weight.grad.clone())

    # Reference: plain autograd with the very same dropout mask (same RNG draw).
    x2 = x.detach().clone().requires_grad_(True)
    a = layer.lora_A["a"].weight.detach().clone().requires_grad_(True)
    b = layer.lora_B["a"].weight.detach().clone().requires_grad_(True)
    torch.manual_seed(123)
    xin = x2
    if p > 0:
        mask, scale = dropout_mask(x2.shape, p)
        assert abs(1 / scale - (1 - p)) < 1e-4
        xin = x2 * mask * scale
    y2 = layer.base_layer(x2) + 2.0 * F.linear(F.linear(xin, a), b)
    (y2 * torch.linspace(-1, 1, 24)).sum().backward()
    torch.testing.assert_close(y, y2)
    for g, ref in zip(got, (x2.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(g, ref)


def test_dropout_only_in_training():
    layer = _layer(p=0.5)
    x = torch.randn(2, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(0)
    y1 = layer(x)
    torch.manual_seed(1)
    assert not torch.allclose(y1, layer(x))


def test_merge_unmerge_roundtrip():
    layer = _layer().eval()
    x = torch.randn(4, 16)
    w0 = layer.base_layer.weight.detach().clone()
    before = layer(x)
    layer.merge("a")
    torch.testing.assert_close(layer(x), before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.base_layer(x), before, rtol=1e-4, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), before)


def test_conv1d_fan_in_fan_out():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=out, nx=in; weight is (in, out)
    layer = LoraLinear(conv)
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (16, 24)
    layer.add_adapter("a", r=4, scaling=1.5)
    nn.init.normal_(layer.lora_B["a"].weight)
    layer.active_adapter = "a"
    x = torch.randn(2, 3, 16)
    expected = conv(x) + 1.5 * (x @ layer.lora_A["a"].weight.t() @ layer.lora_B["a"].weight.t())
    torch.testing.assert_close(layer(x), expected)
    before = layer(x)
    layer.merge("a")
    torch.testing.assert_close(conv(x), before, rtol=1e-4, atol=1e-5)


def test_in_out_features_of_a_linear_a_conv1d_and_a_lora_layer():
    from transformers.pytorch_utils import Conv1D

    linear, conv = nn.Linear(16, 24), Conv1D(24, 16)
    assert in_out_features(linear) == in_out_features(conv) == (16, 24)
    assert in_out_features(LoraLinear(linear)) == in_out_features(LoraLinear(conv)) == (16, 24)


def test_mixed_batch_with_different_ranks_equals_per_example():
    layer = _layer(r=4)
    layer.add_adapter("b", r=2, scaling=0.5)
    nn.init.normal_(layer.lora_B["b"].weight)
    layer.eval()
    x = torch.randn(4, 3, 16)
    layer.mixed = MixedRouting(ids=torch.tensor([1, -1, 0, 1]), names=["a", "b"])
    mixed = layer(x)
    layer.mixed = None
    for i, name in enumerate(["b", None, "a", "b"]):
        layer.active_adapter = name
        torch.testing.assert_close(mixed[i], layer(x[i : i + 1])[0], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_fp32_params_and_trains():
    layer = _layer(p=0.1).train()
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_A["a"].weight.grad.dtype == torch.float32
    assert layer.lora_A["a"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_keep_zeroes_exactly_where_the_mask_is_false(dtype):
    from loratune.lora.layer import _keep

    x = torch.randn(64, 48).to(dtype)
    mask = torch.rand(64, 48) < 0.7
    out = _keep(x, mask)
    assert out.dtype == dtype and torch.equal(out, torch.where(mask, x, torch.zeros((), dtype=dtype)))


def test_bf16_autocast_gradients_match_plain_autograd_with_the_same_mask():
    layer = _layer(p=0.3).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    weights = torch.linspace(-1, 1, 24)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    (y.float() * weights).sum().backward()
    got = (y.detach().float(), x.grad, layer.lora_A["a"].weight.grad, layer.lora_B["a"].weight.grad)

    x2 = x.detach().clone().requires_grad_(True)
    a = layer.lora_A["a"].weight.detach().clone().requires_grad_(True)
    b = layer.lora_B["a"].weight.detach().clone().requires_grad_(True)
    torch.manual_seed(7)
    mask, scale = dropout_mask((15, 16), 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xin = x2.reshape(15, 16).to(torch.bfloat16) * mask * scale
        y2 = layer.base_layer(x2) + 2.0 * F.linear(F.linear(xin, a), b).reshape(3, 5, 24)
    (y2.float() * weights).sum().backward()
    want = (y2.detach().float(), x2.grad, a.grad, b.grad)
    for g, ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad", [True, False])
def test_an_adapter_on_a_half_precision_layer_is_fp32_and_runs_without_autocast(dtype, grad):
    """The adapter keeps fp32 values on a bf16/fp16 base layer; its product is computed in fp32."""
    ref = _layer(p=0.0)
    layer = LoraLinear(nn.Linear(16, 24).to(dtype).requires_grad_(False))
    layer.add_adapter("a", r=4, scaling=2.0)
    assert layer.lora_A["a"].weight.dtype == layer.lora_B["a"].weight.dtype == torch.float32
    layer.base_layer.load_state_dict(ref.base_layer.state_dict())
    layer.lora_A["a"].load_state_dict(ref.lora_A["a"].state_dict())
    layer.lora_B["a"].load_state_dict(ref.lora_B["a"].state_dict())
    layer.active_adapter = "a"
    x = torch.randn(3, 5, 16).to(dtype).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = layer(x)
    assert y.dtype == dtype
    expected = layer.base_layer(x).float() + 2.0 * (x.float() @ ref.lora_A["a"].weight.t() @ ref.lora_B["a"].weight.t())
    torch.testing.assert_close(y.float(), expected.detach(), rtol=2e-2, atol=2e-2)
    if grad:
        y.float().sum().backward()
        assert layer.lora_A["a"].weight.grad.dtype == torch.float32 and x.grad.dtype == dtype


def test_mixed_rows_of_adapters_that_skip_a_layer_get_its_base_output_exactly():
    layer = _layer(r=4).eval()
    x = torch.randn(3, 2, 16)
    base = layer.base_layer(x)
    layer.mixed = MixedRouting(ids=torch.tensor([0, -1, 0]), names=["elsewhere"])  # adapts other layers only
    assert torch.equal(layer(x), base)
    layer.mixed = MixedRouting(ids=torch.tensor([0, 0, 0]), names=["a"])  # one adapter for the whole batch
    one = layer(x)
    layer.mixed, layer.active_adapter = None, "a"
    torch.testing.assert_close(one, layer(x))
