"""The optional ``tensorboard`` extra: torch's ``SummaryWriter`` (what ``--report-to tensorboard`` uses)
writes event files that TensorBoard reads back. Run at the declared floor by ``make test-oldest``."""

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard")


def test_summary_writer_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    # the value types a metrics record holds: Python floats, 0-d tensors, numpy scalars
    losses = [0.75, torch.tensor(0.5), np.float32(0.25)]
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step, loss in enumerate(losses, start=1):
            writer.add_scalar("train/loss", loss, global_step=step)
        writer.add_scalar("eval/accuracy", 0.875, global_step=3)
        writer.add_text("config", "model: minilm, rank: 8", global_step=0)
        writer.flush()

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([0.75, 0.5, 0.25])
    (acc,) = events.Scalars("eval/accuracy")
    assert (acc.step, acc.value) == (3, pytest.approx(0.875))
    assert "config/text_summary" in events.Tags()["tensors"]
