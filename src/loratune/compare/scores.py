"""How compare names, formats and ranks a task's metrics (accuracy, entity F1, perplexity, ...).

Fractions (accuracy, F1, precision, recall) show as percentages and differ in points; other metrics
(perplexity, loss) show as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

FRACTIONS = frozenset({"accuracy", "macro_f1", "f1", "precision", "recall"})
LABELS = {"macro_f1": "macro-F1", "f1": "F1"}


def label(name: str) -> str:
    """A metric's name as the report shows it (``macro_f1`` -> ``macro-F1``)."""
    return LABELS.get(name, name.replace("_", " "))


def points(name: str, value: float) -> float:
    """``value`` on the scale tolerances and differences use: percent points for fractions, else itself."""
    return 100 * value if name in FRACTIONS else value


def text(name: str, value: float | None) -> str:
    """``value`` as the report shows it: ``87.50 %`` for accuracy, ``91.20`` for F1, ``12.345`` otherwise."""
    if value is None:
        return "n/a"
    if name == "accuracy":
        return f"{100 * value:.2f} %"
    return f"{100 * value:.2f}" if name in FRACTIONS else f"{value:.3f}"


def unit(name: str) -> str:
    """The unit of a difference or tolerance in ``name``: ``pt`` for fractions, else the metric's own."""
    return "pt" if name in FRACTIONS else name


def best_within(values: Mapping[int, float], tolerance: float, *, metric: str, higher_is_better: bool) -> int:
    """The smallest key whose value is within ``tolerance`` (in :func:`points`) of the best value."""
    if not values:
        raise ValueError("no values to choose from")
    sign = 1.0 if higher_is_better else -1.0
    best = max(sign * points(metric, v) for v in values.values())
    return min(r for r, v in values.items() if sign * points(metric, v) >= best - tolerance - 1e-7)
