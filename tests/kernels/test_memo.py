"""kernels.memo.LastConversion: one shared copy while it lives, none after a change of the source."""

from __future__ import annotations

import gc

import torch

from loratune.kernels.memo import LastConversion


def test_shares_invalidates_on_change_and_holds_no_strong_reference():
    memo = LastConversion()
    calls = []

    def make(src):
        calls.append(1)
        return src.to(torch.bfloat16)

    x = torch.randn(4)
    a = memo.get(x, torch.bfloat16, lambda: make(x))
    assert memo.get(x, torch.bfloat16, lambda: make(x)) is a and len(calls) == 1
    assert memo.get(x, torch.float16, lambda: x.half()) is not a  # another key
    b = memo.get(x, torch.bfloat16, lambda: make(x))
    x.add_(1)  # in place: the version counter moves
    assert memo.get(x, torch.bfloat16, lambda: make(x)) is not b
    del a, b
    gc.collect()
    n = len(calls)
    memo.get(x, torch.bfloat16, lambda: make(x))  # the last copy was dropped by its users
    assert len(calls) == n + 1
