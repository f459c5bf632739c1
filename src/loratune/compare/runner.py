"""Child training processes for ``loratune compare``: start, reuse, resume, Ctrl-C forwarding.

Every training run of compare is its own child process (``python -m loratune.cli train ...``), so
that each run's peak memory (peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) is its
own and not the high-water mark of an earlier run. A child gets the comparison's whole resolved
configuration as flags (``train.config.as_flags``); only ``--output``, ``--method``, ``--r`` and
(auto-rank) ``--pause-at-step`` differ between children. With ``--nproc N`` each child is ``train --nproc N``:
a torchrun launch of N processes, whose rank 0 writes the run folder.

Ctrl-C is forwarded to the running child (which is in its own process group, so it gets exactly
one SIGINT): the child checkpoints and exits 130, no later run starts, and ``compare`` exits 130
with a one-line message. A child's user error (exit 2) comes out as its one line ``error: ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loratune.compare.measures import describe, measures_at_step, run_measures
from loratune.errors import Interrupted, LoratuneError
from loratune.train.checkpoint import latest_checkpoint
from loratune.train.config import RunConfig, as_flags, changed_options

# Train options that compare sets itself for each child.
_CHILD_SET = ("output", "method", "resume", "overwrite")


class ChildRunError(LoratuneError):
    """A child training run failed or was interrupted; carries the child's exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def child_argv(cfg: RunConfig, nproc: int | None = None, **overrides: Any) -> list[str]:
    """``python -m loratune.cli train`` with ``cfg``'s options, then ``overrides`` (field -> value), in
    ``nproc`` processes when that is more than one."""
    values = {k: v for k, v in changed_options(cfg).items() if k not in _CHILD_SET}
    values.update(overrides)
    launch = ["--nproc", str(nproc)] if nproc and nproc > 1 else []
    return [sys.executable, "-m", "loratune.cli", "train", *launch, *as_flags(values)]


def child_mode(run_dir: Path, *, resume: bool, overwrite: bool, until_step: int | None = None) -> str:
    """How to (re)start the child that writes ``run_dir``: reuse, resume, overwrite or fresh.

    With ``--resume`` a finished run (``summary.json``) is reused and one with a checkpoint is
    resumed; a folder holding neither (interrupted before its first checkpoint) is started over.
    A run that paused (``--pause-at-step``) is resumed, not reused, unless it got as far as
    ``until_step`` (the step the next child would pause at).
    """
    non_empty = run_dir.is_dir() and any(run_dir.iterdir())
    summary = run_dir / "summary.json"
    if resume and summary.is_file():
        done = json.loads(summary.read_text())
        if not done.get("paused") or (until_step is not None and int(done.get("steps", 0)) >= until_step):
            return "reuse"
    if resume and non_empty and latest_checkpoint(run_dir) is not None:
        return "resume"
    if non_empty and (resume or overwrite):
        return "overwrite"
    return "fresh"


class Runner:
    """Starts one child training process at a time, forwards Ctrl-C to it, and reads its summary."""

    def __init__(self, out: Path, cfg: RunConfig, *, resume: bool, overwrite: bool, nproc: int | None = None) -> None:
        self.out, self.cfg, self.nproc = out, cfg, nproc
        self.resume, self.overwrite = resume, overwrite
        self.proc: subprocess.Popen | None = None
        self.interrupted = False
        self.pids: list[int] = []

    # Ctrl-C: the child runs in its own process group, so the terminal's SIGINT reaches only this
    # process; the handler passes it on once per Ctrl-C (a second Ctrl-C aborts the child).
    def _on_sigint(self, signum, frame) -> None:
        self.interrupted = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    @contextlib.contextmanager
    def forwarding_sigint(self) -> Iterator[Runner]:
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        src = str(Path(__file__).resolve().parents[2])  # the same loratune as this process
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        return env

    def run(
        self, name: str, run_dir: Path, label: str, *, continue_run: bool = False, **overrides: Any
    ) -> dict[str, Any]:
        """Train one child into ``run_dir`` (or reuse it under --resume); return its measures.

        ``continue_run`` resumes the run already in ``run_dir`` (one that paused at an earlier
        step) whatever --resume says; ``overrides["pause_at_step"]`` is where it stops next.
        """
        if self.interrupted:
            raise Interrupted(f"interrupted before the {name} run; continue with the same command plus --resume")
        until = overrides.get("pause_at_step")
        mode = child_mode(run_dir, resume=self.resume or continue_run, overwrite=self.overwrite, until_step=until)
        if mode == "reuse":
            m = _finished(run_dir, pid=None, elapsed=None)
            if until is not None:
                m = measures_at_step(m, until)
            print(f"{label}: reusing the finished run in {run_dir}: {describe(m)}", flush=True)
            return m
        modes = {"resume": mode == "resume", "overwrite": mode == "overwrite"}
        argv = child_argv(self.cfg, self.nproc, output=str(run_dir), **modes, **overrides)
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(log, "a" if mode == "resume" else "w", encoding="utf-8") as fh:
            fh.write("$ " + " ".join(argv) + "\n")
            fh.flush()
            self.proc = proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=self._env(), process_group=0
            )
        self.pids.append(proc.pid)
        if self.interrupted:  # Ctrl-C came while the child was being started
            proc.send_signal(signal.SIGINT)
        verb = "resuming" if mode == "resume" else "started"
        print(f"{label}: {verb} (pid {proc.pid}, log {log})", flush=True)
        try:
            rc = proc.wait()
        finally:
            self.proc = None
        elapsed = time.perf_counter() - started
        if rc != 0 or self.interrupted:
            raise self._failure(name, rc, log)
        m = _finished(run_dir, pid=proc.pid, elapsed=elapsed)
        print(f"{label}: done in {elapsed:.1f} s: {describe(m)}", flush=True)
        return m

    def _failure(self, name: str, rc: int, log: Path) -> LoratuneError:
        text = log.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        error = next((x[len("error: ") :].strip() for x in reversed(lines) if x.startswith("error: ")), None)
        if self.interrupted or rc in (130, -signal.SIGINT):
            where = re.search(r"checkpoint saved at (step \d+/\d+)", text)
            what = f"the {name} run stopped" + (f" with a checkpoint at {where.group(1)}" if where else "")
            if rc == 0:
                what = f"stopped after the {name} run finished"
            return Interrupted(f"interrupted: {what}; continue with the same command plus --resume")
        if error:
            return ChildRunError(f"{name} run: {error}", rc if rc > 0 else 1)
        tail = next((x for x in reversed(lines) if x.strip()), "")
        return ChildRunError(f"the {name} run failed with exit code {rc} ({tail.strip()[:200]}); see {log}", 1)


def _finished(run_dir: Path, *, pid: int | None, elapsed: float | None) -> dict[str, Any]:
    """The measures of the finished run in ``run_dir`` (its ``summary.json``)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_measures(summary, run_dir=run_dir, pid=pid, elapsed=elapsed)
