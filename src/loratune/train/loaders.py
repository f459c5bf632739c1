"""A run's batches: training, the evaluations that choose the best checkpoint, and the final test.

Under torchrun each rank loads its share of every training batch and of the evaluation batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from loratune.data.batching import DistributedLengthGroupedBatchSampler, LengthGroupedBatchSampler, RankShard
from loratune.train.distributed import Parallel
from loratune.train.setup import RunSetup


@dataclass
class Loaders:
    """The run's batches: training, the evaluations that choose the best checkpoint, and the final test."""

    train: DataLoader
    select: DataLoader  # the validation split, else the eval split
    test: DataLoader | None  # the eval split, scored once at the end, when a validation split chooses


def make_loaders(setup: RunSetup, parallel: Parallel | None = None) -> Loaders:
    """The run's loaders; in a distributed run, this rank's share of each training batch and of the
    evaluation batches."""
    cfg, task = setup.cfg, setup.task
    world, rank = (parallel.world_size, parallel.rank) if parallel is not None else (1, 0)
    collator = task.collator(
        setup.tokenizer,
        max_length=setup.max_length if cfg.padding == "max_length" else None,
        pad_to_multiple_of=cfg.pad_to_multiple_of if cfg.pad_to_multiple_of > 1 else None,
    )
    # A private generator: creating the loader's iterator must not draw from the global RNG,
    # or a resumed run's dropout masks would differ from an uninterrupted run's.
    kwargs = {"collate_fn": collator, "generator": torch.Generator().manual_seed(cfg.seed)}

    def loader(split: Any, shuffle: bool) -> DataLoader:
        tokens = task.tokenize(split, setup.tokenizer, setup.max_length)
        if shuffle:  # mega_batches=1: random batches, nothing grouped
            sampler = DistributedLengthGroupedBatchSampler(
                tokens["length"],
                cfg.batch_size,
                num_replicas=world,
                rank=rank,
                shuffle=True,
                seed=cfg.seed,
                mega_batches=50 if cfg.group_by_length else 1,
            )
        else:
            whole = LengthGroupedBatchSampler(tokens["length"], cfg.batch_size * 2, shuffle=False)
            sampler = RankShard(whole, num_replicas=world, rank=rank)
        return DataLoader(tokens, batch_sampler=sampler, **kwargs)

    data = setup.data
    train_loader, eval_loader = loader(data.train, True), loader(data.eval, False)
    if data.val is None:
        return Loaders(train_loader, eval_loader, None)
    return Loaders(train_loader, loader(data.val, False), eval_loader)
