"""A whole training run: data -> model -> LoRA -> loop -> artifacts, for any task.

Everything that can fail on bad input (data, model, options) is checked before the output folder
is touched, so a user error never leaves a half-written run behind.

Outputs in ``RunConfig.output``::

    adapter/         PEFT-format adapter + head + tokenizer + loratune.json (full FT: model/)
    metrics.jsonl    one record per logging step and per evaluation
    summary.json     final and best metrics, time, throughput, memory, parameters, artifact size
    curves.png       training loss and the validation metrics
    checkpoints/     the last checkpoints, for --resume
    tensorboard/     with --report-to tensorboard: the same metrics as TensorBoard events

Under torchrun every process runs this whole function (``train/distributed.py``): each loads the
data and the model, trains on its share of every batch and evaluates its share of the batches;
rank 0 alone writes the folder and holds its lock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import loratune
from loratune.artifacts import TASK_FILE, base_fingerprint
from loratune.data.batching import DistributedLengthGroupedBatchSampler, LengthGroupedBatchSampler, RankShard
from loratune.data.options import RECORDED, DataOptions
from loratune.errors import RunError
from loratune.fsutil import LOCK_FILE, atomic_dir, atomic_write_json, clear_folder, folder_lock, follow_umask
from loratune.lora import ALL_LINEAR, LoraConfig, load_adapter, parameter_report, write_adapter
from loratune.lora.model import lora_layers
from loratune.models import (
    default_target_modules,
    hub_id,
    load_tokenizer,
    short_patterns,
    use_tokenizer_pad_id,
)
from loratune.prepare import DTYPES, Preparation, prepare_model
from loratune.tasks import Task, TaskData, get_task
from loratune.train.checkpoint import checkpoint_world_size, latest_checkpoint
from loratune.train.config import RunConfig, flag_of, resumable_options, resume_conflicts
from loratune.train.determinism import deterministic_algorithms
from loratune.train.distributed import Parallel, session
from loratune.train.evaluate import evaluate
from loratune.train.flops import matmul_peak_flops
from loratune.train.host_memory import freed_memory_kept
from loratune.train.logging import environment_info, read_metrics, tensorboard_writer
from loratune.train.loop import LoopConfig, LoopResult, train
from loratune.train.memory import dir_size_bytes, peak_memory_bytes, reset_peak_cuda
from loratune.train.plots import plot_training_curves
from loratune.train.precision import resolve_device, resolve_precision

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
    non_empty = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
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


def check_resume(cfg: RunConfig, out: Path, world_size: int = 1) -> None:
    """Refuse a --resume whose options, or number of processes, would change the run its checkpoints come from."""
    saved_world = checkpoint_world_size(latest_checkpoint(out))
    if saved_world != world_size:
        raise RunError(
            f"--resume: the checkpoints in {out} come from a run on {saved_world} process(es), this one has "
            f"{world_size}; resume with --nproc {saved_world} (torchrun: {saved_world} processes in all), "
            "since the data order and batches depend on it"
        )
    try:
        saved = json.loads((out / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        raise RunError(f"{out / RUN_CONFIG} is missing or unreadable, so --resume cannot check its options; "
                       "start a fresh run with --overwrite") from None  # fmt: skip
    changed = resume_conflicts(saved, cfg)
    if changed:
        allowed = ", ".join(flag_of(name) for name in resumable_options() if name not in ("resume", "output"))
        raise RunError(
            f"--resume cannot change the options of the run in {out}: {'; '.join(changed)}; pass them as before, "
            f"or start a fresh run with --overwrite (may change on resume: {allowed}, and --max-steps upward)"
        )


def usable_max_length(requested: int, model: nn.Module, tokenizer: Any) -> int:
    """``requested``, or the model's number of positions if that is fewer (with a one-line warning).

    RoBERTa-style position embeddings reserve ``padding_idx + 1`` positions; a tokenizer may know a
    smaller limit (``model_max_length``).
    """
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    positions = next((m for n, m in model.named_modules() if n.endswith("position_embeddings")), None)
    if limits[0] and isinstance(positions, nn.Embedding) and positions.padding_idx is not None:
        limits[0] -= positions.padding_idx + 1
    limits.append(getattr(tokenizer, "model_max_length", None))
    limit = min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=None)
    if limit is None or requested <= limit:
        return requested
    print(f"warning: --max-length {requested} is more than the {limit} positions {type(model).__name__} has; "
          f"using {limit}", file=sys.stderr, flush=True)  # fmt: skip
    return limit


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the output folder is touched."""

    cfg: RunConfig
    task: Task
    data: TaskData
    tokenizer: Any
    model: nn.Module
    device: torch.device
    precision: str
    fingerprint: str | None
    preparation: Preparation
    max_length: int  # --max-length, or the model's positions if fewer


