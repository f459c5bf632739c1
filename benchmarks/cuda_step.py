"""One training step on a CUDA GPU: loratune LoRA vs PEFT LoRA vs full fine-tuning.

Two randomly initialised shapes (weights do not change a step's time): ``minilm``, the shape of
all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters), and ``bert-base`` (``BertConfig()``
defaults, 110M parameters). Batch 16 x 256 tokens, LoRA r=8, alpha=32, dropout 0.1 on query/value
with the classifier trained, set up by ``lora_step.apply_method`` (``-lean``: loratune's kernels and
bf16 frozen layers, as ``loratune train`` runs); fp32 and bf16 autocast. Each configuration runs in
a fresh process; memory is ``torch.cuda.max_memory_allocated``; FLOPs are counted on one extra step
(``loratune.train.flops.flop_counter``), and MFU is against ``matmul_peak_flops`` on the same GPU.

    python benchmarks/cuda_step.py [--models minilm,bert-base] [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("minilm", "bert-base")
METHODS = ("loratune", "loratune-lean", "peft", "full")
PRECISIONS = ("fp32", "bf16")
SHAPES: dict[str, dict[str, int]] = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {},
}


def build(model_name: str, method: str, precision: str):
    """The model of one configuration, on the CPU, in train mode, set up for ``method``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lora_step import apply_method

    torch.manual_seed(0)
    config = BertConfig(num_labels=2, **SHAPES[model_name])
    model = BertForSequenceClassification._from_config(config, attn_implementation="sdpa")
    return apply_method(model, method, precision)


def run_one(model_name: str, method: str, precision: str, steps: int, batch: int, seq: int) -> dict:
    """One configuration in this process: median step time, peak memory and counted FLOPs per step."""
    import torch

    from loratune.train.flops import flop_counter

    model = build(model_name, method, precision).cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1000, 20000, (batch, seq), device="cuda")
    labels = torch.randint(0, 2, (batch,), device="cuda")

    def step() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(3):
        step()
    with flop_counter() as counter:
        step()
    torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    return {
        "model": model_name,
        "method": method,
        "precision": precision,
        "step_ms": 1000 * statistics.median(times),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        "flops": counter.get_total_flops(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def add_mfu(rows: list[dict], peaks: dict[str, float]) -> None:
    """``mfu`` of each row: its counted FLOPs per second over the matmul peak of its precision."""
    for r in rows:
        peak = peaks.get(r["precision"])
        r["mfu"] = r["flops"] / (r["step_ms"] / 1000) / peak if peak and r.get("flops") else None


def markdown_table(rows: list[dict]) -> list[str]:
    """The rows as a markdown table, with time and memory relative to PEFT and memory to full FT."""
    by = {(r["model"], r["precision"], r["method"]): r for r in rows}
    lines = [
        "| model | precision | method | ms/step | peak GB | MFU | time vs PEFT | memory vs PEFT | memory vs full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peft_r, full_r = by.get((r["model"], r["precision"], "peft")), by.get((r["model"], r["precision"], "full"))
        t = f"{r['step_ms'] / peft_r['step_ms']:.2f}x" if peft_r else "-"
        m = f"{r['peak_gb'] / peft_r['peak_gb']:.2f}x" if peft_r else "-"
        f = f"{r['peak_gb'] / full_r['peak_gb']:.2f}x" if full_r else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['method']} | {r['step_ms']:.1f} | {r['peak_gb']:.2f} | {mfu} "
            f"| {t} | {m} | {f} |"
        )
    return lines


def measure_peaks(precisions: list[str]) -> dict[str, float]:
    """The GPU's matmul peak per precision, as ``loratune train`` measures it for its MFU."""
    from loratune.train.flops import matmul_peak_flops

    return {p: matmul_peak_flops("cuda", p) for p in precisions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.batch, args.seq)))
        return 0
    precisions = args.precisions.split(",")
    rows, failed = [], []
    for model in args.models.split(","):
        for precision in precisions:
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, "--one", model, method, precision, *shape]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"{model} {precision} {method} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    failed.append(f"{model} {precision} {method}")
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peaks = measure_peaks(precisions)
    add_mfu(rows, peaks)
    head = rows[0] if rows else {"device": "?", "torch": "?"}
    print(f"device: {head['device']}, torch {head['torch']}, batch {args.batch} x {args.seq}, median of "
          f"{args.steps} steps; matmul peak (TFLOP/s): "
          + ", ".join(f"{p} {v / 1e12:.0f}" for p, v in peaks.items()) + "\n")  # fmt: skip
    print("\n".join(markdown_table(rows)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "peaks": peaks, "failed": failed}, fh, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
