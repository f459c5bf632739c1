"""Token classification, loratune's engine against PEFT's at identical settings, step by step.

Both engines train the same pretrained model on the same tagged data: loratune's loader and word-piece
alignment, one seeded batch order, AdamW with loratune's parameter groups, linear warm-up and decay, gradient
clipping at 1.0, the same precision. Only the LoRA engine differs: ``loratune`` is ``prepare_model`` (lean
kernels unless ``--kernels torch``), ``peft`` is ``peft.get_peft_model``. Each run writes the loss of every step,
the validation entity F1 after every epoch and the test F1 at the end to one JSON file, and ``--compare`` prints
two such files side by side (per-step loss difference, F1 per epoch).

Usage (``--data``: a folder with train/dev/test files, as ``loratune train --dataset`` takes it)::

    .venv/bin/python benchmarks/ner_parity.py --data DIR --engine peft --out peft.json
    .venv/bin/python benchmarks/ner_parity.py --data DIR --engine loratune --out lt.json
    .venv/bin/python benchmarks/ner_parity.py --compare peft.json lt.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info
from loratune.data.tagging import load_tagging
from loratune.lora import LoraConfig
from loratune.models import load_pretrained_model, load_tokenizer
from loratune.prepare import prepare_model
from loratune.tasks.token_cls import EntityMetrics, TokenCollator, tokenize_words
from loratune.train.loop import build_optimizer, linear_schedule_with_warmup
from loratune.train.precision import resolve_precision


def lora_model(args: argparse.Namespace, labels: list[str]) -> torch.nn.Module:
    """The pretrained token classifier with the engine's LoRA (the seed fixes the head and LoRA's start)."""
    torch.manual_seed(args.seed)
    model = load_pretrained_model("AutoModelForTokenClassification", args.model, labels=labels)
    targets = args.targets.split(",")
    if args.engine == "peft":
        import peft

        config = peft.LoraConfig(task_type="TOKEN_CLS", r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                 target_modules=targets)  # fmt: skip
        return peft.get_peft_model(model, config)
    config = LoraConfig(r=args.r, alpha=args.alpha, dropout=args.dropout, target_modules=targets,
                        modules_to_save=["classifier"], task_type="TOKEN_CLS")  # fmt: skip
    return prepare_model(model, config, precision=args.precision, kernels=args.kernels)


def evaluate(model: torch.nn.Module, split: Any, collate: Any, labels: list[str], bf16: bool) -> dict[str, float]:
    metrics = EntityMetrics(labels)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for lo in range(0, len(split), 32):
            batch = collate([split[i] for i in range(lo, min(lo + 32, len(split)))])
            metrics.update(model(**batch), batch)
    model.train()
    out = metrics.compute()
    return {k: round(out[k], 4) for k in ("f1", "precision", "recall", "loss")}


def train(args: argparse.Namespace) -> dict[str, Any]:
    data = load_tagging(args.data, seed=args.seed, val_size=args.val_size)
    tokenizer = load_tokenizer(args.model)
    train_split, collate = tokenize_words(data.train, tokenizer, args.max_length), TokenCollator(tokenizer)
    val = tokenize_words(data.val if data.val is not None else data.eval, tokenizer, args.max_length)
    test = tokenize_words(data.eval, tokenizer, args.max_length)
    model, bf16 = lora_model(args, data.labels), args.precision == "bf16"
    order = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * math.ceil(len(train_split) / args.batch_size)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    schedule = linear_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * steps), steps)
    params = [p for p in model.parameters() if p.requires_grad]
    losses, epochs, start = [], [], time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(train_split), generator=order).tolist()
        for lo in range(0, len(perm), args.batch_size):
            batch = collate([train_split[i] for i in perm[lo : lo + args.batch_size]])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
            losses.append(round(float(loss.detach()), 5))
        epochs.append({"epoch": epoch + 1, **evaluate(model, val, collate, data.labels, bf16)})
        print(json.dumps(epochs[-1]), flush=True)
    return {"settings": vars(args), "labels": data.labels, "source": data.source, "losses": losses,
            "epochs": epochs, "test": evaluate(model, test, collate, data.labels, bf16),
            "seconds": round(time.perf_counter() - start, 1), "machine": machine_info()}  # fmt: skip


def compare(a_path: str, b_path: str) -> None:
    """Per-step loss differences and F1 per epoch of two runs."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    diff = [abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True)]
    n = len(diff)
    print(f"steps {n}: |loss difference| mean {fmean(diff):.4f}, max {max(diff):.4f}")
    for lo in range(0, n, max(1, n // 8)):
        window = slice(lo, min(n, lo + max(1, n // 8)))
        print(
            f"  steps {lo + 1}-{window.stop}: loss {fmean(a['losses'][window]):.4f} vs {fmean(b['losses'][window]):.4f}"
        )
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        print(
            f"  epoch {ea['epoch']}: val F1 {ea['f1']:.4f} vs {eb['f1']:.4f}, "
            f"val loss {ea['loss']:.4f} vs {eb['loss']:.4f}"
        )
    print(f"  test F1 {a['test']['f1']:.4f} vs {b['test']['f1']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", nargs=2, metavar="JSON")
    parser.add_argument("--data")
    parser.add_argument("--engine", choices=("loratune", "peft"), default="loratune")
    parser.add_argument("--kernels", choices=("lean", "torch"), default="lean")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--targets", default="query,key,value")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=None, help="hold validation out of train (no dev file)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision == "auto":  # as `loratune train` resolves it on this CPU
        args.precision = resolve_precision("auto", torch.device("cpu"))
    result = train(args)
    print(json.dumps({"test": result["test"], "seconds": result["seconds"]}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return None


if __name__ == "__main__":
    main()
