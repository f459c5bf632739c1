import json
import math

import numpy as np
import pytest
import torch

from loratune.errors import RunError
from loratune.train.logging import MetricsLogger, environment_info, read_metrics


def test_logger_appends_flushed_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path)
    log.log_train(step=1, epoch=0, loss=torch.tensor(0.7), lr=np.float32(5e-4), examples_per_s=40.0)
    # flushed: visible before close
    assert json.loads(path.read_text().splitlines()[0])["loss"] == pytest.approx(0.7)
    log.log_eval(step=1, epoch=0, accuracy=0.8, macro_f1=0.75)
    log.log({"type": "train", "step": 2, "epoch": 0, "loss": float("nan"), "lr": 1e-4})
    log.close()
    recs = read_metrics(path)
    assert [r["type"] for r in recs] == ["train", "eval", "train"]
    assert all("time" in r for r in recs)
    assert math.isnan(recs[2]["loss"])
    assert read_metrics(tmp_path, kind="eval")[0]["accuracy"] == 0.8  # folder resolves to metrics.jsonl
    with MetricsLogger(tmp_path) as log2:  # appends
        log2.log_train(step=3, epoch=1, loss=0.5, lr=1e-4)
    assert len(read_metrics(path)) == 4


def test_resume_drops_later_steps(tmp_path):
    with MetricsLogger(tmp_path / "m.jsonl") as log:
        for s in range(1, 6):
            log.log_train(step=s, epoch=0, loss=1.0 / s, lr=1e-3)
    with MetricsLogger(tmp_path / "m.jsonl", resume_step=3) as log:
        log.log_train(step=4, epoch=0, loss=0.1, lr=1e-3)
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 2, 3, 4]


def test_read_metrics_torn_and_bad_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    assert read_metrics(p) == []
    p.write_text('{"type": "train", "step": 1}\n{"type": "tr')
    assert read_metrics(p) == [{"type": "train", "step": 1}]
    p.write_text('{"type": "train", "step": 1}\nxx\n{"step": 2}\n')
    with pytest.raises(RunError, match="line 2"):
        read_metrics(p)


def test_environment_info():
    info = environment_info("cpu")
    for key in ("python", "torch", "transformers", "loratune", "device_name", "cpu_model", "torch_threads"):
        assert key in info
    assert info["torch"] == torch.__version__
    json.dumps(info)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_same_scalars_and_a_resume_purges_later_steps(tmp_path):
    pytest.importorskip("tensorboard")
    board = tmp_path / "tensorboard"
    with MetricsLogger(tmp_path, tensorboard_dir=board) as log:
        for step in (1, 2, 3):
            log.log_train(step=step, epoch=0, loss=1.0 / step, lr=1e-3 * step, examples_per_s=40.0 + step)
        log.log_eval(step=3, epoch=1, accuracy=0.75, macro_f1=0.5, confusion_matrix=[[1, 0], [0, 1]])
    scalars = _scalars(board)
    assert set(scalars) == {"train/loss", "train/lr", "train/examples_per_s", "eval/accuracy", "eval/macro_f1"}
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert scalars["eval/accuracy"] == [(3, 0.75)]
    with MetricsLogger(tmp_path, resume_step=1, tensorboard_dir=board) as log:  # resumed from step 1
        log.log_train(step=2, epoch=0, loss=0.25, lr=2e-3)
    assert _scalars(board)["train/loss"] == [(1, 1.0), (2, 0.25)]


def test_tensorboard_missing_is_a_one_line_error_naming_the_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(RunError, match=r"pip install 'loratune\[tensorboard\]'"):
        MetricsLogger(tmp_path, tensorboard_dir=tmp_path / "tb")