def data_options(cfg: RunConfig) -> DataOptions:
    """The data options of ``cfg``, as ``Task.load_data`` takes them."""
    return DataOptions(**{name: getattr(cfg, name) for name in RECORDED})


def load_data(cfg: RunConfig) -> TaskData:
    """The train and eval data that ``cfg`` names (subsampled and split with its seed)."""
    return get_task(cfg.task).load_data(data_options(cfg))


def lora_config(cfg: RunConfig, task: Task, model: nn.Module) -> LoraConfig:
    """The adapter ``cfg`` asks for; the architecture's default targets when it names none."""
    return LoraConfig(
        r=cfg.r,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        target_modules=cfg.target_modules or default_target_modules(model.config.model_type, task.name),
        modules_to_save=task.modules_to_save(model),
        use_rslora=cfg.rslora,
        task_type=task.peft_task_type,
        base_model_name_or_path=hub_id(cfg.model),
    )


def all_linear_note(model: nn.Module, fallback: bool) -> str:
    """What ``all-linear`` adapted: ``all-linear targeted 12 layers: attention.self.query, ...``;
    ``fallback``: it was chosen because the architecture has no default targets."""
    paths = [path for path, _ in lora_layers(model)]
    why = f"no default LoRA targets for model type '{model.config.model_type}', so " if fallback else ""
    return f"{why}all-linear targeted {len(paths)} layers: {', '.join(short_patterns(paths))}"


def prepare(cfg: RunConfig, device: torch.device | None = None) -> Prepared:
    """Load data, tokenizer and model; add LoRA (or unfreeze all for full fine-tuning).

    ``device``: this process's device (a distributed run's rank device); by default ``cfg.device``'s."""
    seed_everything(cfg.seed)
    device = device or resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    task = get_task(cfg.task)
    data = load_data(cfg)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = task.load_model(
        cfg.model,
        task.artifact_info(data),
        trust_remote_code=cfg.trust_remote_code,
        compute_dtype=DTYPES[precision],
        revision=cfg.revision,
    )
    use_tokenizer_pad_id(model, tokenizer)
    max_length = usable_max_length(cfg.max_length, model, tokenizer)
    fingerprint = base_fingerprint(model)
    adapter = lora_config(cfg, task, model) if cfg.method == "lora" else None
    prepare_model(model, adapter, precision=precision, kernels=cfg.kernels,
                  gradient_checkpointing=cfg.gradient_checkpointing)  # fmt: skip
    model.to(device)
    done = loratune.preparation(model)
    for note in done.notes:
        print(f"note: {note}", flush=True)
    if adapter is not None and adapter.target_modules == ALL_LINEAR:
        print(f"note: {all_linear_note(model, cfg.target_modules is None)}", flush=True)
    return Prepared(cfg, task, data, tokenizer, model, device, precision, fingerprint, done, max_length)


