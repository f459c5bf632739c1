"""One training step on a CUDA GPU: loratune LoRA vs PEFT LoRA vs full fine-tuning.

bert-base-shaped random model (BertConfig defaults, 110M parameters), batch 16 x 256 tokens,
LoRA r=8, alpha=32, dropout 0.1 on query/value with the classifier trained; fp32 and bf16 autocast.
Each configuration runs in a fresh process; memory is ``torch.cuda.max_memory_allocated``.

    python benchmarks/cuda_step.py [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

METHODS = ("loratune", "peft", "full")
PRECISIONS = ("fp32", "bf16")


def run_one(method: str, precision: str, steps: int, batch: int, seq: int) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification._from_config(BertConfig(num_labels=2), attn_implementation="sdpa")
    lora = dict(r=8, dropout=0.1, target_modules=["query", "value"], modules_to_save=["classifier"])
    if method == "loratune":
        from loratune import LoraConfig, add_lora

        add_lora(model, LoraConfig(alpha=32, **lora))
    elif method == "peft":
        import peft

        model = peft.get_peft_model(
            model,
            peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["query", "value"],
                            modules_to_save=["classifier"], task_type="SEQ_CLS"),
        )  # fmt: skip
    model.cuda().train()
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
    torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(steps)]
    return {
        "method": method,
        "precision": precision,
        "step_ms": 1000 * statistics.median(times),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.batch, args.seq)))
        return 0
    rows = []
    for precision in PRECISIONS:
        for method in METHODS:
            cmd = [sys.executable, __file__, "--one", method, precision, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--seq", str(args.seq)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    by = {(r["method"], r["precision"]): r for r in rows}
    print(f"device: {rows[0]['device'] if rows else '?'}, torch {rows[0]['torch'] if rows else '?'}, "
          f"batch {args.batch} x {args.seq}, median of {args.steps} steps\n")  # fmt: skip
    print("| precision | method | ms/step | peak GB | time vs PEFT | memory vs PEFT | memory vs full |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peft_r, full_r = by.get(("peft", r["precision"])), by.get(("full", r["precision"]))
        t = f"{r['step_ms'] / peft_r['step_ms']:.2f}x" if peft_r else "-"
        m = f"{r['peak_gb'] / peft_r['peak_gb']:.2f}x" if peft_r else "-"
        f = f"{r['peak_gb'] / full_r['peak_gb']:.2f}x" if full_r else "-"
        print(f"| {r['precision']} | {r['method']} | {r['step_ms']:.1f} | {r['peak_gb']:.2f} | {t} | {m} | {f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
