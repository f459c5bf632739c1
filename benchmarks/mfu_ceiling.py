"""How high the MFU of a LoRA training step can go on this machine: the matmuls alone, replayed.

MFU counts only matmul FLOPs, so a step can at best run at the speed of its own matmuls. This
script records every matmul of one training step (``mm``, ``addmm``, ``addmm_``, ``bmm``: shapes,
strides, dtypes, from ``torch.profiler``), then replays each distinct one alone, on tensors of the
same layout, and sums the best times. That sum is the step's time if everything else (LayerNorm,
GELU, softmax, dropout, residual adds, casts, the optimizer) cost nothing:

* ``ceiling`` = model FLOPs / (matmuls alone) / matmul peak: the MFU of a step with free elementwise work;
* ``with traffic`` adds the least memory traffic a step needs: the activations that autograd saves
  are written in the forward and read in the backward pass at least once (bytes from
  ``saved_tensors_hooks``, at this machine's measured copy bandwidth).

Same workload as ``lora_step.py`` (batch 16 x 256, LoRA r=8 on query/value, the lean kernels).

Usage::

    .venv/bin/python benchmarks/mfu_ceiling.py --models bert-base,minilm --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import machine_info, matmul_peak_flops

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")
_DTYPES = {"float": "float32", "c10::BFloat16": "bfloat16", "c10::Half": "float16", "double": "float64"}


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 8) -> float:
    """Bytes per second moved by a large ``copy_`` (read plus write), best of ``repeats``."""
    import torch

    a, b = torch.randn(nbytes // 4), torch.empty(nbytes // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def _tensor(shape, strides, dtype):
    import torch

    extent = 1 + sum((s - 1) * st for s, st in zip(shape, strides, strict=True) if s > 0)
    return torch.randn(extent).to(dtype).as_strided(shape, strides)


def _flops(name: str, shapes) -> int:
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    a, w = (shapes[0], shapes[1]) if name == "aten::mm" else (shapes[1], shapes[2])
    return 2 * a[0] * a[1] * w[1]


def _run(name: str, args: list):
    """Call the recorded matmul ``name`` on ``args`` (for ``bmm``, a third tensor is its ``out=``)."""
    import torch

    if name == "aten::mm":
        return torch.mm(*args)
    if name == "aten::addmm":
        return torch.addmm(*args)
    if name == "aten::addmm_":
        return args[0].addmm_(args[1], args[2])
    return torch.bmm(args[0], args[1], out=args[2] if len(args) == 3 else None)


def _replay(name: str, shapes, strides, dtypes, repeats: int) -> float:
    """Best time of one recorded matmul, rerun alone on tensors of its layout."""
    import torch

    args = [
        _tensor(shape, stride, getattr(torch, _DTYPES[dtype]))
        for shape, stride, dtype in zip(shapes, strides, dtypes, strict=True)
    ]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            _run(name, args)
            best = min(best, time.perf_counter() - t0)
    return best


def measure(model_name: str, precision: str, repeats: int) -> dict:
    import torch
    from torch.profiler import profile

    from lora_step import BATCH, SEQ, apply_method, build_model, model_flops

    model = apply_method(build_model(model_name, "sdpa"), "loratune-lean", precision)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, model.config.vocab_size, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, 2, (BATCH,), generator=gen)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step() -> float:
        t0 = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step()
    step_s = min(step() for _ in range(2))
    with profile(record_shapes=True) as prof:
        step()
    calls: Counter = Counter()
    for e in prof.events():
        if e.name in MATMULS:
            n = sum(1 for d in e.input_dtypes[:3] if d in _DTYPES)  # the tensor arguments
            key = (
                e.name,
                tuple(map(tuple, e.input_shapes[:n])),
                tuple(map(tuple, e.structured_input_strides[:n])),
                tuple(e.input_dtypes[:n]),
            )
            calls[key] += 1

    # the least traffic: what autograd saves, written once and read once (parameters excluded)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model(input_ids=ids, labels=labels).loss
    del loss
    saved_bytes = sum(saved.values())

    matmul_s = replayed_flops = 0.0
    for (name, shapes, strides, dtypes), count in calls.items():
        matmul_s += count * _replay(name, shapes, strides, dtypes, repeats)
        replayed_flops += count * _flops(name, shapes)
    return {
        "model": model_name,
        "precision": precision,
        "step_s": step_s,
        "model_flops": model_flops(model.config, "loratune", getattr(model, "first_token_layer", False)),
        "replayed_flops": replayed_flops,
        "matmul_calls": sum(calls.values()),
        "distinct_matmuls": len(calls),
        "matmul_s": matmul_s,
        "saved_bytes": saved_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bert-base,minilm")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs of each distinct matmul")
    args = ap.parse_args(argv)

    import torch

    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    peaks = matmul_peak_flops()
    bandwidth = copy_bandwidth()
    print(
        f"# matmul peak 4096^3: fp32 {peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    print(
        "| model | precision | step s | MFU now | matmuls alone s (calls) | matmul FLOP/s vs peak "
        "| ceiling | saved GB | with traffic |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        for precision in args.precisions.split(","):
            r = measure(model_name, precision, args.repeats)
            peak = peaks[precision]
            traffic_s = 2 * r["saved_bytes"] / bandwidth
            print(
                f"| {model_name} | {precision} | {r['step_s']:.2f} | {r['model_flops'] / r['step_s'] / peak:.0%} "
                f"| {r['matmul_s']:.2f} ({r['matmul_calls']}) | {r['replayed_flops'] / r['matmul_s'] / peak:.0%} "
                f"| {r['model_flops'] / r['matmul_s'] / peak:.0%} | {r['saved_bytes'] / 1e9:.2f} "
                f"| {r['model_flops'] / (r['matmul_s'] + traffic_s) / peak:.0%} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
