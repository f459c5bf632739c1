"""kernels.attention against a reference written with plain autograd and the same dropout mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import loratune.kernels.lean_attention as attention_module
from loratune.kernels import attention, dropout_mask

B, H, L, D = 3, 2, 10, 8


def _reference(q, k, v, mask, p, seed, is_causal=False):
    scores = q @ k.transpose(-1, -2) / D**0.5
    if is_causal:
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(-1)
    if p > 0:
        torch.manual_seed(seed)
        keep, scale = dropout_mask((B, H, L, L), p)
        probs = probs * keep * scale
    return probs @ v


def _inputs(dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(B, H, L, D, dtype=dtype, requires_grad=True) for _ in range(3)]


def _masks():
    torch.manual_seed(1)
    keep = torch.rand(B, 1, L, L) > 0.3
    keep[..., 0] = True  # every query sees something
    return {"none": None, "bool": keep, "additive": torch.where(keep, 0.0, -1e4)}


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("chunk", [1 << 21, 150])  # one chunk, or one example per chunk
def test_matches_reference_values_and_gradients(mask_kind, chunk, monkeypatch):
    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", chunk)
    mask = _masks()[mask_kind]
    q, k, v = _inputs()
    torch.manual_seed(9)
    out = attention(q, k, v, mask, dropout_p=0.2)
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = _reference(q, k, v, mask, 0.2, seed=9)
    want = torch.autograd.grad((ref * w).sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r)


def test_causal_and_shared_key_value():
    q, k, v = _inputs()
    torch.manual_seed(4)
    out = attention(q, k, v, None, dropout_p=0.1, is_causal=True)
    torch.testing.assert_close(out, _reference(q, k, v, None, 0.1, seed=4, is_causal=True))
    # keys and values shared by the batch (batch dimension 1): gradients summed over the batch
    k1, v1 = (t[:1].detach().clone().requires_grad_(True) for t in (k, v))
    torch.manual_seed(4)
    out = attention(q, k1, v1, None, dropout_p=0.1)
    got = torch.autograd.grad(out.sum(), (k1, v1))
    ref = _reference(q, k1.expand_as(k), v1.expand_as(v), None, 0.1, seed=4)
    want = torch.autograd.grad(ref.sum(), (k1, v1))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r)


def test_without_dropout_or_gradients_it_is_sdpa():
    q, k, v = _inputs()
    mask = _masks()["bool"]
    torch.testing.assert_close(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    with torch.no_grad():
        torch.manual_seed(2)
        a = attention(q, k, v, mask, dropout_p=0.0, is_causal=True)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & torch.ones(L, L, dtype=torch.bool).tril())
    torch.testing.assert_close(a, b)


def test_saves_no_l_by_l_float_tensor():
    q, k, v = _inputs()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        attention(q, k, v, _masks()["bool"], dropout_p=0.1)
    per_head = [t for t in saved if t.dim() == 4 and t.shape[1:] == (H, L, L)]
    assert [(t.dtype, t.element_size()) for t in per_head] == [(torch.uint8, 1)]  # only the dropout mask
    masks = [t for t in saved if t.dim() == 4 and t.shape[1] == 1]  # the padding mask, made additive once
    assert len(masks) == 1


def test_bf16_close_to_fp32():
    q, k, v = _inputs()
    torch.manual_seed(3)
    ref = attention(q, k, v, None, dropout_p=0.1)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_(True) for t in (q, k, v))
    torch.manual_seed(3)
    out = attention(qb, kb, vb, None, dropout_p=0.1)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert qb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_layers_share_one_additive_mask():
    mask = _masks()["bool"]
    first = attention_module._additive(mask, torch.float32)
    assert attention_module._additive(mask, torch.float32) is first
    assert attention_module._additive(mask.clone(), torch.float32) is not first
    assert torch.equal(first == 0, mask)
