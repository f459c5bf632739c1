"""The adapted layers alone: query + value LoRA layers, forward and backward, loratune vs PEFT.

Isolates the LoRA layer implementation from the rest of the model (attention, head, allocator).
Shapes: batch 16 x 256 tokens, hidden 384 (MiniLM) and 768 (bert-base); r=8, alpha=32, dropout 0.1.

    python benchmarks/lora_layer.py [--iters 30]
"""

from __future__ import annotations

import argparse
import copy
import time

import peft
import torch
from torch import nn

from loratune import LoraConfig, add_lora


class QV(nn.Module):
    """Two sibling linear layers reading the same input, like an attention block's query and value."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x) + self.value(x)


def median_ms(model: nn.Module, x0: torch.Tensor, precision: str, iters: int) -> float:
    times = []
    for _ in range(iters):
        x = x0.clone().requires_grad_(True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = model(x)
        y.float().sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[iters // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    print("| hidden | precision | loratune ms | PEFT ms | loratune / PEFT |")
    print("|---|---|---|---|---|")
    for hidden in (384, 768):
        torch.manual_seed(0)
        base = QV(hidden)
        ours = add_lora(copy.deepcopy(base), LoraConfig(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"]))
        theirs = peft.get_peft_model(
            copy.deepcopy(base),
            peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["query", "value"]),
        )
        ours.train(), theirs.train()
        x0 = torch.randn(16, 256, hidden)
        for precision in ("fp32", "bf16"):
            median_ms(ours, x0, precision, 3), median_ms(theirs, x0, precision, 3)  # warm-up
            a, b = median_ms(ours, x0, precision, args.iters), median_ms(theirs, x0, precision, args.iters)
            print(f"| {hidden} | {precision} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
