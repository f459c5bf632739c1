"""Worker functions that ``torch.multiprocessing.spawn`` runs in child processes (kept light to import)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from loratune.data.batching import LengthGroupedBatchSampler, RankShard


def gather_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of the sharded evaluation: score its shard, then gather (``Parallel.reduce_metrics``)."""
    import torch.distributed as dist

    from loratune.tasks.causal_lm import TokenLossMetrics
    from loratune.tasks.seq_cls import ClassificationMetrics
    from loratune.train.distributed import DataParallel, Launch

    # tcp:// rather than file://: torch 2.4's FileStore can hang at exit when the other rank has already left.
    init = f"tcp://127.0.0.1:{port}"
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    parallel = DataParallel(Launch(rank, rank, world), torch.device("cpu"), "gloo")
    results = {}
    for name, metrics in (("cls", ClassificationMetrics(3)), ("lm", TokenLossMetrics())):
        for batch, outputs in shard_batches(rank, world):
            if (outputs.logits is None) == (name == "lm"):
                metrics.update(outputs, batch)
        results[name] = parallel.reduce_metrics(metrics)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()  # rank 0 hosts the store: it must not leave while the other rank still uses it
    dist.destroy_process_group()


def shard_batches(rank: int, world: int):
    """Rank ``rank``'s batches of 21 fixed examples (3 classes, logits and token losses)."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(21, 3, generator=g), torch.randint(0, 3, (21,), generator=g)
    lm_labels = torch.randint(0, 5, (21, 6), generator=g)
    whole = LengthGroupedBatchSampler(np.arange(21) % 7 + 3, 4, shuffle=False)
    for batch in RankShard(whole, num_replicas=world, rank=rank):
        idx = torch.tensor(batch)
        loss = torch.nn.functional.cross_entropy(logits[idx], labels[idx])
        yield {"labels": labels[idx]}, SimpleNamespace(logits=logits[idx], loss=loss)
        yield {"labels": lm_labels[idx]}, SimpleNamespace(logits=None, loss=loss)
