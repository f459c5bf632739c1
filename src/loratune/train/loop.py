"""The training loop: small and explicit, in the style of a torchtune recipe.

One loop serves LoRA and full fine-tuning: it trains whatever parameters require a gradient.

    for each epoch:
        for each length-grouped batch (dynamic padding):
            loss = model(**batch).loss / grad_accum ; loss.backward()
            every grad_accum batches: clip, AdamW step, scheduler step
            every save_every steps: checkpoint (atomic)
            every eval_every steps / at the end of the epoch: evaluate, keep the best
        stop early when the metric has not improved for `early_stopping_patience` evaluations

A checkpoint holds the trainable tensors, optimizer, scheduler, RNG states and the data position,
so that ``resume=True`` continues to the same result as an uninterrupted run. SIGINT (Ctrl-C)
saves a checkpoint at the next step and raises ``Interrupted``.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from loratune.errors import Interrupted
from loratune.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from loratune.train.flops import FlopSampler
from loratune.train.logging import MetricsLogger
from loratune.train.precision import autocast_context
from loratune.train.progress import progress_bar


@dataclass
class LoopConfig:
    """Optimisation and schedule settings of one run."""

    epochs: int = 3
    max_steps: int | None = None
    pause_at_step: int | None = None  # stop here with a checkpoint and an evaluation; the schedule stays whole
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    save_every: int | None = None
    early_stopping_patience: int | None = None
    log_every: int = 10
    keep_checkpoints: int = 2
    metric: str = "accuracy"  # higher is better
    flop_sample_every: int = 20  # count the matmul FLOPs of every N-th batch (0: never)


@dataclass
class LoopResult:
    """What the loop did: counters, timings and the evaluations."""

    steps: int = 0
    epochs_done: float = 0.0
    train_seconds: float = 0.0
    examples_seen: int = 0
    tokens_seen: int = 0
    flops: float = 0.0  # estimated model FLOPs of all training batches (see train/flops.py)
    best: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    paused: bool = False  # ended at LoopConfig.pause_at_step, before the schedule's end: resumable
    resumed_from: int | None = None

    @property
    def examples_per_s(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag the loop checks between steps (a second one aborts)."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, no flag
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def _linear_warmup_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: 0 -> 1 over ``warmup_steps``, then linearly down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def linear_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of transformers' ``get_linear_schedule_with_warmup`` (same factors, same state).

    Built on torch's ``LambdaLR`` here because importing ``transformers.optimization`` imports
    PEFT through ``transformers.trainer_utils``: 5 s of every ``loratune train`` process on the
    project's 2-core machine (``python -X importtime``), and an auto-rank round is one process.
    """
    factor = functools.partial(_linear_warmup_factor, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def improves(record: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    """The rule for the best evaluation: the first one with a strictly higher ``metric``."""
    return best is None or record[metric] > best[metric]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def train(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    config: LoopConfig,
    device: torch.device,
    precision: str,
    run_dir: Path,
    evaluate: Callable[[], dict[str, Any]],
    on_best: Callable[[dict[str, Any]], None],
    resume: bool = False,
    show_progress: bool | None = None,
) -> LoopResult:
    """Train ``model`` in place; return the counters and evaluations.

    ``train_loader`` must use a batch sampler with ``set_epoch``/``set_start`` (deterministic,
    resumable order). ``evaluate()`` returns metrics including ``config.metric``; ``on_best(metrics)``
    is called after each evaluation that improves it (save the artifact there).
    """
    sampler = train_loader.batch_sampler
    batches_per_epoch = len(sampler)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / config.grad_accum))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    # a pause ends this invocation early; the learning-rate schedule still spans total_steps
    limit = total_steps if config.pause_at_step is None else min(total_steps, config.pause_at_step)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    scheduler = linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), max(total_steps, 1)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    result = LoopResult()
    flop_sampler = FlopSampler(
        every=config.flop_sample_every, recomputes_forward=bool(getattr(model, "is_gradient_checkpointing", False))
    )
    state = {"step": 0, "epoch": 0, "batch": 0, "bad_evals": 0, "saved_step": None}  # saved: last checkpoint

    if resume:
        folder = latest_checkpoint(run_dir)
        ckpt = load_checkpoint(folder, optimizer, scheduler)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in ckpt.trainable_state.items():
                named[name].copy_(tensor)
        state.update(step=ckpt.step, epoch=ckpt.epoch, batch=ckpt.batch_in_epoch, saved_step=ckpt.step)
        extra = ckpt.extra
        state["bad_evals"] = extra.get("bad_evals", 0)
        result.best, result.evals = extra.get("best"), extra.get("evals", [])
        result.last_eval = result.evals[-1] if result.evals else None
        result.train_seconds = extra.get("train_seconds", 0.0)
        result.examples_seen, result.tokens_seen = extra.get("examples_seen", 0), extra.get("tokens_seen", 0)
        result.resumed_from = ckpt.step
        flop_sampler.load_state(extra.get("flops", {}))

    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    metrics_log = MetricsLogger(run_dir / "metrics.jsonl", resume_step=state["step"] if resume else None)

    def checkpoint() -> None:
        state["saved_step"] = state["step"]
        save_checkpoint(
            checkpoint_dir(run_dir, state["step"]),
            trainable_state=trainable_state(model),
            optimizer=optimizer,
            scheduler=scheduler,
            step=state["step"],
            epoch=state["epoch"],
            batch_in_epoch=state["batch"],
            extra={
                "best": result.best,
                "evals": result.evals,
                "bad_evals": state["bad_evals"],
                "train_seconds": result.train_seconds,
                "examples_seen": result.examples_seen,
                "tokens_seen": result.tokens_seen,
                "flops": flop_sampler.state(),
            },
        )
        prune_checkpoints(run_dir, keep=config.keep_checkpoints)

    def run_eval() -> bool:
        """Evaluate, log, keep the best; True when early stopping says stop."""
        metrics = evaluate()
        epoch = state["epoch"] + state["batch"] / batches_per_epoch
        record = {"step": state["step"], "epoch": round(epoch, 4), **metrics}
        metrics_log.log_eval(**record)
        result.evals.append(record)
        result.last_eval = record
        if improves(record, result.best, config.metric):
            result.best = record
            state["bad_evals"] = 0
            on_best(record)
        else:
            state["bad_evals"] += 1
        patience = config.early_stopping_patience
        return patience is not None and state["bad_evals"] >= patience

    bar = progress_bar(total_steps, "train", enabled=show_progress, initial=state["step"])
    window_loss, window_n, window_examples, window_start = 0.0, 0, 0, time.perf_counter()
    model.train()
    try:
        with _sigint_flag() as sigint:
            while state["step"] < limit and not result.stopped_early:
                sampler.set_epoch(state["epoch"])
                sampler.set_start(state["batch"])
                accum = 0
                for batch in train_loader:
                    t0 = time.perf_counter()
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with flop_sampler.batch(state["batch"], batch["input_ids"].numel()) as forward_done:
                        with autocast_context(precision, device):
                            loss = model(**batch).loss
                        forward_done()
                        (loss / config.grad_accum).backward()
                    state["batch"] += 1
                    accum += 1
                    n_examples = int(batch["input_ids"].shape[0])
                    result.examples_seen += n_examples
                    result.tokens_seen += int(batch["attention_mask"].sum())
                    window_loss += float(loss.detach())
                    window_n += 1
                    window_examples += n_examples
                    end_of_epoch = state["batch"] == batches_per_epoch
                    if accum == config.grad_accum or end_of_epoch:
                        if config.max_grad_norm:
                            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        accum = 0
                        state["step"] += 1
                        result.train_seconds += time.perf_counter() - t0
                        step = state["step"]
                        if step % config.log_every == 0 or step == total_steps or end_of_epoch:
                            elapsed = time.perf_counter() - window_start
                            rate = window_examples / elapsed if elapsed > 0 else 0.0
                            lr = scheduler.get_last_lr()[0]
                            epoch_f = state["epoch"] + state["batch"] / batches_per_epoch
                            metrics_log.log_train(
                                step=step,
                                epoch=round(epoch_f, 4),
                                loss=window_loss / window_n,
                                lr=lr,
                                examples_per_s=round(rate, 2),
                            )
                            bar.set_metrics(loss=window_loss / window_n, lr=lr, examples_per_s=rate)
                            window_loss, window_n, window_examples = 0.0, 0, 0
                            window_start = time.perf_counter()
                        bar.update(1)
                        if end_of_epoch:
                            state["epoch"] += 1
                            state["batch"] = 0
                        stop = False
                        if end_of_epoch or (config.eval_every and step % config.eval_every == 0):
                            stop = run_eval()
                            model.train()
                            window_start = time.perf_counter()
                        if stop:
                            result.stopped_early = True
                        if (
                            stop
                            or end_of_epoch
                            or (config.save_every and step % config.save_every == 0)
                            or sigint["stop"]
                        ):
                            checkpoint()
                        if sigint["stop"]:
                            raise Interrupted(
                                f"interrupted: checkpoint saved at step {step}/{total_steps}; "
                                f"continue with the same command plus --resume"
                            )
                        if stop or step >= limit:
                            break
                    else:
                        result.train_seconds += time.perf_counter() - t0
            if result.last_eval is None or result.last_eval["step"] != state["step"]:
                run_eval()  # max_steps or a pause ended mid-epoch: evaluate these weights too
            if state["saved_step"] != state["step"]:  # once, after that evaluation
                checkpoint()
            result.paused = state["step"] < total_steps and not result.stopped_early
    finally:
        bar.close()
        metrics_log.close()
    result.steps = state["step"]
    result.flops = flop_sampler.total
    result.epochs_done = state["epoch"] + state["batch"] / batches_per_epoch
    return result
