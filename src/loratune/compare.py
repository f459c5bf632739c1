"""``loratune compare``: full fine-tuning vs LoRA measured on your model and data; rank sweeps; automatic rank.

Every training run is its own child process (``python -m loratune.cli train ...``), so that each
run's peak memory (peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) is its own and not
the high-water mark of an earlier run. The children take the same model, data and training flags as
``compare`` was given; only ``--output``, ``--method``, ``--r`` and (auto-rank) ``--pause-at-step`` differ.

Layout of ``--output OUT`` (default ``runs/compare``)::

    full/, lora/            one training run per method (summary.json, adapter/ or model/, curves.png)
    comparison.md|json|png  the measured table, with a LoRA / full ratio column
    rank-<r>/               --ranks: one LoRA run per rank
    ranks.json|png          accuracy against trainable parameters and against training time
    rounds/r<r>/            --auto-rank: one run per candidate rank, on the full schedule, paused
                            at each round's budget and continued while the rank survives
    auto-rank/              --auto-rank: the chosen rank's run, continued to the full budget; the
                            result is auto-rank/adapter
    auto_rank.json          the choice and its evidence (rank, budget, accuracy per round)
    logs/<run>.log          each child's console output

Ctrl-C is forwarded to the running child (which is in its own process group, so it gets exactly
one SIGINT): the child checkpoints and exits 130, no later run starts, and ``compare`` exits 130
with a one-line message. The same command plus ``--resume`` reuses the finished runs and resumes
the interrupted one. A child's user error (exit 2) comes out as its one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratune.errors import Interrupted, LoratuneError, RunError

__all__ = [
    "ChildRunError",
    "Round",
    "child_mode",
    "choose_rank",
    "comparison_rows",
    "parse_ranks",
    "run_compare",
    "successive_halving",
]

DEFAULT_OUTPUT = "runs/compare"
DEFAULT_METHODS = ("full", "lora")
DEFAULT_RANKS = (1, 2, 4, 8, 16)
# Train flags that compare sets itself for each child (--r and --pause-at-step pass through unless overridden).
_CHILD_SET = {"output", "method", "resume", "overwrite"}


class ChildRunError(LoratuneError):
    """A child training run failed or was interrupted; carries the child's exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------------------ parsing
def parse_ranks(text: str, flag: str = "--ranks") -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); a one-line error naming the flag otherwise."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise LoratuneError(
            f"{flag} must be comma-separated positive integers (e.g. 1,2,4,8,16), got {text!r}"
        ) from None
    if not ranks or ranks[0] < 1:
        raise LoratuneError(f"{flag} must be comma-separated positive integers (e.g. 1,2,4,8,16), got {text!r}")
    return ranks


