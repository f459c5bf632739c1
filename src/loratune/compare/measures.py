"""The numbers ``compare`` reports for one finished training run, read from its folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loratune.compare import scores
from loratune.errors import RunError
from loratune.tasks import get_task
from loratune.train.logging import read_metrics
from loratune.train.memory import format_bytes


def majority_accuracy(matrix: Sequence[Sequence[int]] | None) -> float | None:
    """Accuracy of always predicting the eval set's most frequent class (rows of ``matrix`` are true classes)."""
    if not matrix:
        return None
    rows = [sum(row) for row in matrix]
    return max(rows) / sum(rows) if sum(rows) else None


def task_scores(task: str, best: Mapping[str, Any], final: Mapping[str, Any], test: Mapping[str, Any]) -> dict:
    """The task's metrics: ``metric`` (the one that chose the checkpoint), its direction, and for each
    metric the best evaluation's value (``accuracy``), the last one's (``final_accuracy``) and the test
    split's (``test_accuracy``, None without a validation split)."""
    spec = get_task(task)
    names = list(dict.fromkeys([spec.metric.name, *spec.summary_metrics]))
    out: dict[str, Any] = {
        "metric": spec.metric.name,
        "higher_is_better": spec.metric.higher_is_better,
        "metrics": names,
    }
    for name in names:
        out |= {name: best.get(name), f"final_{name}": final.get(name), f"test_{name}": test.get(name)}
    return out


def run_measures(summary: Mapping[str, Any], *, run_dir: Path, pid: int | None, elapsed: float | None) -> dict:
    """The numbers compare reports for one finished run, from its ``summary.json``."""
    best, final = summary.get("best") or {}, summary.get("final") or {}
    epochs = float(summary.get("epochs") or 0.0)
    train_s = float(summary["train_seconds"])
    device = str(summary.get("device", "cpu"))
    return {
        "task": summary.get("task", "seq-cls"),
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
        "selection": summary.get("selection"),
        **task_scores(summary.get("task", "seq-cls"), best, final, summary.get("test") or {}),
        "majority_accuracy": majority_accuracy(summary.get("confusion_matrix")),
        "best_epoch": best.get("epoch"),
        "train_examples": summary.get("train_examples"),
        "eval_examples": summary.get("eval_examples"),
        "device": device,
        "compute_precision": summary.get("precision"),  # fp32, bf16, fp16 ("precision" may be a metric)
    }


def measures_at_step(m: dict[str, Any], step: int) -> dict[str, Any]:
    """``m`` (a reused run's measures) as they stood at optimizer step ``step``.

    A run that went further than ``step`` (an interrupted ``--auto-rank`` resumed with ``--resume``,
    whose earlier rounds reuse runs that later rounds continued) must not show an earlier round its
    later evaluations: its metrics and the best epoch are taken again from the evaluations in
    its ``metrics.jsonl`` up to ``step`` (every pause evaluates, so the one at ``step`` is there).
    """
    if m["steps"] <= step:
        return m
    evals = [e for e in read_metrics(m["run_dir"], kind="eval") if int(e["step"]) <= step]
    at = [e for e in evals if int(e["step"]) == step]
    if not at:
        raise RunError(
            f"{m['run_dir']} has no evaluation at step {step}, which an earlier round of this run needs; "
            "start the comparison afresh with --overwrite"
        )
    best, metric = None, get_task(m["task"]).metric
    for e in evals:  # the trainer's own rule, on the task's metric
        if metric.improves(e, best):
            best = e
    return (
        m
        | task_scores(m["task"], best, at[-1], {k[5:]: v for k, v in m.items() if k.startswith("test_")})
        | {
            "steps": step,
            "epochs": at[-1]["epoch"],
            "best_epoch": best.get("epoch"),
            "majority_accuracy": majority_accuracy(at[-1].get("confusion_matrix")) or m.get("majority_accuracy"),
        }
    )


def describe(m: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{scores.label(name)} {scores.text(name, m.get(name))}" for name in m["metrics"])
    return (
        f"{shown}, "
        f"{m['trainable_params']:,} trainable ({m['trainable_percent']:.2f} %), "
        f"peak {format_bytes(m['peak_memory_bytes'])}, {m['train_seconds']:.1f} s training "
        f"({m['examples_per_s']:.1f} examples/s), weights {format_bytes(m['weights_bytes'])}"
    )