def task_info(prep: Prepared) -> dict[str, Any]:
    """What ``loratune.json`` records: enough to predict, and to re-evaluate on the same data."""
    cfg = prep.cfg
    return {
        "task": prep.task.name,
        "method": cfg.method,
        **prep.task.artifact_info(prep.data),
        "base_model": cfg.model,
        "base_model_hub_id": hub_id(cfg.model),
        "base_model_revision": cfg.revision,
        "base_model_fingerprint": prep.fingerprint,
        "max_length": prep.max_length,
        "data": data_options(cfg).record(),
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
            for weights in tmp.glob("*.safetensors"):
                follow_umask(weights)  # safetensors writes 0600; every other file follows the umask
        prep.tokenizer.save_pretrained(tmp)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return target


@dataclass
class Loaders:
    """The run's batches: training, the evaluations that choose the best checkpoint, and the final test."""

    train: DataLoader
    select: DataLoader  # the validation split, else the eval split
    test: DataLoader | None  # the eval split, scored once at the end, when a validation split chooses


def make_loaders(prep: Prepared, parallel: Parallel | None = None) -> Loaders:
    """The run's loaders; in a distributed run, this rank's share of each training batch and of the
    evaluation batches."""
    cfg, task = prep.cfg, prep.task
    world, rank = (parallel.world_size, parallel.rank) if parallel is not None else (1, 0)
    collator = task.collator(
        prep.tokenizer,
        max_length=prep.max_length if cfg.padding == "max_length" else None,
        pad_to_multiple_of=cfg.pad_to_multiple_of if cfg.pad_to_multiple_of > 1 else None,
    )
    # A private generator: creating the loader's iterator must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from an uninterrupted run's.
    kwargs = {"collate_fn": collator, "generator": torch.Generator().manual_seed(cfg.seed)}

    def loader(split: Any, shuffle: bool) -> DataLoader:
        tokens = task.tokenize(split, prep.tokenizer, prep.max_length)
        if shuffle:  # mega_batches=1: random batches, nothing grouped
            sampler = DistributedLengthGroupedBatchSampler(
                tokens["length"], cfg.batch_size, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                mega_batches=50 if cfg.group_by_length else 1,
            )  # fmt: skip
        else:
            whole = LengthGroupedBatchSampler(tokens["length"], cfg.batch_size * 2, shuffle=False)
            sampler = RankShard(whole, num_replicas=world, rank=rank)
        return DataLoader(tokens, batch_sampler=sampler, **kwargs)

    data = prep.data
    train_loader, eval_loader = loader(data.train, True), loader(data.eval, False)
    if data.val is None:
        return Loaders(train_loader, eval_loader, None)
    return Loaders(train_loader, loader(data.val, False), eval_loader)


def test_kept(prep: Prepared, out: Path, loader: DataLoader, parallel: Parallel) -> dict[str, Any]:
    """The eval split's metrics for the kept evaluation's weights (the saved artifact), scored once
    (every rank loads the artifact and scores its shard)."""
    if prep.cfg.method == "lora":
        load_adapter(prep.model, out / ADAPTER_DIR, adapter_name="kept")  # and make it the active one
    else:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted((out / MODEL_DIR).glob("*.safetensors")):
            state.update(load_file(shard, device=str(prep.device)))
        prep.model.load_state_dict(state, strict=False)  # tied weights are saved once
    metrics = prep.task.metrics(prep.data)
    return evaluate(prep.model, loader, metrics, device=prep.device, precision=prep.precision, parallel=parallel)


def loop_config(cfg: RunConfig) -> LoopConfig:
    return LoopConfig(
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        pause_at_step=cfg.pause_at_step,
        grad_accum=cfg.grad_accum,
        lr=cfg.learning_rate,
        loraplus_ratio=cfg.loraplus_ratio,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        eval_every=cfg.eval_every,
        save_every=cfg.save_every,
        early_stopping_patience=cfg.early_stopping_patience,
        log_every=cfg.log_every,
        tensorboard=cfg.report_to == "tensorboard",
    )


def run_training(cfg: RunConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return the summary (also written to ``summary.json``).

    The run folder is locked for the whole run: a second run into it stops at once with an error.
    With ``cfg.deterministic``, torch uses deterministic algorithms only, for the run's length.
    Under torchrun this process is one rank of a data-parallel run (``train/distributed.py``).
    """
    cfg = restarted(cfg.validate())
    with session(resolve_device(cfg.device), cfg.dist_timeout) as parallel:
        lock = folder_lock(cfg.output) if parallel.is_main else contextlib.nullcontext()
        with lock, deterministic_algorithms(cfg.deterministic):
            return _run(cfg, parallel)


def restarted(cfg: RunConfig) -> RunConfig:
    """``cfg``, or, in a process that torchrun restarted (``--max-restarts``), the same run continued: resumed
    from its last checkpoint, or started over when the failed attempt wrote none (its folder holds this
    very run's options, so nothing else is replaced)."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) == 0:
        return cfg
    out = Path(cfg.output)
    if latest_checkpoint(out) is not None:
        print(f"restarted by torchrun: resuming from {latest_checkpoint(out)}", flush=True)
        return replace(cfg, resume=True, overwrite=False)
    try:
        same = json.loads((out / RUN_CONFIG).read_text()) == asdict(cfg)
    except (OSError, ValueError):
        same = False
    return replace(cfg, overwrite=True) if same and not cfg.resume else cfg


def _run(cfg: RunConfig, parallel: Parallel) -> dict[str, Any]:
    out = check_output_dir(cfg)  # cheap checks first
    if cfg.resume:
        check_resume(cfg, out, parallel.world_size)
    if cfg.report_to == "tensorboard":
        tensorboard_writer()  # installed?
    prep = prepare(cfg, parallel.device)
    loaders = make_loaders(prep, parallel)
    # All input is valid: now the output folder may change.
    if parallel.is_main:
        if cfg.overwrite:
            clear_folder(out)
        atomic_write_json(out / RUN_CONFIG, asdict(cfg))
    if parallel.world_size > 1:
        print(f"distributed: {parallel.world_size} processes ({parallel.backend}), global batch "
              f"{cfg.batch_size * parallel.world_size * cfg.grad_accum} = {cfg.batch_size} per process x "
              f"{parallel.world_size} processes x {cfg.grad_accum} accumulation step(s)", flush=True)  # fmt: skip
    parallel.seed_rank(cfg.seed)
    reset_peak_cuda(prep.device)
    report = parameter_report(prep.model)
    run_eval = functools.partial(evaluate, prep.model, loaders.select, device=prep.device, precision=prep.precision,
                                 parallel=parallel)  # fmt: skip
    started = time.perf_counter()
    result = train(
        prep.model,
        loaders.train,
        config=loop_config(cfg),
        device=prep.device,
        precision=prep.precision,
        run_dir=out,
        evaluate=lambda: run_eval(prep.task.metrics(prep.data)),
        on_best=lambda metrics: save_artifact(prep, out, metrics),
        metric=prep.task.metric,
        loss_fn=prep.task.loss,
        resume=cfg.resume,
        show_progress=cfg.progress,
        parallel=parallel,
    )
    return _finish(prep, result, report, loaders, out, time.perf_counter() - started, parallel)


def _finish(prep: Prepared, result: LoopResult, report, loaders: Loaders, out: Path, wall: float,
            parallel: Parallel) -> dict[str, Any]:  # fmt: skip
    """Score the test split with the kept weights, then write summary.json and curves.png (rank 0)."""
    peak_memory = peak_memory_bytes(prep.device)  # before the matmul peak allocates its matrices
    parallel.barrier()  # rank 0 has written the artifact
    test = None
    if loaders.test is not None and not result.paused:
        test = test_kept(prep, out, loaders.test, parallel)
    ranks = parallel.all_gather(_rank_speed(result))
    summary = None
    if parallel.is_main:
        peak = matmul_peak_flops(prep.device, prep.precision)
        summary = build_summary(prep, result, report, out, wall, peak, peak_memory, test)
        summary.update(distributed_summary(prep, parallel, ranks))
        atomic_write_json(out / "summary.json", summary)
        records = read_metrics(out / "metrics.jsonl")
        plot_training_curves(records, out / "curves.png", title=summary["title"], best=result.best)
    return parallel.broadcast(summary)


def _rank_speed(result: LoopResult) -> dict[str, float]:
    return {"examples": result.examples_seen, "tokens": result.tokens_seen, "flops": result.flops,
            "seconds": result.train_seconds}  # fmt: skip


def distributed_summary(prep: Prepared, parallel: Parallel, ranks: list[dict[str, float]]) -> dict[str, Any]:
    """summary.json's throughput over all ranks and, for a distributed run, its ``distributed`` record:
    the backend, global batch, bytes all-reduced per optimizer step (against the trainable gradients'
    bytes) and each rank's examples/s. Time is the slowest rank's; examples, tokens and FLOPs are all
    ranks' (MFU stays rank 0's, against one device's peak)."""
    seconds = max(r["seconds"] for r in ranks)
    examples, flops = sum(r["examples"] for r in ranks), sum(r["flops"] for r in ranks)
    speed = {"world_size": parallel.world_size, "train_seconds": round(seconds, 2),
             "examples_per_s": round(examples / seconds, 2) if seconds > 0 else 0.0,
             "tokens_seen": sum(r["tokens"] for r in ranks), "model_flops": flops,
             "achieved_flops_per_s": flops / seconds if seconds > 0 else 0.0}  # fmt: skip
    if parallel.world_size == 1:
        return {**speed, "distributed": None}
    cfg, steps = prep.cfg, parallel.step_bytes
    return {**speed, "distributed": {
        "backend": parallel.backend,
        "global_batch_size": cfg.batch_size * parallel.world_size * cfg.grad_accum,
        "allreduce_bytes_per_step": steps[0] if steps and len(set(steps)) == 1 else steps or None,
        "trainable_grad_bytes": parallel.trainable_bytes,
        "examples_per_s_per_rank": [round(r["examples"] / r["seconds"], 2) if r["seconds"] else 0.0 for r in ranks],
    }}  # fmt: skip


def _without_matrix(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if k != "confusion_matrix"}


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
    prep: Prepared,
    result: LoopResult,
    report,
    out: Path,
    wall: float,
    matmul_peak: float | None,
    peak_memory: int,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: ``best``/``final`` are the evaluations that chose the checkpoint; ``test`` the
    eval split scored once with the kept weights, when a validation split chose them."""
    cfg, done = prep.cfg, prep.preparation
    artifact = out / (ADAPTER_DIR if cfg.method == "lora" else MODEL_DIR)
    return {
        "title": f"{cfg.model} on {prep.data.source}: {cfg.method}" + (f" r={cfg.r}" if cfg.method == "lora" else ""),
        "task": prep.task.name,
        "metric": prep.task.metric.name,
        "method": cfg.method,
        "loraplus_ratio": cfg.loraplus_ratio,
        "model": cfg.model,
        "model_revision": cfg.revision,
        "dataset": prep.data.source,
        "dataset_revision": cfg.dataset_revision,
        **prep.task.artifact_info(prep.data),
        "train_examples": len(prep.data.train),
        "eval_examples": len(prep.data.eval),
        "val_examples": len(prep.data.val) if prep.data.val is not None else None,
        "selection": prep.data.selection,
        "final": _without_matrix(result.last_eval),
        "best": _without_matrix(result.best),
        "confusion_matrix": (result.best or {}).get("confusion_matrix"),
        "test": test,
        "warning": prep.task.learned_nothing(result.evals),
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
        "precision": prep.precision,
        "device": str(prep.device),
        "kernels": cfg.kernels,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "kernel_notes": done.notes,
        "freed_memory_kept": cfg.malloc_tuning and freed_memory_kept(),
        "first_token_layer": done.first_token_layer,
        "frozen_linears_in_compute_dtype": done.frozen_linears_stored,
        "config": asdict(cfg),
        "environment": environment_info(prep.device),
    }