def parse_methods(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in DEFAULT_METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise LoratuneError(f"--methods must be a comma-separated subset of full,lora, got {text!r}")
    return [m for m in DEFAULT_METHODS if m in methods]  # full first, as in the tutorial's table


# ----------------------------------------------------------------------------------- child processes
def _train_flag_specs() -> list[tuple[str, str, bool, Any]]:
    """(flag, dest, takes_no_value, const) of every `train` option, read from the CLI's own parser."""
    from loratune.train.options import add_train_options

    parser = argparse.ArgumentParser(add_help=False)
    add_train_options(parser)
    return [(a.option_strings[-1], a.dest, a.nargs == 0, a.const) for a in parser._actions if a.option_strings]


def child_argv(options: Mapping[str, Any], **overrides: Any) -> list[str]:
    """``python -m loratune.cli train`` with the user's train flags, then ``overrides`` (dest -> value)."""
    argv = [sys.executable, "-m", "loratune.cli", "train"]
    values = {k: v for k, v in options.items() if k not in _CHILD_SET}
    values.update(overrides)
    for flag, dest, no_value, const in _train_flag_specs():
        value = values.get(dest)
        if value is None or (value is False and const is not False):
            continue
        if no_value:
            if value == const:
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def child_mode(run_dir: Path, *, resume: bool, overwrite: bool, until_step: int | None = None) -> str:
    """How to (re)start the child that writes ``run_dir``: reuse, resume, overwrite or fresh.

    With ``--resume`` a finished run (``summary.json``) is reused and one with a checkpoint is
    resumed; a folder holding neither (interrupted before its first checkpoint) is started over.
    A run that paused (``--pause-at-step``) is resumed, not reused, unless it got as far as
    ``until_step`` (the step the next child would pause at).
    """
    from loratune.train.checkpoint import latest_checkpoint

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


def majority_accuracy(matrix: Sequence[Sequence[int]] | None) -> float | None:
    """Accuracy of always predicting the eval set's most frequent class (rows of ``matrix`` are true classes)."""
    if not matrix:
        return None
    rows = [sum(row) for row in matrix]
    return max(rows) / sum(rows) if sum(rows) else None


def run_measures(summary: Mapping[str, Any], *, run_dir: Path, pid: int | None, elapsed: float | None) -> dict:
    """The numbers compare reports for one finished run, from its ``summary.json``."""
    best, final = summary.get("best") or {}, summary.get("final") or {}
    epochs = float(summary.get("epochs") or 0.0)
    train_s = float(summary["train_seconds"])
    device = str(summary.get("device", "cpu"))
    return {
        "method": summary["method"],
        "r": (summary.get("config") or {}).get("r") if summary["method"] == "lora" else None,
        "run_dir": str(run_dir),
        "pid": pid,
        "reused": pid is None,
        "trainable_params": int(summary["trainable_params"]),
        "total_params": int(summary["total_params"]),
        "trainable_percent": float(summary["trainable_percent"]),
        "peak_memory_bytes": int(summary["peak_memory_bytes"]),
        "memory_kind": "peak CUDA allocation" if device.startswith("cuda") else "peak RSS",
        "train_seconds": train_s,
        "epochs": epochs,
        "steps": int(summary.get("steps") or 0),
        "seconds_per_epoch": train_s / epochs if epochs > 0 else None,
        "examples_per_s": float(summary["examples_per_s"]),
        "wall_seconds": float(summary.get("wall_seconds") or 0.0),
        "process_seconds": round(elapsed, 2) if elapsed is not None else None,
        "artifact": summary.get("artifact"),
        "artifact_bytes": int(summary.get("artifact_bytes") or 0),
        "weights_bytes": int(summary.get("weights_bytes") or 0),
        "accuracy": best.get("accuracy"),
        "majority_accuracy": majority_accuracy(summary.get("confusion_matrix")),
        "macro_f1": best.get("macro_f1"),
        "best_epoch": best.get("epoch"),
        "final_accuracy": final.get("accuracy"),
        "final_macro_f1": final.get("macro_f1"),
        "train_examples": summary.get("train_examples"),
        "eval_examples": summary.get("eval_examples"),
        "device": device,
        "precision": summary.get("precision"),
    }


def measures_at_step(m: dict[str, Any], step: int) -> dict[str, Any]:
    """``m`` (a reused run's measures) as they stood at optimizer step ``step``.

    A run that went further than ``step`` (an interrupted ``--auto-rank`` resumed with ``--resume``,
    whose earlier rounds reuse runs that later rounds continued) must not show an earlier round its
    later evaluations: accuracy, macro-F1 and the best epoch are taken again from the evaluations in
    its ``metrics.jsonl`` up to ``step`` (every pause evaluates, so the one at ``step`` is there).
    """
    if m["steps"] <= step:
        return m
    from loratune.train.logging import read_metrics
    from loratune.train.loop import LoopConfig, improves

    evals = [e for e in read_metrics(m["run_dir"], kind="eval") if int(e["step"]) <= step]
    at = [e for e in evals if int(e["step"]) == step]
    if not at:
        raise RunError(
            f"{m['run_dir']} has no evaluation at step {step}, which an earlier round of this run needs; "
            "start the comparison afresh with --overwrite"
        )
    best = None
    for e in evals:  # the trainer's own rule, on its metric
        if improves(e, best, LoopConfig.metric):
            best = e
    return m | {
        "steps": step,
        "epochs": at[-1]["epoch"],
        "accuracy": best["accuracy"],
        "macro_f1": best.get("macro_f1"),
        "best_epoch": best.get("epoch"),
        "final_accuracy": at[-1]["accuracy"],
        "final_macro_f1": at[-1].get("macro_f1"),
        "majority_accuracy": majority_accuracy(at[-1].get("confusion_matrix")) or m["majority_accuracy"],
    }


def _short(m: Mapping[str, Any]) -> str:
    from loratune.train.memory import format_bytes

    return (
        f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, "
        f"{m['trainable_params']:,} trainable ({m['trainable_percent']:.2f} %), "
        f"peak {format_bytes(m['peak_memory_bytes'])}, {m['train_seconds']:.1f} s training "
        f"({m['examples_per_s']:.1f} examples/s), weights {format_bytes(m['weights_bytes'])}"
    )


class Runner:
    """Starts one child training process at a time, forwards Ctrl-C to it, and reads its summary."""

    def __init__(self, out: Path, options: Mapping[str, Any], *, resume: bool, overwrite: bool) -> None:
        self.out, self.options = out, dict(options)
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
        src = str(Path(__file__).resolve().parents[1])  # the same loratune as this process
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
            m = run_measures(
                json.loads((run_dir / "summary.json").read_text()), run_dir=run_dir, pid=None, elapsed=None
            )
            if until is not None:
                m = measures_at_step(m, until)
            print(f"{label}: reusing the finished run in {run_dir}: {_short(m)}", flush=True)
            return m
        argv = child_argv(
            self.options, output=run_dir, resume=mode == "resume", overwrite=mode == "overwrite", **overrides
        )
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
        m = run_measures(
            json.loads((run_dir / "summary.json").read_text()), run_dir=run_dir, pid=proc.pid, elapsed=elapsed
        )
        print(f"{label}: done in {elapsed:.1f} s: {_short(m)}", flush=True)
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


# ------------------------------------------------------------------------------------- full vs LoRA
def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def comparison_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tutorial's rows (plus macro-F1 and examples/s): one dict per measure with each method's value,
    its text, and ``ratio`` = LoRA / full when both methods ran (accuracy rows also give ``diff_pt``)."""
    from loratune.train.memory import format_bytes

    def epochs_text(m: Mapping[str, Any]) -> str:
        e = m["epochs"]
        return f"{e:g} epoch{'s' if e != 1 else ''}"

    spec: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
        (
            "trainable parameters",
            "trainable_params",
            lambda m: f"{m['trainable_params']:,} ({m['trainable_percent']:.2f} %)",
        ),
        ("training memory", "peak_memory_bytes", lambda m: f"{format_bytes(m['peak_memory_bytes'])}"),
        (
            "training time",
            "train_seconds",
            lambda m: f"{m['train_seconds']:.1f} s for {epochs_text(m)} ({m['seconds_per_epoch'] or 0:.1f} s/epoch)",
        ),
        ("examples/s", "examples_per_s", lambda m: f"{m['examples_per_s']:.1f}"),
        (
            "storage per task",
            "weights_bytes",
            lambda m: f"{format_bytes(m['weights_bytes'])} (folder {format_bytes(m['artifact_bytes'])})",
        ),
        ("accuracy", "accuracy", lambda m: f"{100 * m['accuracy']:.2f} %"),
        ("macro-F1", "macro_f1", lambda m: f"{100 * m['macro_f1']:.2f}"),
    ]
    rows = []
    for measure, key, fmt in spec:
        row: dict[str, Any] = {"measure": measure, "key": key}
        for method, m in runs.items():
            row[method] = m[key]
            row[f"{method}_text"] = fmt(m)
        if "full" in runs and "lora" in runs:
            row["ratio"] = _ratio(runs["lora"][key], runs["full"][key])
            if key in ("accuracy", "macro_f1"):
                row["diff_pt"] = 100 * (runs["lora"][key] - runs["full"][key])
        rows.append(row)
    return rows


def comparison_markdown(runs: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]], setup: str) -> str:
    names = {"full": "full fine-tuning", "lora": f"LoRA r={runs['lora']['r']}" if "lora" in runs else "LoRA"}
    both = "ratio" in rows[0]
    header = ["measure", *(names[m] for m in runs), *(["LoRA / full"] if both else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["measure"], *(row[f"{m}_text"] for m in runs)]
        if both:
            ratio = row["ratio"]
            text = "n/a" if ratio is None else f"{ratio:.3g}x"
            if "diff_pt" in row:
                text += f" ({row['diff_pt']:+.2f} pt)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(runs.values()))
    notes = [
        f"Training memory: {first['memory_kind']} of each run's own process (model, data, activations, "
        "gradients, optimizer state; on CPU also Python and its libraries).",
        "Training time: optimizer steps only (evaluation and loading excluded). Storage per task: the saved "
        "weights (safetensors); the folder adds tokenizer and config.",
        "Accuracy and macro-F1: the best evaluation of each run (the one its artifact holds), on the eval split.",
    ]
    if any(m["reused"] for m in runs.values()):
        notes.append("Some runs were reused from an earlier, resumed invocation (--resume).")
    return "\n".join(
        ["# Full fine-tuning vs LoRA, measured", "", setup, "", *lines, "", *(f"- {n}" for n in notes), ""]
    )


def _setup_line(cfg, first: Mapping[str, Any]) -> str:
    return (
        f"Model `{cfg.model}`, data `{cfg.dataset or cfg.train_file}` ({first['train_examples']} train / "
        f"{first['eval_examples']} eval), max length {cfg.max_length}, batch {cfg.batch_size}, "
        f"{first['device']} / {first['precision']}."
    )


def compare_methods(runner: Runner, cfg, methods: Sequence[str]) -> dict[str, Any]:
    """One child per method; then comparison.md, comparison.json and comparison.png in OUT."""
    from loratune.fsutil import atomic_write_json, atomic_write_text
    from loratune.train.compare_plots import plot_comparison

    out = runner.out
    runs: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(methods, 1):
        runs[method] = runner.run(method, out / method, f"[{i}/{len(methods)}] {method}", method=method)
    rows = comparison_rows(runs)
    setup = _setup_line(cfg, next(iter(runs.values())))
    markdown = comparison_markdown(runs, rows, setup)
    result = {
        "setup": setup,
        "methods": runs,
        "rows": rows,
        "ratio": "lora / full" if len(runs) == 2 else None,
        "files": {"markdown": "comparison.md", "plot": "comparison.png"},
    }
    atomic_write_text(out / "comparison.md", markdown)
    atomic_write_json(out / "comparison.json", result)
    plot_comparison(runs, out / "comparison.png", title=f"{cfg.model}: full fine-tuning vs LoRA")
    print("\n" + markdown)
    print(f"wrote {out / 'comparison.md'}, comparison.json, comparison.png", flush=True)
    return result


# ---------------------------------------------------------------------------------------- rank sweep
def sweep_ranks(runner: Runner, cfg, ranks: Sequence[int]) -> list[dict[str, Any]]:
    """One LoRA child per rank; then ranks.json and ranks.png in OUT."""
    from loratune.fsutil import atomic_write_json
    from loratune.train.compare_plots import plot_ranks

    out = runner.out
    rows = [
        runner.run(f"rank-{r}", out / f"rank-{r}", f"[{i}/{len(ranks)}] r={r}", method="lora", r=r)
        for i, r in enumerate(ranks, 1)
    ]
    setup = _setup_line(cfg, rows[0])
    atomic_write_json(out / "ranks.json", {"setup": setup, "ranks": rows})
    plot_ranks(rows, out / "ranks.png", title=f"{cfg.model}: LoRA rank sweep")
    print("\n| r | trainable | accuracy | macro-F1 | training time |\n|---|---|---|---|---|")
    for m in rows:
        print(
            f"| {m['r']} | {m['trainable_params']:,} ({m['trainable_percent']:.2f} %) | {100 * m['accuracy']:.2f} % "
            f"| {100 * m['macro_f1']:.2f} | {m['train_seconds']:.1f} s |"
        )
    print(f"wrote {out / 'ranks.json'}, ranks.png", flush=True)
    return rows


# ----------------------------------------------------------------------------------------- auto-rank
def choose_rank(accuracies: Mapping[int, float], tolerance_pt: float) -> int:
    """The smallest rank whose accuracy is within ``tolerance_pt`` accuracy points of the best one.

    >>> choose_rank({1: 0.80, 2: 0.862, 4: 0.866, 8: 0.87}, 0.5)
    4
    """
    if not accuracies:
        raise ValueError("no accuracies to choose from")
    best = max(accuracies.values())
    return min(r for r, acc in accuracies.items() if acc >= best - tolerance_pt / 100 - 1e-9)


@dataclass
class Round:
    """One round of successive halving: every surviving rank trained for ``steps`` optimizer steps."""

    index: int
    steps: int
    results: dict[int, dict[str, Any]]  # rank -> measures (at least "accuracy")
    best: int = 0  # the most accurate rank of this round
    choice: int = 0  # the smallest rank within tolerance of ``best``
    kept: list[int] = field(default_factory=list)  # the ranks that go on to the next round


def successive_halving(
    candidates: Sequence[int],
    train: Callable[[int, int, int], Mapping[str, Any]],
    *,
    full_steps: int,
    first_steps: int,
    tolerance_pt: float,
) -> tuple[int, list[Round]]:
    """Pick a LoRA rank without training every candidate fully; return ``(rank, rounds)``.

    The rule is the one a full sweep would apply: the smallest rank whose accuracy is within
    ``tolerance_pt`` points of the best (``choose_rank``). Successive halving estimates it cheaply:

    1. Train every candidate for ``first_steps`` optimizer steps (``train(rank, steps, round)``
       returns its measures incl. accuracy; ``auto_rank`` makes each round a prefix of one
       full-schedule run per rank, continued from its checkpoint in the next round).
    2. A round whose best accuracy is within ``tolerance_pt`` of always predicting the majority
       class (``majority_accuracy`` in the measures) has not learned yet and tells the ranks apart
       by noise: nobody is dropped, the budget doubles.
    3. Otherwise keep the better half by accuracy (ties go to the smaller rank) plus the current choice, the
       smallest rank within tolerance of this round's best, since that is the answer so far. If this
       does not shrink the field (e.g. two candidates), the current choice alone goes on.
    4. Double the budget (at most ``full_steps``) and repeat with the survivors until one is left
       or a round ran with the full budget; the last round's choice is the answer.

    With five candidates, ``first_steps = full_steps / 16`` and prefix rounds, a rank costs the
    steps it reached: e.g. 2 ranks dropped at 1/4, 1 at 1/2 and the last 2 at the full budget cost
    3 full runs (5 for the sweep), and the chosen rank's run is the final adapter.
    Short-budget accuracy is a noisy estimate: a rank that learns slowly can be dropped early, and
    ``tolerance_pt`` should exceed the eval set's noise (one example of 1000 is 0.1 pt).
    """
    survivors = sorted(set(candidates))
    if len(survivors) == 1:
        return survivors[0], []
    steps = max(1, min(first_steps, full_steps))
    rounds: list[Round] = []
    while True:
        results = {r: dict(train(r, steps, len(rounds) + 1)) for r in survivors}
        acc = {r: float(results[r]["accuracy"]) for r in survivors}
        rnd = Round(len(rounds) + 1, steps, results, best=min(acc, key=lambda r: (-acc[r], r)))
        rnd.choice = choose_rank(acc, tolerance_pt)
        rounds.append(rnd)
        if steps >= full_steps:  # the full budget: this round is the sweep itself
            rnd.kept = [rnd.choice]
            return rnd.choice, rounds
        majority = [results[r].get("majority_accuracy") for r in survivors]
        chance = max((m for m in majority if m is not None), default=None)
        if chance is not None and acc[rnd.best] <= chance + tolerance_pt / 100:
            rnd.kept = list(survivors)  # not learned yet: the ranks differ by noise only
            steps = min(2 * steps, full_steps)
            continue
        better_half = sorted(survivors, key=lambda r: (-acc[r], r))[: math.ceil(len(survivors) / 2)]
        kept = sorted({*better_half, rnd.choice})
        rnd.kept = kept if len(kept) < len(survivors) else [rnd.choice]
        if len(rnd.kept) == 1:
            return rnd.choice, rounds
        survivors, steps = rnd.kept, min(2 * steps, full_steps)


def full_budget(cfg) -> tuple[int, int]:
    """(optimizer steps of one full run, steps per epoch) for ``cfg``, from its train split's size."""
    from loratune.train.run import load_data

    data = load_data(cfg)
    batches = math.ceil(len(data.train) / cfg.batch_size)
    per_epoch = max(1, math.ceil(batches / cfg.grad_accum))
    total = cfg.epochs * per_epoch
    return (min(total, cfg.max_steps) if cfg.max_steps else total), per_epoch


def _evidence_table(rounds: Sequence[Round], per_epoch: int) -> str:
    lines = ["| round | steps | epochs | r | accuracy | macro-F1 | |", "|---|---|---|---|---|---|---|"]
    for rnd in rounds:
        for r, m in sorted(rnd.results.items()):
            marks = [x for x, ok in (("best", r == rnd.best), ("choice", r == rnd.choice)) if ok]
            marks.append("kept" if r in rnd.kept and len(rnd.kept) > 1 else "" if r in rnd.kept else "dropped")
            lines.append(
                f"| {rnd.index} | {rnd.steps} | {rnd.steps / per_epoch:.2f} | {r} | {100 * m['accuracy']:.2f} % "
                f"| {100 * m['macro_f1']:.2f} | {', '.join(x for x in marks if x)} |"
            )
    return "\n".join(lines)


def auto_rank(
    runner: Runner, candidates: Sequence[int], budget: tuple[int, int], *, tolerance_pt: float, first_budget: float
) -> dict:
    """Successive halving over ``candidates``, then the chosen rank trained fully into OUT/auto-rank.

    ``budget`` is ``full_budget(cfg)``: (steps of one full run, steps per epoch).
    """
    from loratune.fsutil import atomic_write_json

    out = runner.out
    full_steps, per_epoch = budget
    first_steps = max(1, math.ceil(first_budget * full_steps))
    print(
        f"auto-rank: candidates r={','.join(map(str, candidates))}; full budget {full_steps} steps "
        f"({full_steps / per_epoch:.2f} epochs of {per_epoch}); first round {first_steps} steps, doubling; "
        f"tolerance {tolerance_pt:g} accuracy points",
        flush=True,
    )

    reached: dict[int, int] = {}  # rank -> optimizer steps its run has done so far

    def train(r: int, steps: int, index: int) -> dict[str, Any]:
        """Continue rank ``r``'s one full-schedule run to ``steps`` (a prefix of the full run)."""
        pause = steps if steps < full_steps else None
        m = runner.run(f"round{index}-r{r}", out / "rounds" / f"r{r}", f"[round {index}, {steps} steps] r={r}",
                       continue_run=r in reached, method="lora", r=r, pause_at_step=pause)  # fmt: skip
        m["round_steps"] = steps
        m["new_steps"] = steps - reached.get(r, 0)
        reached[r] = steps
        return m

    choice, rounds = successive_halving(
        candidates, train, full_steps=full_steps, first_steps=first_steps, tolerance_pt=tolerance_pt
    )
    table = _evidence_table(rounds, per_epoch)
    if rounds:
        last = rounds[-1]
        reason = (
            f"r={choice} is the smallest rank within {tolerance_pt:g} pt of the best accuracy in round {last.index} "
            f"({100 * last.results[last.best]['accuracy']:.2f} % at r={last.best}, {last.steps} steps)"
        )
        print("\n" + table + "\n")
    else:
        reason = f"r={choice} is the only candidate"
    print(f"auto-rank: choice r={choice}: {reason}", flush=True)

    final_dir = out / "auto-rank"
    final_steps = full_steps - reached.get(choice, 0)
    if final_steps > 0:  # the choice's run continues to the end of its schedule
        final = train(choice, full_steps, len(rounds) + 1)
    else:
        final = next(rnd.results[choice] for rnd in reversed(rounds) if choice in rnd.results)
    source = Path(final["run_dir"])
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(source, final_dir, ignore=shutil.ignore_patterns("checkpoints"))
    final = dict(final, run_dir=str(final_dir), copied_from=str(source))
    print(f"[final] r={choice}: its run reached the full budget; copied {source} to {final_dir}")
    adapter = final_dir / "adapter"
    round_steps = sum(m["new_steps"] for rnd in rounds for m in rnd.results.values())
    round_seconds = {r: float(m["train_seconds"]) for rnd in rounds for r, m in rnd.results.items()}
    sweep_steps = len(candidates) * full_steps
    cost = {
        "round_steps": round_steps,
        "final_steps": final_steps,
        "total_steps": round_steps + final_steps,
        "full_sweep_steps": sweep_steps,
        "fraction_of_full_sweep": round((round_steps + final_steps) / sweep_steps, 4),
        # a continued run's train_seconds is cumulative: the last value per rank is its whole cost
        "round_train_seconds": round(sum(round_seconds.values()), 2),
        "final_train_seconds": round(final["train_seconds"] - round_seconds.get(choice, 0.0), 2),
    }
    result = {
        "method": "successive halving (see loratune.compare.successive_halving)",
        "candidates": list(candidates),
        "tolerance_pt": tolerance_pt,
        "full_steps": full_steps,
        "steps_per_epoch": per_epoch,
        "first_steps": first_steps,
        "rounds": [
            {
                "round": rnd.index,
                "steps": rnd.steps,
                "epochs": round(rnd.steps / per_epoch, 4),
                "best": rnd.best,
                "choice": rnd.choice,
                "kept": rnd.kept,
                "results": [{"r": r, **m} for r, m in sorted(rnd.results.items())],
            }
            for rnd in rounds
        ],
        "evidence_table": table,
        "choice": choice,
        "reason": reason,
        "adapter": str(adapter),
        "final": final,
        "cost": cost,
    }
    atomic_write_json(out / "auto_rank.json", result)
    print(
        f"auto-rank: r={choice} trained with the full budget: accuracy {100 * final['accuracy']:.2f} %, "
        f"macro-F1 {100 * final['macro_f1']:.2f}; adapter in {adapter}\n"
        f"auto-rank: cost {round_steps} steps in rounds + {final_steps} final = {round_steps + final_steps} steps, "
        f"vs {sweep_steps} for the full sweep ({cost['fraction_of_full_sweep']:.2f}x); wrote {out / 'auto_rank.json'}",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------------------------- command
def check_compare_output(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise LoratuneError("--resume and --overwrite exclude each other; pick one")
    if out.exists() and not out.is_dir():
        raise RunError(f"--output {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise RunError(
            f"--output {out} exists and is not empty; pass --overwrite to replace its runs, "
            "--resume to continue them, or another --output"
        )


def run_compare(args: argparse.Namespace) -> int:
    """``loratune compare``: validate everything cheap first, then run the children."""
    from loratune.train.config import build_config

    if args.method is not None:
        raise LoratuneError("compare takes --methods (e.g. --methods full,lora), not --method")
    if args.tolerance < 0:
        raise LoratuneError(f"--tolerance must be >= 0 accuracy points, got {args.tolerance:g}")
    if not 0 < args.first_budget <= 1:
        raise LoratuneError(f"--first-budget must be a fraction in (0, 1], got {args.first_budget:g}")
    ranks = parse_ranks(args.ranks) if args.ranks else None
    sweep = ranks is not None and not args.auto_rank
    methods = parse_methods(args.methods) if (args.methods or not (ranks or args.auto_rank)) else []
    specs = {dest for _flag, dest, _no_value, _const in _train_flag_specs()}
    options = {k: v for k, v in vars(args).items() if k in specs}
    out = Path(args.output or DEFAULT_OUTPUT)
    options["output"] = str(out)
    resume, overwrite = bool(args.resume), bool(args.overwrite)
    # The flags, recipe and ranks are checked here, once, before any child starts or OUT changes.
    cfg = build_config(args.config, **{k: v for k, v in options.items() if k not in ("config", "resume", "overwrite")})
    check_compare_output(out, resume=resume, overwrite=overwrite)

    runner = Runner(out, options, resume=resume, overwrite=overwrite)
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
            auto_rank(runner, candidates, budget, tolerance_pt=args.tolerance, first_budget=args.first_budget)
    return 0
