"""The run folder: whether a run may write into it, resume it, or go on with it after a torchrun restart.

Each check runs before anything is written, so a refused run leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from loratune.errors import RunError
from loratune.fsutil import LOCK_FILE
from loratune.train.checkpoint import checkpoint_world_size, latest_checkpoint
from loratune.train.config import RunConfig, flag_of, resumable_options, resume_conflicts

RUN_CONFIG = "run_config.json"  # marks a folder as a loratune run (so --overwrite may replace it)


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
        raise RunError(
            f"{out / RUN_CONFIG} is missing or unreadable, so --resume cannot check its options; "
            "start a fresh run with --overwrite"
        ) from None
    changed = resume_conflicts(saved, cfg)
    if changed:
        allowed = ", ".join(flag_of(name) for name in resumable_options() if name not in ("resume", "output"))
        raise RunError(
            f"--resume cannot change the options of the run in {out}: {'; '.join(changed)}; pass them as before, "
            f"or start a fresh run with --overwrite (may change on resume: {allowed}, and --max-steps upward)"
        )


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
