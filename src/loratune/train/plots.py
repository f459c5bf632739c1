"""Training curves as a PNG (matplotlib's Agg canvas; never opens a window).

Input is the list of metric records that ``MetricsLogger`` writes (see ``train.logging``):
``{"type": "train", "step", "epoch", "loss"}`` and ``{"type": "eval", "epoch", "accuracy",
"macro_f1", ...}``. Epoch numbers are plotted as they appear in the records.
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from loratune.fsutil import atomic_write_bytes

__all__ = ["plot_training_curves", "training_figure"]

# (label, record keys accepted for it); the first key present in a record wins.
_EVAL_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accuracy", ("accuracy", "eval_accuracy", "acc")),
    ("macro-F1", ("macro_f1", "f1_macro", "eval_macro_f1")),
    ("F1", ("f1", "eval_f1")),
)
_LOWER_IS_BETTER = {"validation loss", "perplexity"}
# Used only when none of the above is present (e.g. causal LM runs).
_EVAL_FALLBACK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validation loss", ("loss", "eval_loss")),
    ("perplexity", ("perplexity", "eval_perplexity")),
)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series(evals: list[dict[str, Any]], keys: tuple[str, ...]) -> list[tuple[float, float]]:
    pts = []
    for i, r in enumerate(evals):
        x = _num(r.get("epoch"))
        if x is None:
            x = float(i)
        for k in keys:
            y = _num(r.get(k))
            if y is not None:
                pts.append((x, y))
                break
    return pts


def _epoch_index(epoch: Any) -> int:
    """The epoch a record belongs to: a record logged at the end of epoch 1 says ``epoch: 1.0``."""
    x = _num(epoch)
    return max(0, math.ceil(x) - 1) if x is not None else 0


def _mark_best(ax: Any, evals: list[dict[str, Any]], best: dict[str, Any] | None, plotted: list) -> None:
    """Star and label the kept evaluation (``best``; without it, the first series' highest point)."""
    label, pts = plotted[0]
    if best is None:
        x, y = max(pts, key=lambda p: p[1]) if label not in _LOWER_IS_BETTER else min(pts, key=lambda p: p[1])
    else:
        x = _num(best.get("epoch"))
        y = next(
            (v for key in dict(_EVAL_SERIES + _EVAL_FALLBACK)[label] if (v := _num(best.get(key))) is not None), None
        )
        if x is None or y is None:
            return
    ax.plot([x], [y], "*", color="tab:red", ms=14, zorder=3)
    ax.annotate(
        f"kept: {label} {y:.3f}",
        (x, y),
        textcoords="offset points",
        xytext=(0, 9),
        ha="center",
        fontsize=8,
        color="tab:red",
    )


def plot_training_curves(
    records: list[dict[str, Any]],
    out_png: str | os.PathLike[str],
    *,
    title: str = "",
    best: dict[str, Any] | None = None,
) -> Path:
    """Write ``training_figure(records, title=title, best=best)`` as a PNG, atomically."""
    fig = training_figure(records, title=title, best=best)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_png, buf.getvalue())


def training_figure(records: list[dict[str, Any]], *, title: str = "", best: dict[str, Any] | None = None) -> Figure:
    """Two panels: training loss per step with each epoch's mean (labelled); the validation metrics per
    evaluation, with the kept evaluation (``best``, the run's best record) starred and labelled.

    Works with a single epoch, and with no eval records (the right panel then says so).
    """
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_eval = fig.subplots(1, 2)
    train = [r for r in records if r.get("type", "train") == "train" and _num(r.get("loss")) is not None]
    _loss_panel(ax_loss, train)
    _eval_panel(ax_eval, [r for r in records if r.get("type") == "eval"], best)
    for ax, title_text, xlabel, ylabel in (
        (ax_loss, "Training loss", "step", "training loss"),
        (ax_eval, "Validation", "epoch", "validation metric"),
    ):
        ax.set(title=title_text, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_yticks([])
    ax.set_xticks([])


def _loss_panel(ax: Any, train: list[dict[str, Any]]) -> None:
    """The training loss per step, and each epoch's mean as a labelled segment over that epoch's steps."""
    if not train:
        return _empty(ax, "no training records")
    steps = [int(r.get("step", i + 1)) for i, r in enumerate(train)]
    losses = [float(r["loss"]) for r in train]
    ax.plot(steps, losses, color="tab:blue", alpha=0.45, lw=1, label="loss per step")
    by_epoch: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for s, loss, r in zip(steps, losses, train, strict=True):
        by_epoch[_epoch_index(r.get("epoch"))].append((s, loss))
    for n, (_ep, pts) in enumerate(sorted(by_epoch.items())):
        lo, hi = min(s for s, _ in pts), max(s for s, _ in pts)
        mean = sum(v for _, v in pts) / len(pts)
        ax.hlines(mean, lo, hi, colors="tab:orange", lw=2.5, label="epoch mean" if n == 0 else None)
        ax.plot([(lo + hi) / 2], [mean], "o", color="tab:orange", ms=5)
        ax.annotate(
            f"{mean:.3f}",
            ((lo + hi) / 2, mean),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
            color="tab:orange",
        )
    ax.legend(loc="upper right", fontsize=8)


def _eval_panel(ax: Any, evals: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """The validation metrics per evaluation (the loss or perplexity when there is no other), the kept one starred."""
    plotted = [(label, pts) for label, keys in _EVAL_SERIES if (pts := _series(evals, keys))]
    if not plotted:
        plotted = [(label, pts) for label, keys in _EVAL_FALLBACK if (pts := _series(evals, keys))]
    if not plotted:
        return _empty(ax, "no validation records")
    for (label, pts), color in zip(plotted, ("tab:green", "tab:purple", "tab:red"), strict=False):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", color=color, label=label, ms=5)
    _mark_best(ax, evals, best, plotted)
    ax.margins(x=0.08)
    all_y = [y for _, pts in plotted for _, y in pts]
    lo, hi = min(all_y), max(all_y)
    pad = max((hi - lo) * 0.15, 0.02 * max(abs(hi), 1.0))
    ax.set_ylim(lo - pad, hi + pad * 1.5)
    all_x = [x for _, pts in plotted for x, _ in pts]
    if min(all_x) == max(all_x):
        ax.set_xlim(all_x[0] - 1, all_x[0] + 1)
    ax.legend(loc="lower right", fontsize=8)
