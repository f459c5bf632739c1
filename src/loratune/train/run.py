"""A whole training run for sequence classification: data -> model -> LoRA -> loop -> artifacts.

Everything that can fail on bad input (data, model, options) is checked before the output folder
is touched, so a user error never leaves a half-written run behind.

Outputs in ``RunConfig.output``::

    adapter/         PEFT-format adapter + head + tokenizer + loratune.json (full FT: model/)
    metrics.jsonl    one record per logging step and per evaluation
    summary.json     final and best metrics, time, throughput, memory, parameters, artifact size
    curves.png       training loss and validation accuracy
    checkpoints/     the last checkpoints, for --resume
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import loratune
from loratune.artifacts import TASK_FILE, base_fingerprint
from loratune.data.batching import DynamicPaddingCollator, LengthGroupedBatchSampler, tokenize_dataset
from loratune.data.sources import TextClassificationData, load_text_classification
from loratune.errors import RunError
from loratune.fastpath import use_lean_kernels
from loratune.fsutil import atomic_dir, atomic_write_json
from loratune.kernels import keep_freed_memory
from loratune.lora import LoraConfig, add_lora, parameter_report, write_adapter
from loratune.models import (
    default_target_modules,
    head_module_names,
    load_model_for_sequence_classification,
    load_tokenizer,
)
from loratune.tasks.seq_cls import TASK_TYPE, classification_metrics
from loratune.train.checkpoint import latest_checkpoint
from loratune.train.config import RunConfig
from loratune.train.flops import matmul_peak_flops
from loratune.train.logging import environment_info, read_metrics
from loratune.train.loop import LoopConfig, LoopResult, train
from loratune.train.memory import dir_size_bytes, peak_memory_bytes, reset_peak_cuda
from loratune.train.plots import plot_training_curves
from loratune.train.precision import autocast_context, resolve_device, resolve_precision, store_frozen_linears
from loratune.train.progress import progress_bar

ADAPTER_DIR, MODEL_DIR = "adapter", "model"
RUN_CONFIG = "run_config.json"  # marks a folder as a loratune run (so --overwrite may replace it)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_output_dir(cfg: RunConfig) -> Path:
    """Refuse a non-empty output without --overwrite/--resume, and --resume without a checkpoint."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise RunError(f"--output {out} is a file; pass a folder path")
    non_empty = out.is_dir() and any(out.iterdir())
    if cfg.resume:
        if latest_checkpoint(out) is None:
            raise RunError(f"no checkpoint in {out}/checkpoints to resume from; drop --resume to start a fresh run")
    elif non_empty and not cfg.overwrite:
        raise RunError(
            f"--output {out} exists and is not empty; pass --overwrite to replace it, "
            "--resume to continue it, or another --output"
        )
    elif non_empty and not (out / RUN_CONFIG).is_file():
        raise RunError(
            f"--output {out} is not a loratune run folder (no {RUN_CONFIG}), so --overwrite will not delete it; "
            "pass a new or empty folder"
        )
    return out


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the output folder is touched."""

    cfg: RunConfig
    data: TextClassificationData
    tokenizer: Any
    model: nn.Module
    device: torch.device
    precision: str
    fingerprint: str | None
    freed_memory_kept: bool = False  # glibc keeps freed blocks for reuse (kernels.host_memory)
    first_token_layer: bool = False  # the last encoder layer computes position 0 only (fastpath)
    frozen_linears_stored: int = 0  # frozen linear layers kept in the autocast dtype (precision.py)


def load_data(cfg: RunConfig) -> TextClassificationData:
    """The train and eval data that ``cfg`` names (subsampled and split with its seed)."""
    return load_text_classification(
        cfg.dataset,
        train_file=cfg.train_file,
        eval_file=cfg.eval_file,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        train_size=cfg.train_size,
        eval_size=cfg.eval_size,
        seed=cfg.seed,
    )


def prepare(cfg: RunConfig) -> Prepared:
    """Load data, tokenizer and model; add LoRA (or unfreeze all for full fine-tuning)."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = load_data(cfg)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = load_model_for_sequence_classification(
        cfg.model, data.num_labels, data.id2label, data.label2id, trust_remote_code=cfg.trust_remote_code
    )
    fingerprint = base_fingerprint(model)
    if cfg.method == "lora":
        targets = cfg.target_modules or default_target_modules(model.config.model_type, "seq_cls")
        lora_config = LoraConfig(
            r=cfg.r,
            alpha=cfg.alpha,
            dropout=cfg.dropout,
            target_modules=targets,
            modules_to_save=head_module_names(model),
            use_rslora=cfg.rslora,
            task_type=TASK_TYPE,
            base_model_name_or_path=cfg.model,
        )
        add_lora(model, lora_config)
    else:
        model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kept = first_token = False
    if cfg.kernels == "lean":
        first_token = use_lean_kernels(model).first_token_layer
        kept = device.type == "cpu" and keep_freed_memory()
    stored = store_frozen_linears(model, precision)
    model.to(device)
    return Prepared(cfg, data, tokenizer, model, device, precision, fingerprint, kept, first_token, stored)


