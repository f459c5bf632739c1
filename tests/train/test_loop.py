"""The training loop's learning-rate schedule against transformers' reference."""

from __future__ import annotations

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from loratune.train.loop import linear_schedule_with_warmup


def _lrs(make, warmup: int, total: int) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=5e-4)
    sched = make(opt, warmup, total)
    lrs = []
    for _ in range(total + 2):  # two steps past the end: the factor stays at 0
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 7), (3, 30), (10, 10), (75, 750)])
def test_linear_schedule_matches_transformers(warmup: int, total: int) -> None:
    assert _lrs(linear_schedule_with_warmup, warmup, total) == pytest.approx(
        _lrs(get_linear_schedule_with_warmup, warmup, total), abs=0.0
    )


def test_linear_schedule_state_round_trips() -> None:
    """A resumed run restores the schedule from its checkpoint's state dict and goes on the same way."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = linear_schedule_with_warmup(opt, 4, 20)
    for _ in range(9):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched2 = linear_schedule_with_warmup(opt2, 4, 20)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched.get_last_lr()[0] == pytest.approx(1e-3 * (20 - 9) / 16)
