"""The training loop: a small state and small named steps, in the style of a torchtune recipe.

One loop serves every task, LoRA and full fine-tuning: it trains whatever parameters require a
gradient, with the loss function, evaluation and best-metric rule it is given.

    for each epoch:
        for each batch:                     forward_backward: loss / grad_accum, backward
            every grad_accum batches:       optimizer_step: clip, AdamW, scheduler
                                            log; evaluate and keep the best; checkpoint
        stop early when the metric has not improved for `early_stopping_patience` evaluations

A checkpoint holds the trainable tensors, optimizer, scheduler, grad scaler, RNG states and the data
position, so that ``resume=True`` continues to the same result as an uninterrupted run. SIGINT
(Ctrl-C) saves a checkpoint at the next step and raises ``Interrupted``. fp16 runs scale the loss
(``torch.amp.GradScaler``) so that small gradients do not underflow; a step whose gradients
overflow is skipped and the scale lowered.

Under a distributed launch (``train/distributed.py``) every rank runs this loop on its share of
each batch: the model is wrapped in ``DistributedDataParallel``, the micro-steps of an accumulation
skip the all-reduce (``no_sync``), logged losses and throughput are over all ranks, and rank 0 alone
writes metrics, checkpoints and the artifact. A checkpoint holds every rank's RNG state.
"""

from __future__ import annotations

import contextlib
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
from loratune.tasks.base import Metric
from loratune.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from loratune.train.distributed import Parallel, restore_rank_rng
from loratune.train.flops import FlopSampler
from loratune.train.logging import MetricsLogger
from loratune.train.precision import autocast_context, grad_scaler
from loratune.train.progress import progress_bar

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class LoopConfig:
    """Optimisation and schedule settings of one run."""

    epochs: int = 3
    max_steps: int | None = None
    pause_at_step: int | None = None  # stop here with a checkpoint and an evaluation; the schedule stays whole
    grad_accum: int = 1
    lr: float = 5e-4
    loraplus_ratio: float | None = None  # LoRA+: the lora_B matrices learn at this multiple of lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    save_every: int | None = None
    early_stopping_patience: int | None = None
    log_every: int = 10
    keep_checkpoints: int = 2
    flop_sample_every: int = 20  # count the matmul FLOPs of every N-th batch (0: never)
    tensorboard: bool = False  # also write the metrics as TensorBoard events in run_dir/tensorboard


