"""One evaluation pass over a loader, for any task: the task's ``Metrics`` accumulator scores it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from loratune.tasks.base import Metrics
from loratune.train.distributed import Parallel
from loratune.train.precision import autocast_context
from loratune.train.progress import progress_bar


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    metrics: Metrics,
    *,
    device: torch.device,
    precision: str,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``loader`` (under the run's autocast) and return ``metrics.compute()``.

    In a distributed run (``parallel``) ``loader`` is this rank's shard of the batches: the shards'
    accumulators are merged on rank 0 and every rank gets the metrics of all of them.
    """
    model.eval()
    silent = parallel is not None and not parallel.is_main
    bar = progress_bar(len(loader), "eval", every_pct=None, unit="batch", silent=silent)
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(precision, device):
                outputs = model(**batch)
            metrics.update(outputs, batch)
            bar.update(1)
    finally:
        bar.close()
    return parallel.reduce_metrics(metrics) if parallel is not None else metrics.compute()
