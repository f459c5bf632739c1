"""One evaluation pass over a loader, for any task: the task's ``Metrics`` accumulator scores it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from loratune.tasks.base import Metrics
from loratune.train.precision import autocast_context
from loratune.train.progress import progress_bar


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, metrics: Metrics, *, device: torch.device, precision: str
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``loader`` (under the run's autocast) and return ``metrics.compute()``."""
    model.eval()
    bar = progress_bar(len(loader), "eval", every_pct=None, unit="batch")
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(precision, device):
                outputs = model(**batch)
            metrics.update(outputs, batch)
            bar.update(1)
    finally:
        bar.close()
    return metrics.compute()
