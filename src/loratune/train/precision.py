"""Device and numeric precision: pick them, check them, and build the autocast context.

Precisions are named ``fp32``, ``bf16`` and ``fp16``. bf16 and fp16 run the forward pass under
``torch.autocast`` (fp16, CUDA only, also needs a grad scaler). Trainable weights stay fp32.
Frozen linear layers are stored in the autocast dtype (``store_frozen_linears``): autocast would
round them to it on every use anyway, so the results are the same, without their fp32 copies.
``auto`` picks bf16 only where the hardware computes it natively, because emulated bf16 is slower
than fp32.
"""

from __future__ import annotations

import contextlib
import platform
from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path

import torch
from torch import nn

from loratune.errors import RunError
from loratune.lora import LoraLinear
from loratune.lora.layer import is_linear

__all__ = [
    "DTYPES",
    "PRECISIONS",
    "autocast_context",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
    "grad_scaler",
    "resolve_device",
    "resolve_precision",
    "store_frozen_linears",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {
    "auto": "auto",
    "fp32": "fp32",
    "float32": "fp32",
    "32": "fp32",
    "no": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "16": "fp16",
}


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise check the named device."""
    if requested is None or str(requested).strip().lower() in ("", "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(str(requested).strip().lower())
    except (RuntimeError, ValueError):
        raise RunError(f"unknown device {requested!r}; use --device cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"device {requested!r} asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(
                f"device {requested!r} does not exist (this machine has {torch.cuda.device_count()} "
                "CUDA devices); use --device cuda:0"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RunError(f"device {requested!r} asked for but MPS is not available; use --device cpu")
    elif device.type != "cpu":
        raise RunError(f"unsupported device {requested!r}; use --device cpu, cuda or cuda:N")
    return device


@cache
def _cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux ``flags``, aarch64 ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``)."""
    flags = _cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    return "bf16" in flags and platform.machine().lower() in ("aarch64", "arm64")


def cuda_has_native_bf16(device: torch.device | None = None) -> bool:
    """True for CUDA devices of compute capability >= 8.0 (Ampere or newer) that support bf16."""
    if not torch.cuda.is_available():
        return False
    try:
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the keyword
        supported = torch.cuda.is_bf16_supported()
    return bool(supported) and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(requested: str, device: torch.device) -> str:
    """Map ``auto|fp32|bf16|fp16`` (and aliases) to ``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``device``.

    ``auto`` gives bf16 where the hardware has native bf16, else fp32. An explicit precision that
    the device cannot run raises ``RunError`` naming the fix.
    """
    name = _ALIASES.get(str(requested).strip().lower())
    if name is None:
        raise RunError(f"unknown precision {requested!r}; use --precision auto, fp32, bf16 or fp16")
    device = torch.device(device)
    if device.type == "cuda":
        native = cuda_has_native_bf16(device)
    elif device.type == "cpu":
        native = cpu_has_native_bf16()
    else:
        native = False
    if name == "auto":
        return "bf16" if native else "fp32"
    if name == "bf16" and not native:
        where = "this CPU" if device.type == "cpu" else f"device {device}"
        raise RunError(f"bf16 is not natively supported on {where}; use --precision fp32")
    if name == "fp16" and device.type != "cuda":
        raise RunError(f"fp16 needs a CUDA device, not {device.type}; use --precision fp32 (or bf16)")
    return name


# the compute dtype of each resolved precision
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """A ``torch.autocast`` context for bf16/fp16, or a no-op context for fp32."""
    device = torch.device(device)
    if precision not in DTYPES:
        raise ValueError(f"precision must be resolved to fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 and fp32 need none; disabled it is a no-op)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def store_frozen_linears(model: nn.Module, precision: str) -> int:
    """Store the frozen linear layers of ``model`` in ``precision``'s autocast dtype; return how many.

    Under autocast a linear layer computes with its weight and bias rounded to the autocast dtype
    on every call (and autograd keeps that rounded copy for the backward pass). For a frozen layer
    the rounding can be done once: the outputs and gradients are the same, and the fp32 copy is
    gone (bert-base: 0.34 GB; a bf16 step's peak 3.01 -> 2.76 GB). Layers with a trainable
    parameter, LoRA adapters (also frozen ones: an adapter keeps its fp32 values), and weights
    shared with another module (an output layer tied to the embeddings) keep their dtype. fp32
    changes nothing.
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
