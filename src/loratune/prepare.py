"""``prepare_model``: make a transformers model ready to fine-tune, the way ``loratune train`` does.

Four steps, in this order:

1. the lean kernels (``fastpath.use_lean_kernels``; ``kernels="torch"`` skips them): attention whose
   backward recomputes the softmax, 1-byte dropout masks, and a first-token last layer for
   classifiers that read position 0 only. Each is feature-detected and falls back to the model's
   own code with a note;
2. the LoRA adapter (``lora_config``), or every parameter unfrozen for full fine-tuning
   (``lora_config=None``); optionally activation checkpointing;
3. fp32 master weights (``keep_master_weights``): trainable parameters (adapters, heads, everything
   under full fine-tuning) are fp32 whatever the checkpoint's dtype, and an fp32 run is fp32 throughout;
4. the frozen linear layers stored in the training precision's dtype (``store_frozen_linears``).

The forward pass is meant to run under ``torch.autocast`` for bf16 and fp16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from loratune.fastpath import use_lean_kernels
from loratune.lora import LoraConfig, LoraLinear, add_lora
from loratune.lora.layer import is_linear

__all__ = [
    "DTYPES",
    "KERNELS",
    "Preparation",
    "keep_master_weights",
    "preparation",
    "prepare_model",
    "store_frozen_linears",
]

#: the compute dtype of each training precision
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HALF_DTYPES = (torch.bfloat16, torch.float16)
KERNELS = ("lean", "torch")  # lean: loratune's kernels where they apply; torch: the model's own
_ATTR = "loratune_preparation"


@dataclass
class Preparation:
    """What ``prepare_model`` did to a model (``preparation(model)`` returns it)."""

    precision: str
    kernels: str
    lean_attention: bool = False
    lean_dropouts: int = 0
    first_token_layer: bool = False
    frozen_linears_stored: int = 0  # frozen linear layers stored in the precision's dtype
    notes: list[str] = field(default_factory=list)  # kernels left out, and why


def prepare_model(
    model: nn.Module,
    lora_config: LoraConfig | None,
    *,
    precision: str = "fp32",
    kernels: str = "lean",
    gradient_checkpointing: bool = False,
    adapter_name: str = "default",
) -> nn.Module:
    """Prepare ``model`` in place for training and return it.

    Args:
        lora_config: the adapter to add; None trains every parameter (full fine-tuning).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast dtype the training will use.
        kernels: ``"lean"`` (loratune's kernels where they apply) or ``"torch"`` (the model's own).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    done = Preparation(precision=precision, kernels=kernels)
    if kernels == "lean":
        report = use_lean_kernels(model)
        done.lean_attention, done.lean_dropouts = report.attention, report.dropouts
        done.first_token_layer, done.notes = report.first_token_layer, report.notes
    if lora_config is None:
        model.requires_grad_(True)
    else:
        add_lora(model, lora_config, adapter_name)
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    keep_master_weights(model, precision)
    done.frozen_linears_stored = store_frozen_linears(model, precision)
    model.__dict__[_ATTR] = done
    return model


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, by its transformers >= 5.24 name where it exists (the
    old name, ``gradient_checkpointing_enable``, then warns)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def preparation(model: nn.Module) -> Preparation | None:
    """What ``prepare_model`` did to ``model``, or None if it was not prepared."""
    return model.__dict__.get(_ATTR)


def keep_master_weights(model: nn.Module, precision: str) -> int:
    """Make fp32 each bf16/fp16 tensor of ``model`` that may not stay in half precision; return how many.

    Trainable parameters are fp32 master weights (AdamW's small updates vanish in bf16). Frozen
    parameters and buffers keep a half dtype only when it is ``precision``'s autocast dtype, so an fp32
    run computes in fp32 throughout. Parameters change in place (``.data``): tied weights stay tied.
    """
    keep = DTYPES[precision] if precision != "fp32" else None
    count = 0
    for param in model.parameters():
        if param.dtype in HALF_DTYPES and (param.requires_grad or param.dtype != keep):
            param.data = param.data.float()
            count += 1
    upcast: dict[int, torch.Tensor] = {}  # a buffer shared by several modules stays shared
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype in HALF_DTYPES and buffer.dtype != keep:
                if id(buffer) not in upcast:
                    upcast[id(buffer)] = buffer.float()
                    count += 1
                setattr(module, name, upcast[id(buffer)])
    return count


def store_frozen_linears(model: nn.Module, precision: str) -> int:
    """Store the frozen linear layers of ``model`` in ``precision``'s autocast dtype; return how many.

    Under autocast a linear layer computes with its weight and bias rounded to the autocast dtype
    on every call (and autograd keeps that rounded copy for the backward pass). For a frozen layer
    the rounding can be done once: the outputs and gradients are the same, and the fp32 copy is
    gone. Layers with a trainable parameter, LoRA adapters (also frozen ones: an adapter keeps its
    fp32 values), and weights shared with another module (an output layer tied to the embeddings)
    keep their dtype. fp32 changes nothing.
    """
    dtype = DTYPES.get(precision, torch.float32)
    if dtype == torch.float32:
        return 0
    adapters = {
        id(m)
        for layer in model.modules()
        if isinstance(layer, LoraLinear)
        for m in (*layer.lora_A.values(), *layer.lora_B.values())
    }
    linears = [m for m in model.modules() if is_linear(m) and id(m) not in adapters]
    owners: dict[int, int] = {}  # parameter -> number of modules holding it
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    count = 0
    for layer in linears:
        params = list(layer.parameters(recurse=False))
        if not params or any(p.requires_grad or owners[id(p)] > 1 or not p.is_floating_point() for p in params):
            continue
        layer.to(dtype)
        count += 1
    return count
