"""Plug ``loratune.kernels`` into a transformers model for training (``--kernels lean``).

Two swaps, both exact in what they compute (only dropout draws its random numbers differently):

* attention: models on the ``sdpa`` implementation switch to ``loratune_sdpa``, registered with
  transformers' ``AttentionInterface``. It is SDPA, except when dropout is active on CPU with
  gradients, where SDPA's math path is replaced by ``kernels.attention`` (recomputed softmax,
  1-byte dropout mask);
* every ``nn.Dropout`` becomes a ``kernels.LeanDropout`` (1-byte saved mask, fast CPU draw).

``restore_torch_kernels`` undoes both (before saving a full model, so its config names ``sdpa``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loratune.kernels import LeanDropout, attention

LEAN_ATTENTION = "loratune_sdpa"


def _lean_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-interface signature; ``(batch, L, heads, head_dim)`` out, no weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux", "sinks"))
    if dropout == 0.0 or special or query.device.type != "cpu" or not torch.is_grad_enabled():
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(query.shape[2] > 1 and attention_mask is None and is_causal)
    out = attention(query, key, value, attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(LEAN_ATTENTION, _lean_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(LEAN_ATTENTION, sdpa_mask)


@dataclass
class KernelReport:
    """What ``use_lean_kernels`` changed."""

    attention: bool  # the model now runs loratune_sdpa
    dropouts: int  # nn.Dropout layers swapped for LeanDropout


def _swap_dropouts(model: nn.Module, to_lean: bool) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if to_lean and type(child) is nn.Dropout and child.p > 0 and not child.inplace:
                lean = LeanDropout(child.p)
                lean.train(child.training)
                setattr(parent, name, lean)
                count += 1
            elif not to_lean and type(child) is LeanDropout:
                plain = nn.Dropout(child.p)
                plain.train(child.training)
                setattr(parent, name, plain)
                count += 1
    return count


def use_lean_kernels(model: nn.Module) -> KernelReport:
    """Switch ``model`` (a transformers model, or any module for the dropouts) to the lean kernels."""
    switched = False
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        _register()
        model.set_attn_implementation(LEAN_ATTENTION)
        switched = config._attn_implementation == LEAN_ATTENTION
    return KernelReport(attention=switched, dropouts=_swap_dropouts(model, to_lean=True))


def restore_torch_kernels(model: nn.Module) -> None:
    """Undo ``use_lean_kernels``: SDPA attention and plain ``nn.Dropout`` again."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == LEAN_ATTENTION:
        model.set_attn_implementation("sdpa")
    _swap_dropouts(model, to_lean=False)
