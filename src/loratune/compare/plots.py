"""Plots for ``loratune compare`` (matplotlib's Agg canvas; never opens a window).

``plot_comparison``: side-by-side bars per method for the five measures of the tutorial's table.
``plot_ranks``: accuracy against trainable parameters and against training time, one point per rank.
Inputs are the per-run measure dicts of ``loratune.compare.run_measures``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loratune.fsutil import atomic_write_bytes
from loratune.train.memory import format_bytes

__all__ = ["plot_comparison", "plot_ranks"]

_COLORS = {"full": "tab:gray", "lora": "tab:blue"}
# (panel title, measure key, value label, log scale)
_PANELS: tuple[tuple[str, str, Any, bool], ...] = (
    ("trainable parameters", "trainable_params", lambda v: f"{v:,.0f}", True),
    ("peak training memory", "peak_memory_bytes", format_bytes, False),
    ("training time (s)", "train_seconds", lambda v: f"{v:.1f} s", False),
    ("storage per task (bytes)", "weights_bytes", format_bytes, True),
    ("accuracy (%)", "accuracy", lambda v: f"{100 * v:.2f} %", False),
)


def _save(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_png, buf.getvalue())


def plot_comparison(runs: Mapping[str, Mapping[str, Any]], out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """Five panels (parameters, memory, time, storage, accuracy), one bar per method, values written on the bars.

    Parameters and storage differ by orders of magnitude between full fine-tuning and LoRA, so their axes are
    logarithmic; the others are linear from zero (accuracy from a little below the lower bar).
    """
    fig = Figure(figsize=(15, 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(_PANELS))
    names = list(runs)
    panels = _PANELS
    metric = next(iter(runs.values())).get("metric", "accuracy")
    if metric != "accuracy":  # the task's own metric (causal-lm: perplexity) in the last panel
        panels = (*_PANELS[:-1], (metric, metric, lambda v: f"{v:.4f}", False))
    labels = [("LoRA r=" + str(runs[n].get("r"))) if n == "lora" else "full FT" if n == "full" else n for n in names]
    for ax, (panel, key, fmt, log) in zip(axes, panels, strict=True):
        values = [float(runs[n][key] or 0) for n in names]
        shown = [100 * v for v in values] if key == "accuracy" else values
        bars = ax.bar(labels, shown, color=[_COLORS.get(n, "tab:green") for n in names], width=0.6)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                fmt(v),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
        if log and min(shown) > 0:
            ax.set_yscale("log")
            ax.set_ylim(min(shown) / 3, max(shown) * 5)
        elif key == "accuracy":
            lo, hi = min(shown), max(shown)
            ax.set_ylim(max(0.0, lo - max(5.0, hi - lo)), min(100.0, hi + 0.25 * max(5.0, hi - lo)) + 0.5)
        else:
            ax.set_ylim(0, max(max(shown), 1e-9) * 1.2)
        if key == "peak_memory_bytes":
            ax.set_yticks(ax.get_yticks())
            ax.set_yticklabels([format_bytes(t) for t in ax.get_yticks()], fontsize=7)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def plot_ranks(rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """Two panels: accuracy vs trainable parameters (log x) and accuracy vs training time; points labelled r=."""
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_params, ax_time = fig.subplots(1, 2)
    rows = sorted(rows, key=lambda m: m["r"])
    acc = [100 * float(m["accuracy"]) for m in rows]
    for ax, key, xlabel in (
        (ax_params, "trainable_params", "trainable parameters"),
        (ax_time, "train_seconds", "training time (s)"),
    ):
        xs = [float(m[key]) for m in rows]
        ax.plot(xs, acc, "o-", color="tab:blue", ms=6)
        for x, y, m in zip(xs, acc, rows, strict=True):
            ax.annotate(f"r={m['r']}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        if key == "trainable_params" and min(xs) > 0:
            ax.set_xscale("log")
        lo, hi = min(acc), max(acc)
        pad = max((hi - lo) * 0.15, 0.5)
        ax.set_ylim(lo - pad, hi + 1.5 * pad)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    ax_params.set_title("Accuracy vs trainable parameters")
    ax_time.set_title("Accuracy vs training time")
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)