@dataclass
class LoopState:
    """Where the run stands: the counters a checkpoint saves and a resume restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # batches done in this epoch
    accumulated: int = 0  # batches whose gradients wait for the next optimizer step
    bad_evals: int = 0  # evaluations in a row without a better metric
    saved_step: int | None = None  # the step of the last checkpoint


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
    skipped_steps: int = 0  # fp16: optimizer steps skipped because the gradients overflowed

    @property
    def examples_per_s(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class _Window:
    """The training losses and examples since the last log line."""

    loss: float = 0.0
    batches: int = 0
    examples: int = 0
    start: float = field(default_factory=time.perf_counter)


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


class _NoLog:
    """The metrics logger of a rank that does not write."""

    def log_train(self, **record: Any) -> None: ...

    def log_eval(self, **record: Any) -> None: ...

    def close(self) -> None: ...


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, loraplus_ratio: float | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms get no weight decay.

    With ``loraplus_ratio`` K (LoRA+, Hayou et al. 2024) every ``lora_B`` parameter is in groups of
    their own at ``K * lr`` (with the same decay split); A, the head and the rest keep ``lr``. Without
    it the groups are ``[decay, no decay]`` (empty ones left out). Each group keeps its own rate under
    the scheduler, which scales every group from its own initial rate.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}  # (a B matrix, decayed) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_b = loraplus_ratio is not None and ".lora_B." in f".{name}."
            groups.setdefault((is_b, p.ndim >= 2), []).append(p)
    order = [(False, True), (False, False), (True, True), (True, False)]
    ratio = loraplus_ratio or 1.0
    params = [
        {"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0, "lr": lr * ratio if key[0] else lr}
        for key in order
        if groups.get(key)
    ]
    return torch.optim.AdamW(params, lr=lr)


def _linear_warmup_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: 0 -> 1 over ``warmup_steps``, then linearly down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def linear_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of transformers' ``get_linear_schedule_with_warmup`` (same factors, same state).

    Built on torch's ``LambdaLR`` because importing ``transformers.optimization`` imports PEFT
    (through ``transformers.trainer_utils``), seconds of every ``loratune train`` process.
    """
    factor = functools.partial(_linear_warmup_factor, warmup_steps=warmup_steps, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


class _Loop:
    """One call of ``train``: the state, the collaborators, and one method per step."""

    def __init__(
        self, model, loader, *, config, device, precision, run_dir, metric, loss_fn, evaluate, on_best, parallel
    ):
        self.model, self.loader, self.config = model, loader, config
        self.parallel = parallel
        self.net = parallel.wrap(model)  # what the forward and backward go through
        self.device, self.precision, self.run_dir = device, precision, Path(run_dir)
        self.metric, self.loss_fn, self.evaluate, self.on_best = metric, loss_fn, evaluate, on_best
        self.sampler = loader.batch_sampler
        self.batches_per_epoch = len(self.sampler)
        steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / config.grad_accum))
        self.total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
        # a pause ends this invocation early; the learning-rate schedule still spans total_steps
        self.limit = min(self.total_steps, config.pause_at_step or math.inf)
        self.optimizer = build_optimizer(model, config.lr, config.weight_decay, config.loraplus_ratio)
        warmup = math.ceil(config.warmup_ratio * self.total_steps)
        self.scheduler = linear_schedule_with_warmup(self.optimizer, warmup, max(self.total_steps, 1))
        self.scaler = grad_scaler(precision, device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        checkpointed = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.24
        if checkpointed is None:  # older transformers (in 5.24 this name warns)
            checkpointed = getattr(model, "is_gradient_checkpointing", False)
        self.flops = FlopSampler(every=config.flop_sample_every, recomputes_forward=bool(checkpointed))
        self.state, self.result, self.window = LoopState(), LoopResult(), _Window()

    # ------------------------------------------------------------------ resume and checkpoint
    def restore(self) -> None:
        """Continue from the newest checkpoint in ``run_dir``: weights, optimizer, RNG, counters."""
        ckpt = load_checkpoint(latest_checkpoint(self.run_dir), self.optimizer, self.scheduler)
        restore_rank_rng(ckpt.rng, self.parallel.rank, self.device)
        # this invocation's schedule sets the learning rate from here (the same one, unless --max-steps grew)
        sched = self.scheduler
        for group, base, factor in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            group["lr"] = base * factor(sched.last_epoch)
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in ckpt.trainable_state.items():
                named[name].copy_(tensor)
        extra, r = ckpt.extra, self.result
        self.state = LoopState(ckpt.step, ckpt.epoch, ckpt.batch_in_epoch, 0, extra.get("bad_evals", 0), ckpt.step)
        r.best, r.evals = extra.get("best"), extra.get("evals", [])
        r.last_eval = r.evals[-1] if r.evals else None
        r.train_seconds = extra.get("train_seconds", 0.0)
        r.examples_seen, r.tokens_seen = extra.get("examples_seen", 0), extra.get("tokens_seen", 0)
        r.skipped_steps, r.resumed_from = extra.get("skipped_steps", 0), ckpt.step
        self.flops.load_state(extra.get("flops", {}))
        if extra.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(extra["grad_scaler"])

    def checkpoint(self) -> None:
        """Save on rank 0 (with every rank's RNG state) and keep the last ``keep_checkpoints``."""
        s, r = self.state, self.result
        s.saved_step = s.step
        rank_rng = self.parallel.rng_states()
        if not self.parallel.is_main:
            return
        extra = {
            "best": r.best,
            "evals": r.evals,
            "bad_evals": s.bad_evals,
            "train_seconds": r.train_seconds,
            "examples_seen": r.examples_seen,
            "tokens_seen": r.tokens_seen,
            "skipped_steps": r.skipped_steps,
            "flops": self.flops.state(),
            "grad_scaler": self.scaler.state_dict(),
            "world_size": self.parallel.world_size,
        }
        save_checkpoint(
            checkpoint_dir(self.run_dir, s.step),
            trainable_state=trainable_state(self.model),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=s.step,
            epoch=s.epoch,
            batch_in_epoch=s.batch,
            extra=extra,
            rank_rng=rank_rng,
        )
        prune_checkpoints(self.run_dir, keep=self.config.keep_checkpoints)

    # ------------------------------------------------------------------ one batch, one step
    def forward_backward(self, batch: dict[str, torch.Tensor], sync: bool = True) -> None:
        """Loss and gradients of one batch (the loss divided over the accumulated batches); ``sync``:
        all-reduce the gradients (the last micro-step before an optimizer step), else keep them local."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        local = contextlib.nullcontext() if sync else self.parallel.no_sync(self.net)
        with self.flops.batch(self.state.batch, batch["input_ids"].numel()) as forward_done, local:
            with autocast_context(self.precision, self.device):
                loss = self.loss_fn(self.net, batch)
            forward_done()
            self.scaler.scale(loss / self.config.grad_accum).backward()
        self.state.batch += 1
        self.state.accumulated += 1
        examples = int(batch["input_ids"].shape[0])
        self.result.examples_seen += examples
        self.result.tokens_seen += int(batch["attention_mask"].sum())
        self.window.loss += float(loss.detach())
        self.window.batches += 1
        self.window.examples += examples

    def optimizer_step(self) -> None:
        """Clip, step and schedule (both skipped by the fp16 scaler when a gradient overflowed), zero."""
        if self.config.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # skipped: the schedule waits as well
            self.result.skipped_steps += 1
        else:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.parallel.end_step()
        self.state.accumulated = 0
        self.state.step += 1

    # ------------------------------------------------------------------ after a step
    @property
    def epoch_float(self) -> float:
        return self.state.epoch + self.state.batch / self.batches_per_epoch

    def log(self, log: MetricsLogger, bar) -> None:
        """Write the mean training loss since the last log line, the learning rate and the throughput
        (all ranks': their mean loss, their examples together)."""
        w = self.window
        elapsed = time.perf_counter() - w.start
        loss, examples = self.parallel.window(w.loss / w.batches, w.examples)
        rate = examples / elapsed if elapsed > 0 else 0.0
        lr = self.scheduler.get_last_lr()[0]
        log.log_train(
            step=self.state.step, epoch=round(self.epoch_float, 4), loss=loss, lr=lr, examples_per_s=round(rate, 2)
        )
        bar.set_metrics(loss=loss, lr=lr, examples_per_s=rate)
        self.window = _Window()

    def run_eval(self, log: MetricsLogger) -> bool:
        """Evaluate, log, keep the best (``on_best``, on rank 0); True when early stopping says stop.

        ``evaluate`` gives every rank the same record, so every rank decides the same."""
        record = {"step": self.state.step, "epoch": round(self.epoch_float, 4), **self.evaluate()}
        log.log_eval(**record)
        self.result.evals.append(record)
        self.result.last_eval = record
        self.model.train()
        self.window.start = time.perf_counter()
        if self.metric.improves(record, self.result.best):
            self.result.best = record
            self.state.bad_evals = 0
            if self.parallel.is_main:
                self.on_best(record)
        else:
            self.state.bad_evals += 1
        patience = self.config.early_stopping_patience
        return patience is not None and self.state.bad_evals >= patience

    def after_step(self, end_of_epoch: bool, log: MetricsLogger, bar, sigint: dict[str, bool]) -> bool:
        """Log, evaluate, checkpoint as the schedule says; True when this invocation should stop."""
        step, cfg = self.state.step, self.config
        if step % cfg.log_every == 0 or step == self.total_steps or end_of_epoch:
            self.log(log, bar)
        bar.update(1)
        if end_of_epoch:
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0
        stop = (end_of_epoch or bool(cfg.eval_every and step % cfg.eval_every == 0)) and self.run_eval(log)
        self.result.stopped_early = stop
        interrupted = self.parallel.any(sigint["stop"])  # every rank stops at the same step
        if stop or end_of_epoch or (cfg.save_every and step % cfg.save_every == 0) or interrupted:
            self.checkpoint()
        if interrupted:
            raise Interrupted(
                f"interrupted: checkpoint saved at step {step}/{self.total_steps}; "
                "continue with the same command plus --resume"
            )
        return stop or step >= self.limit

    # ------------------------------------------------------------------ the loop
    def epoch(self, log: MetricsLogger, bar, sigint: dict[str, bool]) -> None:
        """Train from the current data position to the end of the epoch, or until a stop."""
        self.sampler.set_epoch(self.state.epoch)
        self.sampler.set_start(self.state.batch)
        for batch in self.loader:
            t0 = time.perf_counter()
            s = self.state
            last = s.accumulated + 1 == self.config.grad_accum or s.batch + 1 == self.batches_per_epoch
            self.forward_backward(batch, sync=last)
            end_of_epoch = self.state.batch == self.batches_per_epoch
            stepped = self.state.accumulated == self.config.grad_accum or end_of_epoch
            if stepped:
                self.optimizer_step()
            self.result.train_seconds += time.perf_counter() - t0
            if stepped and self.after_step(end_of_epoch, log, bar, sigint):
                return

    def logger(self, resume: bool) -> MetricsLogger | _NoLog:
        """Rank 0's ``metrics.jsonl`` (and TensorBoard events), started afresh unless resuming."""
        if not self.parallel.is_main:
            return _NoLog()
        if not resume:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        board = self.run_dir / "tensorboard" if self.config.tensorboard else None
        resume_step = self.state.step if resume else None
        return MetricsLogger(self.run_dir / "metrics.jsonl", resume_step=resume_step, tensorboard_dir=board)

    def run(self, resume: bool, show_progress: bool | None) -> LoopResult:
        if resume:
            self.restore()
        s, r = self.state, self.result
        log = self.logger(resume)
        bar = progress_bar(
            self.total_steps, "train", enabled=show_progress, initial=s.step, silent=not self.parallel.is_main
        )
        self.model.train()
        try:
            with _sigint_flag() as sigint:
                while s.step < self.limit and not r.stopped_early:
                    self.epoch(log, bar, sigint)
                if r.last_eval is None or r.last_eval["step"] != s.step:
                    self.run_eval(log)  # max_steps or a pause ended mid-epoch: evaluate these weights too
                if s.saved_step != s.step:  # once, after that evaluation
                    self.checkpoint()
                r.paused = s.step < self.total_steps and not r.stopped_early
        finally:
            bar.close()
            log.close()
        r.steps, r.flops, r.epochs_done = s.step, self.flops.total, self.epoch_float
        return r


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
    metric: Metric,
    loss_fn: LossFn,
    resume: bool = False,
    show_progress: bool | None = None,
    parallel: Parallel | None = None,
) -> LoopResult:
    """Train ``model`` in place; return the counters and evaluations.

    ``train_loader`` must use a batch sampler with ``set_epoch``/``set_start`` (deterministic,
    resumable order). ``loss_fn(model, batch)`` gives a batch's loss; ``evaluate()`` returns
    metrics including ``metric.name``; ``on_best(metrics)`` is called after each evaluation that
    improves it (save the artifact there; rank 0 only). ``parallel`` (``train.distributed``): this
    process's part of a distributed run; by default a single process.
    """
    loop = _Loop(
        model,
        train_loader,
        config=config,
        device=device,
        precision=precision,
        run_dir=run_dir,
        metric=metric,
        loss_fn=loss_fn,
        evaluate=evaluate,
        on_best=on_best,
        parallel=parallel or Parallel(device),
    )
    return loop.run(resume, show_progress)
