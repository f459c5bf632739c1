"""Model FLOPs of a run and the machine's matmul peak, for the MFU in ``summary.json``.

FLOPs are counted, not modelled: every ``flop_sample_every``-th batch runs its forward and backward
pass under ``torch.utils.flop_counter.FlopCounterMode``, which adds up the matmul FLOPs actually
dispatched (linear layers, LoRA, attention; elementwise work counts zero, as in the usual MFU). The
run's total is the sampled FLOPs per padded token times all padded tokens. The peak is the best of
a few square matmuls in the run's compute dtype on its device, measured once after training.

torch's counter knows ``addmm`` but not its in-place form ``addmm_``, with which the LoRA layers
accumulate into the frozen product (and its input gradient); ``addmm_`` is counted here too, or
a LoRA step's FLOPs (and MFU) would come out about 7 % low on bert-base.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from loratune.prepare import DTYPES


def _addmm_inplace_flops(self_shape, mat1_shape, mat2_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``self.addmm_(mat1, mat2)``: the product's multiply-adds (the add is not counted)."""
    (m, k), (_, n) = mat1_shape, mat2_shape
    return 2 * m * k * n


def flop_counter() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` (silent), counting ``addmm_`` as well."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_inplace_flops})


@dataclass
class FlopSampler:
    """Counts the FLOPs of sampled batches and extrapolates to every batch by padded tokens.

    With ``recomputes_forward`` (activation checkpointing), the forward pass runs again inside the
    backward pass; that is work done but not model work, so the sampled forward's FLOPs are taken
    off (the head's small forward with them: B rows, negligible). A recomputation inside a kernel
    (``kernels.attention``'s ``Q K^T``: 1-2 % of a bert-base step at length 256) is still counted.
    """

    every: int = 20
    recomputes_forward: bool = False
    sampled_flops: float = 0.0
    sampled_tokens: int = 0
    tokens: int = 0  # padded tokens of all batches

    @contextmanager
    def batch(self, index: int, padded_tokens: int):
        """Context for one batch's forward and backward pass (counted when ``index % every == 0``).

        It yields a function to call between the forward and the backward pass.
        """
        self.tokens += padded_tokens
        if self.every <= 0 or index % self.every:
            yield lambda: None
            return
        counter = flop_counter()
        forward: list[int] = []
        with counter:
            yield lambda: forward.append(counter.get_total_flops())
        flops = counter.get_total_flops()
        if self.recomputes_forward and forward:
            flops -= forward[0]
        self.sampled_flops += flops
        self.sampled_tokens += padded_tokens

    @property
    def total(self) -> float:
        """Estimated FLOPs of all batches so far."""
        return self.sampled_flops / self.sampled_tokens * self.tokens if self.sampled_tokens else 0.0

    def state(self) -> dict[str, float]:
        return {"sampled_flops": self.sampled_flops, "sampled_tokens": self.sampled_tokens, "tokens": self.tokens}

    def load_state(self, state: dict[str, float]) -> None:
        self.sampled_flops = float(state.get("sampled_flops", 0.0))
        self.sampled_tokens = int(state.get("sampled_tokens", 0))
        self.tokens = int(state.get("tokens", 0))


def matmul_peak_flops(
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    n: int | None = None,
    repeats: int | None = None,
    iters: int = 10,
) -> float:
    """Best-of-``repeats`` FLOP/s of an ``n x n`` matmul in the precision's dtype (``auto``: fp32).

    On CPU (``n`` 2048, ``repeats`` 5) each product is timed with ``perf_counter``. On CUDA (``n`` 8192,
    ``repeats`` 3) each timing spans ``iters`` back-to-back products, measured with CUDA events on
    ``device`` itself, so that launch latency does not count; when the matrices do not fit, ``n`` halves.
    The CUDA matrices raise torch's peak-allocation statistic: read peak memory before calling this.
    """
    device = torch.device(device)
    dtype = DTYPES.get(precision, torch.float32)
    if device.type == "cuda":
        return _cuda_matmul_peak(device, dtype, n or 8192, repeats or 3, iters)
    n, repeats = n or 2048, repeats or 5
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with torch.no_grad():
        torch.mm(a, b)  # warm-up: kernel selection, page faults
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _cuda_matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int, iters: int) -> float:
    """FLOP/s of ``n x n`` products on a CUDA device, halving ``n`` (down to 1024) while they do not fit."""
    with torch.cuda.device(device), torch.no_grad():
        while True:
            try:
                return 2.0 * n**3 / _cuda_matmul_seconds(device, dtype, n, repeats, iters)
            except torch.cuda.OutOfMemoryError:
                if n <= 1024:
                    raise
                n //= 2
            finally:
                torch.cuda.empty_cache()  # hand the benchmark's blocks back to the device


def _cuda_matmul_seconds(device: torch.device, dtype: torch.dtype, n: int, repeats: int, iters: int) -> float:
    """Best time of one ``n x n`` product, each timing over ``iters`` products between two CUDA events."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernel selection
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0 / iters)  # elapsed_time is in ms
    return best
