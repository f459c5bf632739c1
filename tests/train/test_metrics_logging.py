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
