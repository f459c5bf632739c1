"""A whole training run: data -> model -> LoRA -> loop -> artifacts, for any task.

Everything that can fail on bad input (data, model, options) is checked before the output folder
is touched, so a user error never leaves a half-written run behind. The run's parts: the run folder's
checks (``run_folder.py``), the data and model (``setup.py``), the batches (``loaders.py``), the kept
weights (``export.py``) and ``summary.json`` (``summary.py``).

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
import dataclasses
import functools
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loratune.device import resolve_device
from loratune.fsutil import atomic_write_json, clear_folder, folder_lock
from loratune.lora import ParameterReport, parameter_report
from loratune.train.config import RunConfig, with_task
from loratune.train.determinism import deterministic_algorithms
from loratune.train.distributed import Parallel, session
from loratune.train.evaluate import evaluate
from loratune.train.export import save_artifact, test_kept
from loratune.train.flops import matmul_peak_flops
from loratune.train.loaders import Loaders, make_loaders
from loratune.train.logging import read_metrics, tensorboard_writer
from loratune.train.loop import LoopConfig, LoopResult, train
from loratune.train.memory import peak_memory_bytes, reset_peak_cuda
from loratune.train.plots import plot_training_curves
from loratune.train.run_folder import RUN_CONFIG, check_output_dir, check_resume, restarted
from loratune.train.setup import RunSetup, prepare
from loratune.train.summary import build_summary, distributed_summary, rank_speed


def loop_config(cfg: RunConfig) -> LoopConfig:
    """The loop's settings: each ``LoopConfig`` field that ``RunConfig`` has by name, ``lr`` the effective
    learning rate, ``tensorboard`` from ``--report-to``, and the loop's defaults for the rest."""
    derived = {"lr": cfg.learning_rate, "tensorboard": cfg.report_to == "tensorboard"}
    run_fields = {f.name for f in dataclasses.fields(cfg)} - set(derived)
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoopConfig) if f.name in run_fields}
    return LoopConfig(**shared, **derived)


def run_training(cfg: RunConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return the summary (also written to ``summary.json``).

    The run folder is locked for the whole run: a second run into it stops at once with an error.
    With ``cfg.deterministic``, torch uses deterministic algorithms only, for the run's length.
    Under torchrun this process is one rank of a data-parallel run (``train/distributed.py``).
    """
    cfg = restarted(with_task(cfg).validate())
    with session(resolve_device(cfg.device), cfg.dist_timeout) as parallel:
        lock = folder_lock(cfg.output) if parallel.is_main else contextlib.nullcontext()
        with lock, deterministic_algorithms(cfg.deterministic):
            return _run(cfg, parallel)


def _run(cfg: RunConfig, parallel: Parallel) -> dict[str, Any]:
    out = check_output_dir(cfg)  # cheap checks first
    if cfg.resume:
        check_resume(cfg, out, parallel.world_size)
    if cfg.report_to == "tensorboard":
        tensorboard_writer()  # installed?
    setup = prepare(cfg, parallel.device)
    loaders = make_loaders(setup, parallel)
    # All input is valid: now the output folder may change.
    if parallel.is_main:
        if cfg.overwrite:
            clear_folder(out)
        atomic_write_json(out / RUN_CONFIG, asdict(cfg))
    if parallel.world_size > 1:
        print(
            f"distributed: {parallel.world_size} processes ({parallel.backend}), global batch "
            f"{cfg.batch_size * parallel.world_size * cfg.grad_accum} = {cfg.batch_size} per process x "
            f"{parallel.world_size} processes x {cfg.grad_accum} accumulation step(s)",
            flush=True,
        )
    parallel.seed_rank(cfg.seed)
    reset_peak_cuda(setup.device)
    report = parameter_report(setup.model)
    run_eval = functools.partial(
        evaluate, setup.model, loaders.select, device=setup.device, precision=setup.precision, parallel=parallel
    )
    started = time.perf_counter()
    result = train(
        setup.model,
        loaders.train,
        config=loop_config(cfg),
        device=setup.device,
        precision=setup.precision,
        run_dir=out,
        evaluate=lambda: run_eval(setup.task.metrics(setup.data)),
        on_best=lambda metrics: save_artifact(setup, out, metrics),
        metric=setup.task.metric,
        loss_fn=setup.task.loss,
        resume=cfg.resume,
        show_progress=cfg.progress,
        parallel=parallel,
    )
    return _finish(setup, result, report, loaders, out, time.perf_counter() - started, parallel)


def _finish(
    setup: RunSetup,
    result: LoopResult,
    report: ParameterReport,
    loaders: Loaders,
    out: Path,
    wall: float,
    parallel: Parallel,
) -> dict[str, Any]:
    """Score the test split with the kept weights, then write summary.json and curves.png (rank 0)."""
    peak_memory = peak_memory_bytes(setup.device)  # before the matmul peak allocates its matrices
    parallel.barrier()  # rank 0 has written the artifact
    test = None
    if loaders.test is not None and not result.paused:
        test = test_kept(setup, out, loaders.test, parallel)
    ranks = parallel.all_gather(rank_speed(result))
    summary = None
    if parallel.is_main:
        peak = matmul_peak_flops(setup.device, setup.precision)
        summary = build_summary(setup, result, report, out, wall, peak, peak_memory, test)
        summary.update(distributed_summary(setup, parallel, ranks))
        atomic_write_json(out / "summary.json", summary)
        records = read_metrics(out / "metrics.jsonl")
        plot_training_curves(records, out / "curves.png", title=summary["title"], best=result.best)
    return parallel.broadcast(summary)
