import contextlib

import pytest
import torch

from loratune.device import resolve_device
from loratune.errors import RunError
from loratune.train import precision
from loratune.train.precision import (
    autocast_context,
    grad_scaler,
    resolve_precision,
)

CPU = torch.device("cpu")


def _flags(monkeypatch, flags):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))


def test_resolve_device():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("cpu") == CPU
    with pytest.raises(RunError, match="--device"):
        resolve_device("banana")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda():
    with pytest.raises(RunError, match="--device cpu"):
        resolve_device("cuda")


def test_auto_on_cpu_follows_flags(monkeypatch):
    _flags(monkeypatch, {"fpu", "avx2"})
    assert resolve_precision("auto", CPU) == "fp32"
    _flags(monkeypatch, {"avx512f", "avx512_bf16"})
    assert resolve_precision("auto", CPU) == "bf16"
    _flags(monkeypatch, {"amx_bf16"})
    assert resolve_precision("AUTO", CPU) == "bf16"


def test_explicit_precisions(monkeypatch):
    _flags(monkeypatch, set())
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("float32", CPU) == "fp32"
    with pytest.raises(RunError, match="--precision fp32"):
        resolve_precision("bf16", CPU)
    with pytest.raises(RunError, match="--precision fp32"):
        resolve_precision("fp16", CPU)
    with pytest.raises(RunError, match="unknown precision"):
        resolve_precision("int3", CPU)
    _flags(monkeypatch, {"avx512_bf16"})
    assert resolve_precision("bfloat16", CPU) == "bf16"


def test_real_cpu_flags_parse():
    assert isinstance(precision._cpu_flags(), frozenset)
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")


def test_autocast_context():
    assert isinstance(autocast_context("fp32", CPU), contextlib.nullcontext)
    lin = torch.nn.Linear(4, 4)
    with autocast_context("bf16", CPU):
        out = lin(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32
    with pytest.raises(ValueError):
        autocast_context("auto", CPU)


def test_grad_scaler_disabled_off_fp16():
    assert not grad_scaler("fp32", CPU).is_enabled()
    assert not grad_scaler("bf16", CPU).is_enabled()
