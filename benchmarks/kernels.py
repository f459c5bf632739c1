"""loratune.kernels against what they replace, on BERT-shaped tensors (batch 16 x 256 tokens).

* ``dropout_mask`` vs ``torch.empty(bool).bernoulli_`` (the mask alone);
* ``kernels.dropout`` vs ``F.dropout`` (forward + backward);
* ``kernels.attention`` vs ``F.scaled_dot_product_attention`` with dropout 0.1 (forward + backward;
  on CPU SDPA then runs its math path), and SDPA without dropout (its fused kernel) for scale.

Each line is the median of ``--repeats`` calls after a warm-up, in one process. Usage::

    .venv/bin/python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info
from loratune.kernels import attention, dropout, dropout_mask

BATCH, SEQ, HEADS = 16, 256, 12


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bernoulli_mask(shape):
    return torch.empty(shape, dtype=torch.bool).bernoulli_(0.9)


def torch_dropout(x):
    F.dropout(x, 0.1).sum().backward()


def lean_dropout(x):
    dropout(x, 0.1).sum().backward()


def sdpa(q, k, v, p=0.1):
    F.scaled_dot_product_attention(q, k, v, dropout_p=p).sum().backward()


def lean_attention(q, k, v):
    attention(q, k, v, None, 0.1).sum().backward()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}")
    print("| what | shape | dtype | torch ms | loratune ms | ratio |\n|---|---|---|---|---|---|")

    def row(what, shape, dtype, base, ours):
        b, o = timed(base, args.repeats), timed(ours, args.repeats)
        dims, name = "x".join(map(str, shape)), str(dtype).split(".")[-1]
        print(f"| {what} | {dims} | {name} | {b:.1f} | {o:.1f} | {o / b:.2f} |")

    for hidden in (384, 768):
        shape = (BATCH * SEQ, hidden)
        row("dropout mask", shape, torch.bool, partial(bernoulli_mask, shape), partial(dropout_mask, shape, 0.1))
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            row("dropout fwd+bwd", shape, dtype, partial(torch_dropout, x), partial(lean_dropout, x))
    for head_dim in (32, 64):
        shape = (BATCH, HEADS, SEQ, head_dim)
        for dtype in (torch.float32, torch.bfloat16):
            qkv = [torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3)]
            row("attention p=0.1 fwd+bwd", shape, dtype, partial(sdpa, *qkv), partial(lean_attention, *qkv))
            fused = partial(sdpa, *qkv, p=0.0)
            row("(SDPA p=0, fused kernel, for scale)", shape, dtype, fused, fused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
