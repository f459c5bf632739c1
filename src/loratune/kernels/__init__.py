"""Torch-only training kernels below the LoRA engine: lean dropout and attention.

They compute the same functions as ``nn.Dropout`` and scaled-dot-product attention with dropout,
with less memory traffic on CPU: 1-byte dropout masks drawn from 16-bit random words, and an
attention backward that recomputes the probabilities instead of saving them.
"""

from loratune.kernels.lean_attention import attention
from loratune.kernels.lean_dropout import LeanDropout, dropout, dropout_mask

__all__ = ["LeanDropout", "attention", "dropout", "dropout_mask"]
