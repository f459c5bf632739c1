"""Which device to compute on: ``resolve_device`` turns ``--device`` (or its absence) into a checked one.

Training, evaluation, prediction and serving share it.
"""

from __future__ import annotations

import torch

from loratune.errors import RunError

__all__ = ["resolve_device"]


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
