"""``loratune compare``: full fine-tuning vs LoRA measured on your model and data; rank sweeps; automatic rank.

Layout of ``--output OUT`` (default ``runs/compare``)::

    full/, lora/            one training run per method (summary.json, adapter/ or model/, curves.png)
    comparison.md|json|png  the measured table, with a LoRA / full ratio column      (report.py)
    rank-<r>/               --ranks: one LoRA run per rank                            (sweep.py)
    ranks.json|png          the task's metric against trainable parameters and against training time
    rounds/r<r>/            --auto-rank: one run per candidate rank, on the full schedule, paused
                            at each round's budget and continued while the rank survives (auto_rank.py)
    auto-rank/              --auto-rank: the chosen rank's run, continued to the full budget; the
                            result is auto-rank/adapter
    auto_rank.json          the choice and its evidence (rank, budget, metrics per round)
    logs/<run>.log          each child's console output

Each run is a child process (runner.py). The same command plus ``--resume`` reuses the finished
runs and resumes the interrupted one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loratune.compare.auto_rank import Round, auto_rank, choose_rank, full_budget, successive_halving
from loratune.compare.measures import majority_accuracy, measures_at_step, run_measures
from loratune.compare.report import compare_methods, comparison_rows
from loratune.compare.runner import ChildRunError, Runner, child_argv, child_mode
from loratune.compare.sweep import parse_ranks, sweep_ranks
from loratune.errors import LoratuneError, RunError
from loratune.fsutil import LOCK_FILE, check_keeps, folder_lock
from loratune.tasks import get_task
from loratune.train.config import build_config
from loratune.train.options import source_paths

__all__ = [
    "ChildRunError",
    "Round",
    "child_argv",
    "child_mode",
    "choose_rank",
    "comparison_rows",
    "majority_accuracy",
    "measures_at_step",
    "parse_ranks",
    "run_compare",
    "run_measures",
    "successive_halving",
]

DEFAULT_OUTPUT = "runs/compare"
DEFAULT_METHODS = ("full", "lora")
DEFAULT_RANKS = (1, 2, 4, 8, 16)


def parse_methods(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in DEFAULT_METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise LoratuneError(f"--methods must be a comma-separated subset of full,lora, got {text!r}")
    return [m for m in DEFAULT_METHODS if m in methods]  # full first, as in the tutorial's table


def check_compare_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (resume or overwrite):
        raise RunError(
            f"--output {out} exists and is not empty; pass --overwrite to replace its runs, "
            "--resume to continue them, or another --output"
        )


def run_compare(args: argparse.Namespace, flags: dict[str, Any]) -> int:
    """``loratune compare``: validate everything cheap first, then run the children.

    ``flags`` are the train options given as flags (``RunConfig`` field -> value, None if not given).
    """
    if flags.get("method") is not None:
        raise LoratuneError("compare takes --methods (e.g. --methods full,lora), not --method")
    if args.tolerance < 0:
        raise LoratuneError(f"--tolerance must be >= 0 (points of the task's metric), got {args.tolerance:g}")
    if not 0 < args.first_budget <= 1:
        raise LoratuneError(f"--first-budget must be a fraction in (0, 1], got {args.first_budget:g}")
    ranks = parse_ranks(args.ranks) if args.ranks else None
    sweep = ranks is not None and not args.auto_rank
    methods = parse_methods(args.methods) if (args.methods or not (ranks or args.auto_rank)) else []
    out = Path(flags.get("output") or DEFAULT_OUTPUT)
    resume, overwrite = bool(flags.get("resume")), bool(flags.get("overwrite"))
    # The flags, recipe and ranks are checked here, once, before any child starts or OUT changes.
    own = {k: v for k, v in flags.items() if k not in ("resume", "overwrite")}
    # without the task's defaults: each child applies those of its own method
    cfg = build_config(args.config, apply_task_defaults=False, **{**own, "output": str(out)})
    if resume and overwrite:
        raise LoratuneError("--resume and --overwrite exclude each other; pick one")
    if overwrite:
        check_keeps(out, source_paths(cfg, args.config))
    with folder_lock(out):  # one compare per folder (each child locks its own run folder too)
        check_compare_output(out, resume=resume, overwrite=overwrite)
        return _run_jobs(args, cfg, out, methods, ranks, sweep, resume=resume, overwrite=overwrite)


def _run_jobs(args, cfg, out: Path, methods, ranks, sweep: bool, *, resume: bool, overwrite: bool) -> int:
    runner = Runner(out, cfg, resume=resume, overwrite=overwrite, nproc=args.nproc)
    with runner.forwarding_sigint():
        budget = full_budget(cfg) if args.auto_rank else None  # data errors surface before OUT changes
        out.mkdir(parents=True, exist_ok=True)
        jobs = [*(["methods"] if methods else []), *(["sweep"] if sweep else []), *(["auto"] if args.auto_rank else [])]
        print(f"compare: {', '.join(jobs)} -> {out} (each run in its own process; logs in {out / 'logs'})", flush=True)
        if methods:
            compare_methods(runner, cfg, methods)
        if sweep:
            sweep_ranks(runner, cfg, ranks)
        if args.auto_rank:
            candidates = ranks or list(DEFAULT_RANKS)
            auto_rank(
                runner,
                candidates,
                budget,
                tolerance_pt=args.tolerance,
                first_budget=args.first_budget,
                metric=get_task(cfg.task).metric,
            )
    return 0
