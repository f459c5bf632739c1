"""Numeric precision: pick it, check it, and build the autocast context (the device: ``loratune.device``).

Precisions are named ``fp32``, ``bf16`` and ``fp16``. bf16 and fp16 run the forward pass under
``torch.autocast``; fp16 (CUDA only) also scales the loss (``grad_scaler``). Trainable weights are
fp32 (``loratune.prepare.keep_master_weights``, also for a checkpoint stored in bf16);
``loratune.prepare.store_frozen_linears`` stores the frozen linear layers in the autocast dtype.
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

from loratune.errors import RunError
from loratune.prepare import DTYPES

__all__ = [
    "autocast_context",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
    "grad_scaler",
    "resolve_precision",
]

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
