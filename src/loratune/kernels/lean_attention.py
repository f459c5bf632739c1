"""Scaled-dot-product attention with dropout, lean in memory: the probabilities are recomputed.

On CPU, ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` runs its math path, which keeps
four ``batch x heads x L x L`` tensors per layer for the backward pass (the scores' softmax, the
4-byte dropout noise, the dropped-out probabilities, ...): for BERT-base at 16 x 256 tokens about
200 MB per layer, most of what a LoRA step keeps. ``attention`` keeps ``q``, ``k``, ``v``, the mask
and a 1-byte dropout mask, and recomputes ``softmax(q k^T)`` in the backward pass, as
FlashAttention does. The work runs in chunks of the batch, so the ``L x L`` temporaries stay small.

It computes exactly what SDPA's math path computes (``softmax(q k^T * scale + mask)``, dropout,
``@ v``), in the inputs' dtype; only the dropout mask comes from ``kernels.dropout_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loratune.kernels.lean_dropout import dropout_mask
from loratune.kernels.memo import LastConversion

_CHUNK_ELEMENTS = 1 << 21  # L x L scores per chunk (8 MiB in fp32): the batch is cut to fit


def _batch_rows(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    """Rows ``lo:hi`` of a tensor broadcast over the batch (a batch-1 tensor is shared)."""
    if t is None or t.shape[0] == 1:
        return t
    return t[lo:hi]


_BIAS = LastConversion()  # bool padding mask -> additive bias, shared by every layer of a model


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = attend) as an additive bias; a fully masked row stays finite.

    Every layer of a model gets the same mask tensor: the conversion is made once and shared.
    """
    return _BIAS.get(
        mask,
        dtype,
        lambda: torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min),
    )


def _probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T + bias)`` for an already scaled ``q`` and an additive ``bias``."""
    s = torch.matmul(q, k.transpose(-2, -1))
    if bias is not None:
        s.add_(bias)
    return torch.softmax(s, dim=-1)


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale, p):  # type: ignore[override]
        with torch.autocast(q.device.type, enabled=False):  # dtypes are explicit here
            return _AttentionFn._forward(ctx, q, k, v, bias, scale, p)

    @staticmethod
    def _forward(ctx, q, k, v, bias, scale, p):
        batch, heads, lq, _ = q.shape
        keep, keep_scale = dropout_mask((batch, heads, lq, k.shape[-2]), p, q.device)
        keep = keep.view(torch.uint8)  # multiplying by 0/1 bytes vectorises; a bool operand does not
        # Heads usually arrive as a transposed view of (batch, L, heads, dim): one contiguous copy
        # each here saves a copy of every chunk in every matmul below (and in the backward pass).
        # q is scaled in that same pass, and kept scaled for the backward pass.
        qs = torch.mul(q, scale, out=torch.empty(q.shape, dtype=q.dtype, device=q.device))
        k, v = k.contiguous(), v.contiguous()
        out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
        step = max(1, _CHUNK_ELEMENTS // (heads * lq * k.shape[-2]))
        for lo in range(0, batch, step):
            hi = min(batch, lo + step)
            probs = _probs(qs[lo:hi], _batch_rows(k, lo, hi), _batch_rows(bias, lo, hi))
            probs.mul_(keep[lo:hi])
            torch.matmul(probs, _batch_rows(v, lo, hi), out=out[lo:hi])
        out.mul_(keep_scale)
        ctx.save_for_backward(qs, k, v, bias, keep)
        ctx.scale, ctx.keep_scale, ctx.step = scale, keep_scale, step
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        with torch.autocast(grad_out.device.type, enabled=False):
            return _AttentionFn._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        qs, k, v, bias, keep = ctx.saved_tensors
        scale, step = ctx.scale, ctx.step
        # contiguous and scaled in one pass (the incoming gradient is usually a transposed view)
        grad_out = torch.mul(grad_out.to(qs.dtype), ctx.keep_scale, out=torch.empty_like(qs))
        batch = qs.shape[0]
        # k and v may be shared by the whole batch (batch 1): their gradients are summed over it.
        shared = k.shape[0] < batch
        grad_q = torch.empty_like(qs)
        if shared:
            grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
            grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        else:
            grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for lo in range(0, batch, step):
            hi = min(batch, lo + step)
            k_c, v_c = _batch_rows(k, lo, hi), _batch_rows(v, lo, hi)
            keep_c = keep[lo:hi].to(qs.dtype)  # used twice: converted once
            probs = _probs(qs[lo:hi], k_c, _batch_rows(bias, lo, hi))
            g = grad_out[lo:hi]
            g_probs = torch.matmul(g, v_c.transpose(-2, -1)).mul_(keep_c)
            g_s = torch._softmax_backward_data(g_probs, probs, -1, probs.dtype)
            del g_probs
            dropped = probs.mul_(keep_c).transpose(-2, -1)  # the dropped-out probabilities
            torch.matmul(g_s, k_c, out=grad_q[lo:hi])
            if shared:
                grad_v += torch.matmul(dropped, g).sum(0, keepdim=True)
                grad_k += torch.matmul(g_s.transpose(-2, -1), qs[lo:hi]).sum(0, keepdim=True)
            else:
                torch.matmul(dropped, g, out=grad_v[lo:hi])
                torch.matmul(g_s.transpose(-2, -1), qs[lo:hi], out=grad_k[lo:hi])
            del probs, dropped
        grad_q.mul_(scale)
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``dropout(softmax(q k^T * scale + mask)) @ v`` for ``(batch, heads, L, head_dim)`` inputs.

    ``mask`` is additive (float) or boolean (True = attend), broadcastable to
    ``(batch, heads, Lq, Lk)``, as for ``F.scaled_dot_product_attention``. Without dropout, or
    without gradients, this is SDPA itself (whose fused kernels are then the lean ones).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if dropout_p == 0.0 or not torch.is_grad_enabled():
        if is_causal and mask is not None:
            mask, is_causal = _with_causal(mask, q, k), False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, is_causal=is_causal
        )
    if is_causal:
        mask = _with_causal(mask, q, k)
    bias = None
    if mask is not None:
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        bias = _additive(mask, q.dtype) if mask.dtype == torch.bool else mask.to(q.dtype)
    return _AttentionFn.apply(q, k, v, bias, scale, dropout_p)


def _with_causal(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``mask`` combined with the upper-left causal mask of SDPA's ``is_causal``."""
    causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, torch.finfo(mask.dtype).min)
