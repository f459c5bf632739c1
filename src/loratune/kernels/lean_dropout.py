"""Dropout with a 1-byte mask, drawn fast on CPU.

``torch.bernoulli_`` on CPU makes one generator call per element, which made drawing BERT's
dropout masks a large share of a training step. ``dropout_mask`` instead takes one seed from
torch's generator, fills 64-bit words with NumPy's PCG64 bit stream (the raw stream of a NumPy bit
generator is stable across releases), cuts each word into four 16-bit integers and compares them
with a threshold: several times faster than ``bernoulli_`` (``benchmarks/kernels.py``), and as
deterministic under ``torch.manual_seed`` (or a given generator).

The keep probability is ``round((1 - p) * 2**16) / 2**16`` (within 7.7e-6 of ``1 - p``), and the
kept values are scaled by its exact inverse, so the output's expectation is the input, as with
``nn.Dropout``. Masks are applied by multiplying with their ``uint8`` view, which CPU kernels
vectorise (``torch.where`` on a bool mask is slower in half precision). Other devices use
``bernoulli_``, which is fast there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # values of one 16-bit random integer


def random_words(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` int64 words of 64 uniformly random bits, seeded from torch's (or ``generator``'s) RNG."""
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
    return torch.from_numpy(np.random.PCG64(seed).random_raw(count).view(np.int64))


def dropout_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` for dropout probability ``p``, and ``1 / P(keep)``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    device = torch.device(device)
    if device.type != "cpu":
        keep = 1.0 - p
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(keep, generator=generator), 1.0 / keep
    threshold = min(max(round((1.0 - p) * _LEVELS), 1), _LEVELS - 1)
    numel = math.prod(shape)
    halves = random_words((numel + 3) // 4, generator).view(torch.int16)[:numel]
    # a uniform int16 is below ``threshold - 2**15`` with probability threshold / 2**16
    return halves.lt(threshold - _LEVELS // 2).view(shape), _LEVELS / threshold


def apply_mask(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with the entries where ``keep`` is False set to zero (a new tensor)."""
    return x.mul(keep.view(torch.uint8))


class _DropoutFn(torch.autograd.Function):
    """``x * mask * scale``, saving the 1-byte mask (``nn.Dropout`` on CPU saves a 4-byte one)."""

    @staticmethod
    def forward(ctx, x, p):  # type: ignore[override]
        mask, scale = dropout_mask(x.shape, p, x.device)
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return apply_mask(x, mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return apply_mask(grad, mask).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Functional dropout with the lean mask on CPU (``F.dropout`` elsewhere); the identity when not training."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    if x.device.type != "cpu":  # CUDA's fused dropout already saves a 1-byte mask, and is faster
        return F.dropout(x, p, training=True)
    return _DropoutFn.apply(x, p)


class LeanDropout(nn.Dropout):
    """Drop-in ``nn.Dropout`` (same ``p``, same ``state_dict``) using ``dropout`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
