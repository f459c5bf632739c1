"""``summary.json``: a run's final and best metrics, time, throughput, memory, parameters and artifact size."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from loratune.host_memory import freed_memory_kept
from loratune.lora import ParameterReport
from loratune.train.distributed import Parallel
from loratune.train.export import artifact_dir, without_matrix
from loratune.train.logging import environment_info
from loratune.train.loop import LoopResult
from loratune.train.memory import dir_size_bytes
from loratune.train.setup import RunSetup


def rank_speed(result: LoopResult) -> dict[str, float]:
    """What this rank trained, and for how long: what ``distributed_summary`` gathers from every rank."""
    return {
        "examples": result.examples_seen,
        "tokens": result.tokens_seen,
        "flops": result.flops,
        "seconds": result.train_seconds,
    }


def distributed_summary(setup: RunSetup, parallel: Parallel, ranks: list[dict[str, float]]) -> dict[str, Any]:
    """summary.json's throughput over all ranks and, for a distributed run, its ``distributed`` record:
    the backend, global batch, bytes all-reduced per optimizer step (against the trainable gradients'
    bytes) and each rank's examples/s. Time is the slowest rank's; examples, tokens and FLOPs are all
    ranks' (MFU stays rank 0's, against one device's peak)."""
    seconds = max(r["seconds"] for r in ranks)
    examples, flops = sum(r["examples"] for r in ranks), sum(r["flops"] for r in ranks)
    speed = {
        "world_size": parallel.world_size,
        "train_seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 2) if seconds > 0 else 0.0,
        "tokens_seen": sum(r["tokens"] for r in ranks),
        "model_flops": flops,
        "achieved_flops_per_s": flops / seconds if seconds > 0 else 0.0,
    }
    if parallel.world_size == 1:
        return {**speed, "distributed": None}
    cfg, steps = setup.cfg, parallel.step_bytes
    per_rank = [round(r["examples"] / r["seconds"], 2) if r["seconds"] else 0.0 for r in ranks]
    return {
        **speed,
        "distributed": {
            "backend": parallel.backend,
            "global_batch_size": cfg.batch_size * parallel.world_size * cfg.grad_accum,
            "allreduce_bytes_per_step": steps[0] if steps and len(set(steps)) == 1 else steps or None,
            "trainable_grad_bytes": parallel.trainable_bytes,
            "examples_per_s_per_rank": per_rank,
        },
    }


def _speed(result: LoopResult, matmul_peak: float | None) -> dict[str, Any]:
    seconds = result.train_seconds
    return {
        "train_seconds": round(seconds, 2),
        "examples_per_s": round(result.examples_per_s, 2),
        "tokens_seen": result.tokens_seen,
        "model_flops": result.flops,
        "achieved_flops_per_s": result.flops / seconds if seconds > 0 else 0.0,
        "matmul_peak_flops_per_s": matmul_peak,
        "mfu": (result.flops / seconds / matmul_peak) if matmul_peak and seconds else None,
    }


def build_summary(
    setup: RunSetup,
    result: LoopResult,
    report: ParameterReport,
    out: Path,
    wall: float,
    matmul_peak: float | None,
    peak_memory: int,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: ``best``/``final`` are the evaluations that chose the checkpoint; ``test`` the
    eval split scored once with the kept weights, when a validation split chose them."""
    cfg, done = setup.cfg, setup.preparation
    artifact = artifact_dir(out, cfg.method)
    return {
        "title": f"{cfg.model} on {setup.data.source}: {cfg.method}" + (f" r={cfg.r}" if cfg.method == "lora" else ""),
        "task": setup.task.name,
        "metric": setup.task.metric.name,
        "method": cfg.method,
        "loraplus_ratio": cfg.loraplus_ratio,
        "model": cfg.model,
        "model_revision": cfg.revision,
        "dataset": setup.data.source,
        "dataset_revision": cfg.dataset_revision,
        **setup.task.artifact_info(setup.data),
        "train_examples": len(setup.data.train),
        "eval_examples": len(setup.data.eval),
        "val_examples": len(setup.data.val) if setup.data.val is not None else None,
        "selection": setup.data.selection,
        "final": without_matrix(result.last_eval),
        "best": without_matrix(result.best),
        "confusion_matrix": (result.best or {}).get("confusion_matrix"),
        "test": test,
        "warning": setup.task.learned_nothing(result.evals),
        "steps": result.steps,
        "epochs": round(result.epochs_done, 4),
        "stopped_early": result.stopped_early,
        "paused": result.paused,
        "resumed_from_step": result.resumed_from,
        "skipped_steps": result.skipped_steps,
        "wall_seconds": round(wall, 2),
        **_speed(result, matmul_peak),
        "peak_memory_bytes": peak_memory,
        "trainable_params": report.trainable,
        "total_params": report.total,
        "trainable_percent": round(report.percent, 4),
        "artifact": str(artifact),
        "artifact_bytes": dir_size_bytes(artifact) if artifact.exists() else 0,
        "weights_bytes": sum(f.stat().st_size for f in artifact.glob("*.safetensors")),
        "precision": setup.precision,
        "device": str(setup.device),
        "kernels": cfg.kernels,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "kernel_notes": done.notes,
        "freed_memory_kept": cfg.malloc_tuning and freed_memory_kept(),
        "first_token_layer": done.first_token_layer,
        "frozen_linears_in_compute_dtype": done.frozen_linears_stored,
        "config": asdict(cfg),
        "environment": environment_info(setup.device),
    }
