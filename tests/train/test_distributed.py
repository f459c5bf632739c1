"""Data-parallel training: the samplers that split the batches among the processes."""

from __future__ import annotations

import numpy as np
import pytest

from loratune.data import DistributedLengthGroupedBatchSampler, LengthGroupedBatchSampler, RankShard


# ------------------------------------------------------------------------------------------ samplers
def test_the_ranks_split_each_global_batch_and_resume_in_the_same_order():
    lengths = np.random.default_rng(0).integers(5, 60, size=103)
    single = LengthGroupedBatchSampler(lengths, 8, shuffle=True, seed=3, mega_batches=4)
    ranks = [DistributedLengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=r, shuffle=True, seed=3,
                                                  mega_batches=4) for r in (0, 1)]  # fmt: skip
    for epoch in (0, 1):
        whole = single.batches(epoch)  # 12 batches of 8, then one of 7
        shards = [r.batches(epoch) for r in ranks]
        assert [len(s) for s in shards] == [len(r) for r in ranks] == [len(whole)] * 2
        for i, batch in enumerate(whole):  # each global batch split between the ranks, interleaved by length
            assert shards[0][i] + shards[1][i] != batch and sorted(shards[0][i] + shards[1][i]) == sorted(batch)
            assert shards[0][i] == batch[0::2] and shards[1][i] == batch[1::2]
    for r in ranks:  # resuming at global batch 5 continues the same order
        r.set_epoch(1)
        r.set_start(5)
        assert len(r) == len(whole) - 5 and list(r) == r.batches(1)[5:]
    # a last global batch of fewer examples than ranks is left out, on every rank alike
    odd = [DistributedLengthGroupedBatchSampler(lengths[:97], 4, num_replicas=2, rank=r, shuffle=True, seed=3)
           for r in (0, 1)]  # fmt: skip
    assert [len(r) for r in odd] == [len(r.batches()) for r in odd] == [12, 12]
    assert all(len(b) == 4 for r in odd for b in r.batches())


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_eval_shards_hold_every_example_exactly_once(world):
    whole = LengthGroupedBatchSampler(np.arange(21) % 7 + 3, 4, shuffle=False)  # 6 batches, the last of 1
    shards = [RankShard(whole, num_replicas=world, rank=r) for r in range(world)]
    seen = [i for s in shards for batch in s for i in batch]
    assert sorted(seen) == list(range(21))
    assert [len(s) for s in shards] == [len(list(s)) for s in shards] and sum(len(s) for s in shards) == 6
