"""--deterministic: torch's deterministic algorithms for the run, the lean kernels under them, summary.json."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from loratune.errors import RunError
from loratune.train.determinism import CUBLAS_WORKSPACE, deterministic_algorithms


def _state() -> tuple:
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


def test_the_settings_hold_inside_the_block_and_are_restored_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _state()
    assert before[0] is False
    with deterministic_algorithms():
        assert _state() == (True, True, False, CUBLAS_WORKSPACE)
    assert _state() == before
    with deterministic_algorithms(False):
        assert _state() == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice is kept
    with deterministic_algorithms():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and not torch.are_deterministic_algorithms_enabled()


def test_an_op_without_a_deterministic_implementation_is_a_one_line_run_error():
    with pytest.raises(RunError) as info, deterministic_algorithms():
        torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # raises on CPU too
    assert str(info.value) == "put_ has no deterministic implementation on this device; drop --deterministic"
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="other"), deterministic_algorithms():
        raise RuntimeError("other")  # any other error passes through


def _lean_step(seed: int = 0) -> list[torch.Tensor]:
    """Outputs and gradients of the lean attention, dropout and LoRA kernels, each with dropout."""
    from loratune.kernels import attention, dropout
    from loratune.lora.layer import LoraLinear

    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 9, 9) > 0.3
    layer = LoraLinear(nn.Linear(16, 12).requires_grad_(False))
    layer.add_adapter("a", r=4, scaling=2.0, dropout=0.2)
    layer.active_adapter = "a"
    x = torch.randn(3, 5, 16, requires_grad=True)
    outs = [attention(q, k, v, mask, dropout_p=0.2, is_causal=True), dropout(x, 0.3), layer.train()(x)]
    torch.autograd.backward([o.sum() for o in outs])
    return [*outs, q.grad, k.grad, v.grad, x.grad, layer.lora_A["a"].weight.grad, layer.lora_B["a"].weight.grad]


def test_the_lean_kernels_run_under_deterministic_algorithms_with_the_same_results():
    """Also with ``torch.empty`` filled with NaN, as deterministic mode does: no kernel reads unwritten memory."""
    expected = _lean_step()
    with deterministic_algorithms():
        assert torch.utils.deterministic.fill_uninitialized_memory
        got = _lean_step()
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def test_loratune_train_deterministic_applies_for_the_run_and_is_in_the_summary(
    tiny_model_dir, toy_data, tmp_path, capsys, monkeypatch
):
    import loratune.train.run as run_module
    from loratune.cli import main

    seen = []
    real_train = run_module.train

    def train(*args, **kwargs):
        seen.append(_state())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(run_module, "train", train)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    losses = {}
    for name, extra in {"plain": [], "deterministic": ["--deterministic"]}.items():
        out = tmp_path / name
        argv = ["train", "--model", str(tiny_model_dir), "--dataset", str(toy_data), "--output", str(out),
                "--max-length", "32", "--batch-size", "8", "--max-steps", "6", "--log-every", "1",
                "--precision", "fp32", "--no-progress", *extra]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["deterministic"] is summary["config"]["deterministic"] is (name == "deterministic")
        assert summary["kernels"] == "lean" and summary["kernel_notes"] == []  # lean attention and dropouts ran
        records = (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
        losses[name] = [r["loss"] for r in records]
    assert seen == [(False, False, False, None), (True, True, False, CUBLAS_WORKSPACE)]
    assert _state() == (False, False, False, None)  # restored after the run
    assert losses["deterministic"] == losses["plain"]  # on CPU the same algorithms either way


def test_deterministic_may_not_change_on_resume():
    from loratune.train.config import RunConfig, resume_conflicts

    changed = resume_conflicts({"deterministic": False}, RunConfig(deterministic=True))
    assert changed == ["--deterministic False -> True"]
    assert resume_conflicts({}, RunConfig(deterministic=False)) == []  # an older run: the default
