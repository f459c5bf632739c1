"""``--deterministic``: torch's deterministic algorithms for the length of a run.

A CPU run already repeats bit for bit. On CUDA, the attention backward (SDPA's fused kernels) adds
its partial sums in a varying order, so two runs, or a run and its resumed twin, end slightly apart.
``torch.use_deterministic_algorithms(True)`` makes those kernels (and cuBLAS, cuDNN) pick
deterministic algorithms, at some cost in speed; an operation that has none raises.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import torch

from loratune.errors import RunError

__all__ = ["CUBLAS_WORKSPACE", "deterministic_algorithms"]

#: cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); ":4096:8" is the value NVIDIA documents
CUBLAS_WORKSPACE = ":4096:8"
_NO_DETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block, torch uses deterministic algorithms only; outside, everything is as it was.

    Sets ``torch.use_deterministic_algorithms(True)``, ``CUBLAS_WORKSPACE_CONFIG`` (unless already
    set), ``cudnn.deterministic`` and no ``cudnn.benchmark``. An operation without a deterministic
    implementation stops the block with a one-line ``RunError``. ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as err:
        found = _NO_DETERMINISTIC.search(str(err))
        if found is None:
            raise
        raise RunError(
            f"{found.group(1)} has no deterministic implementation on this device; drop --deterministic"
        ) from err
    finally:
        enabled_before, warn_only, cudnn.deterministic, cudnn.benchmark, workspace = saved
        torch.use_deterministic_algorithms(enabled_before, warn_only=warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
