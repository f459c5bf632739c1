"""The training loop: its learning-rate schedule against transformers' reference, and fp16 loss scaling."""

from __future__ import annotations

import json

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


# ------------------------------------------------------------------ LoRA+
def _lora_bert():
    from conftest import tiny_bert_cls
    from loratune import LoraConfig, add_lora

    return add_lora(tiny_bert_cls(num_labels=2), LoraConfig(r=2, target_modules=["query", "value"],
                                                            modules_to_save=["classifier"]))  # fmt: skip


def _group_of(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, int]:
    index = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
    return {n: index[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_loraplus_puts_the_b_matrices_in_groups_at_k_times_the_rate():
    from loratune.train.loop import build_optimizer

    model = _lora_bert()
    opt = build_optimizer(model, 1e-3, 0.01, loraplus_ratio=16.0)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(1e-3, 0.01), (1e-3, 0.0), (16e-3, 0.01)]
    groups = _group_of(opt, model)
    assert {n for n, i in groups.items() if i == 2} == {n for n in groups if ".lora_B." in n} != set()
    assert {n for n, i in groups.items() if i == 1} == {n for n in groups if n.endswith("bias")} != set()
    assert all(".lora_A." in n or "classifier" in n for n, i in groups.items() if i == 0)

    sched = linear_schedule_with_warmup(opt, 2, 10)  # lr factors: 0, 1/2, 1, 7/8, ...
    rates = []
    for _ in range(6):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    factors = [0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8]
    for got, f in zip(rates, factors, strict=True):
        assert got == pytest.approx([1e-3 * f, 1e-3 * f, 16e-3 * f], rel=1e-12, abs=0.0)
    assert linear_schedule_with_warmup(build_optimizer(model, 1e-3, 0.01, 16.0), 0, 10).get_last_lr() == [
        1e-3, 1e-3, 16e-3
    ]  # fmt: skip


def test_without_loraplus_the_groups_are_the_decay_split_alone():
    from loratune.train.loop import build_optimizer

    model = _lora_bert()
    opt = build_optimizer(model, 1e-3, 0.01)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    groups = _group_of(opt, model)
    assert {n for n, i in groups.items() if i == 1} == {n for n in groups if n.endswith("bias")}
    assert build_optimizer(model, 1e-3, 0.01, None).state_dict() == opt.state_dict()


# ------------------------------------------------------------------ fp16 loss scaling
def _tiny_run(tmp_path, loss_fn, **config):
    from torch.utils.data import DataLoader

    from conftest import tiny_bert_cls
    from loratune import LoraConfig, add_lora
    from loratune.data.batching import LengthGroupedBatchSampler
    from loratune.tasks import Metric
    from loratune.train.loop import LoopConfig, train

    model = add_lora(
        tiny_bert_cls(num_labels=2), LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"])
    )
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 120, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(8)]  # fmt: skip
    loader = DataLoader(rows, batch_sampler=LengthGroupedBatchSampler([8] * 8, 4, shuffle=True),
                        collate_fn=lambda b: {k: torch.stack([r[k] for r in b]) for k in b[0]})  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = LoopConfig(epochs=1, flop_sample_every=0, warmup_ratio=0.0, **config)
    result = train(model, loader, config=cfg, device=torch.device("cpu"), precision="fp16", run_dir=tmp_path,
                   evaluate=lambda: {"accuracy": 0.5}, on_best=lambda r: None, metric=Metric("accuracy"),
                   loss_fn=loss_fn, resume=(tmp_path / "checkpoints").is_dir(), show_progress=False)  # fmt: skip
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    return result, changed


def test_fp16_skips_a_step_whose_gradients_overflow_and_checkpoints_the_scale(tmp_path):
    from loratune.train.checkpoint import latest_checkpoint

    calls = []

    def overflow_first(model, batch):
        calls.append(1)
        loss = model(**batch).loss
        return loss * float("inf") if len(calls) == 1 else loss

    result, changed = _tiny_run(tmp_path, overflow_first, max_steps=2, pause_at_step=1)
    assert result.skipped_steps == 1 and result.steps == 1 and changed == []  # the step was skipped
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())["extra"]["grad_scaler"]
    assert state["scale"] == 2.0**15  # halved from 2**16
    result, changed = _tiny_run(tmp_path, overflow_first, max_steps=2)  # resumed: a finite step
    assert result.steps == 2 and result.skipped_steps == 1 and changed
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["extra"]["grad_scaler"]["scale"] == 2.0**15  # restored, not reset to 2**16


def test_fp16_scaled_step_updates_like_an_unscaled_one(tmp_path):
    result, changed = _tiny_run(tmp_path, lambda model, batch: model(**batch).loss, max_steps=1)
    assert result.skipped_steps == 0 and len(changed) > 0