def task_info(prep: Prepared) -> dict[str, Any]:
    """What ``loratune.json`` records: enough to predict, and to re-evaluate on the same data."""
    cfg = prep.cfg
    return {
        "task": "seq_cls",
        "method": cfg.method,
        "labels": prep.data.labels,
        "base_model": cfg.model,
        "base_model_fingerprint": prep.fingerprint,
        "max_length": cfg.max_length,
        "data": {
            "dataset": cfg.dataset,
            "train_file": cfg.train_file,
            "eval_file": cfg.eval_file,
            "text_column": cfg.text_column,
            "label_column": cfg.label_column,
            "train_size": cfg.train_size,
            "eval_size": cfg.eval_size,
            "seed": cfg.seed,
        },
        "loratune_version": loratune.__version__,
    }


def save_artifact(prep: Prepared, out: Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write the adapter (or full model) with tokenizer and task info, atomically."""
    info = task_info(prep)
    if metrics is not None:
        info["metrics"] = _without_matrix(metrics)
    target = out / (ADAPTER_DIR if prep.cfg.method == "lora" else MODEL_DIR)
    with atomic_dir(target) as tmp:
        if prep.cfg.method == "lora":
            write_adapter(prep.model, tmp)
        else:
            prep.model.save_pretrained(tmp, safe_serialization=True)
        prep.tokenizer.save_pretrained(tmp)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return target


def make_loaders(prep: Prepared) -> tuple[DataLoader, DataLoader]:
    cfg = prep.cfg
    collator = DynamicPaddingCollator(
        prep.tokenizer,
        max_length=cfg.max_length if cfg.padding == "max_length" else None,
        pad_to_multiple_of=cfg.pad_to_multiple_of if cfg.pad_to_multiple_of > 1 else None,
    )
    train_tok = tokenize_dataset(prep.data.train, prep.tokenizer, cfg.max_length)
    eval_tok = tokenize_dataset(prep.data.eval, prep.tokenizer, cfg.max_length)
    train_sampler = LengthGroupedBatchSampler(
        train_tok["length"],
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        mega_batches=50 if cfg.group_by_length else 1,  # 1: random batches, nothing grouped
    )
    eval_sampler = LengthGroupedBatchSampler(eval_tok["length"], cfg.batch_size * 2, shuffle=False)
    # A private generator: creating the loader's iterator must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from an uninterrupted run's.
    kwargs = {"collate_fn": collator, "generator": torch.Generator().manual_seed(cfg.seed)}
    return (
        DataLoader(train_tok, batch_sampler=train_sampler, **kwargs),
        DataLoader(eval_tok, batch_sampler=eval_sampler, **kwargs),
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device, precision, num_labels: int) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion matrix and mean loss over ``loader``."""
    model.eval()
    logits, labels, loss_sum, n = [], [], 0.0, 0
    bar = progress_bar(len(loader), "eval", every_pct=None, unit="batch")
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(precision, device):
                out = model(**batch)
            logits.append(out.logits.float().cpu())
            labels.append(batch["labels"].cpu())
            loss_sum += float(out.loss) * batch["labels"].shape[0]
            n += batch["labels"].shape[0]
            bar.update(1)
    finally:
        bar.close()
    metrics = classification_metrics(torch.cat(logits), torch.cat(labels), num_labels)
    metrics["loss"] = loss_sum / max(n, 1)
    return metrics


def run_training(cfg: RunConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return the summary (also written to ``summary.json``)."""
    cfg.validate()
    out = check_output_dir(cfg)  # cheap checks first
    prep = prepare(cfg)
    train_loader, eval_loader = make_loaders(prep)
    # All input is valid: now the output folder may change.
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_CONFIG, asdict(cfg))
    reset_peak_cuda(prep.device)
    report = parameter_report(prep.model)
    loop_cfg = LoopConfig(
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        pause_at_step=cfg.pause_at_step,
        grad_accum=cfg.grad_accum,
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        eval_every=cfg.eval_every,
        save_every=cfg.save_every,
        early_stopping_patience=cfg.early_stopping_patience,
        log_every=cfg.log_every,
    )
    started = time.perf_counter()
    result = train(
        prep.model,
        train_loader,
        config=loop_cfg,
        device=prep.device,
        precision=prep.precision,
        run_dir=out,
        evaluate=lambda: evaluate(
            prep.model,
            eval_loader,
            device=prep.device,
            precision=prep.precision,
            num_labels=prep.data.num_labels,
        ),
        on_best=lambda metrics: save_artifact(prep, out, metrics),
        resume=cfg.resume,
        show_progress=cfg.progress,
    )
    wall = time.perf_counter() - started
    peak = matmul_peak_flops(prep.device, prep.precision)
    summary = build_summary(prep, result, report, out, wall, peak)
    atomic_write_json(out / "summary.json", summary)
    plot_training_curves(read_metrics(out / "metrics.jsonl"), out / "curves.png", title=summary["title"])
    return summary


def _without_matrix(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if k != "confusion_matrix"}


def build_summary(
    prep: Prepared, result: LoopResult, report, out: Path, wall: float, matmul_peak: float | None = None
) -> dict[str, Any]:
    cfg = prep.cfg
    artifact = out / (ADAPTER_DIR if cfg.method == "lora" else MODEL_DIR)
    return {
        "title": f"{cfg.model} on {prep.data.source}: {cfg.method}" + (f" r={cfg.r}" if cfg.method == "lora" else ""),
        "task": "seq_cls",
        "method": cfg.method,
        "model": cfg.model,
        "dataset": prep.data.source,
        "labels": prep.data.labels,
        "train_examples": len(prep.data.train),
        "eval_examples": len(prep.data.eval),
        "final": _without_matrix(result.last_eval),
        "best": _without_matrix(result.best),
        "confusion_matrix": (result.best or {}).get("confusion_matrix"),
        "steps": result.steps,
        "epochs": round(result.epochs_done, 4),
        "stopped_early": result.stopped_early,
        "paused": result.paused,
        "resumed_from_step": result.resumed_from,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(result.train_seconds, 2),
        "examples_per_s": round(result.examples_per_s, 2),
        "tokens_seen": result.tokens_seen,
        "model_flops": result.flops,
        "achieved_flops_per_s": result.flops / result.train_seconds if result.train_seconds > 0 else 0.0,
        "matmul_peak_flops_per_s": matmul_peak,
        "mfu": (result.flops / result.train_seconds / matmul_peak) if matmul_peak and result.train_seconds else None,
        "peak_memory_bytes": peak_memory_bytes(prep.device),
        "trainable_params": report.trainable,
        "total_params": report.total,
        "trainable_percent": round(report.percent, 4),
        "artifact": str(artifact),
        "artifact_bytes": dir_size_bytes(artifact) if artifact.exists() else 0,
        "weights_bytes": sum(f.stat().st_size for f in artifact.glob("*.safetensors")),
        "precision": prep.precision,
        "device": str(prep.device),
        "kernels": cfg.kernels,
        "freed_memory_kept": prep.freed_memory_kept,
        "first_token_layer": prep.first_token_layer,
        "frozen_linears_in_compute_dtype": prep.frozen_linears_stored,
        "config": asdict(cfg),
        "environment": environment_info(prep.device),
    }
