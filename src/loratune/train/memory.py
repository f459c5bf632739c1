"""Memory and disk measurements: peak RSS, CUDA peak allocation, folder sizes.

Peak RSS (``ru_maxrss``) covers the whole life of the process and cannot be reset, so a fair
comparison of two configurations (e.g. full fine-tuning vs LoRA) runs each in its own process.
CUDA peaks can be reset with ``reset_peak_cuda()`` and count tensors allocated by torch only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import psutil
import torch

__all__ = [
    "current_rss_bytes",
    "dir_size_bytes",
    "format_bytes",
    "peak_cuda_bytes",
    "peak_memory_bytes",
    "peak_rss_bytes",
    "reset_peak_cuda",
]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    try:
        import resource
    except ImportError:  # Windows
        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def current_rss_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    return int(psutil.Process().memory_info().rss)


def reset_peak_cuda(device: torch.device | str | int | None = None) -> None:
    """Reset torch's CUDA peak-allocation counter (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_cuda_bytes(device: torch.device | str | int | None = None) -> int:
    """Peak bytes allocated by torch on a CUDA device since the last reset (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.max_memory_allocated(device))


def peak_memory_bytes(device: torch.device | str) -> int:
    """The peak that matters for ``device``: CUDA peak allocation on CUDA, else peak process RSS."""
    device = torch.device(device)
    if device.type == "cuda":
        return peak_cuda_bytes(device)
    return peak_rss_bytes()


def dir_size_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files under ``path`` (or of ``path`` itself if a file); symlinks not followed."""
    p = Path(path)
    if p.is_symlink():
        return 0
    if p.is_file():
        return p.stat().st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(p):
        for name in filenames:
            fp = os.path.join(dirpath, name)
            if not os.path.islink(fp):
                with contextlib.suppress(OSError):  # vanished meanwhile
                    total += os.stat(fp).st_size
    return total


def format_bytes(n: int | float) -> str:
    """Human-readable size in binary units: ``1.2 MiB``, ``3.0 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
