import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from loratune.errors import RunError
from loratune.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

WARMUP, TOTAL = 3, 20


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the "pretrained" base is the same in every process
    model = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 16), nn.Dropout(0.2), nn.Linear(16, 3)
    )
    model[0].requires_grad_(False)  # frozen part, like a LoRA base weight
    return model


def make_opt(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / WARMUP, max(0.0, (TOTAL - s) / (TOTAL - WARMUP)))
    )
    return opt, sched


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train_steps(model, opt, sched, n):
    model.train()
    for _ in range(n):
        # data depends on torch, numpy and python RNGs, so all three must be restored
        x = torch.randn(8, 6) + float(np.random.rand()) + random.random()
        y = torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def seed_all(s):
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


def test_resume_is_bit_exact(tmp_path):
    model = make_model()
    opt, sched = make_opt(model)
    seed_all(1)
    train_steps(model, opt, sched, 4)
    folder = checkpoint_dir(tmp_path, 4)
    save_checkpoint(
        folder,
        trainable_state=trainable(model),
        optimizer=opt,
        scheduler=sched,
        step=4,
        epoch=1,
        batch_in_epoch=2,
        extra={"best_accuracy": 0.5, "note": "x"},
    )
    train_steps(model, opt, sched, 6)
    expected = {k: v.detach().clone() for k, v in trainable(model).items()}
    expected_lr = sched.get_last_lr()

    fresh = make_model()
    with torch.no_grad():
        for p in trainable(fresh).values():
            p.normal_()  # prove the checkpoint overrides the fresh init
    opt2, sched2 = make_opt(fresh)
    seed_all(12345)
    state = load_checkpoint(folder, opt2, sched2)
    assert (state.step, state.epoch, state.batch_in_epoch) == (4, 1, 2)
    assert state.extra == {"best_accuracy": 0.5, "note": "x"}
    with torch.no_grad():
        for name, p in trainable(fresh).items():
            p.copy_(state.trainable_state[name])
    train_steps(fresh, opt2, sched2, 6)
    for name, p in trainable(fresh).items():
        assert torch.equal(p, expected[name]), name
    assert sched2.get_last_lr() == expected_lr
    # optimizer non-tensor structure round-trips with its Python types
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


def test_checkpoint_files_follow_the_umask(tmp_path, umask):
    model = make_model()
    opt, sched = make_opt(model)
    train_steps(model, opt, sched, 1)
    args = {"optimizer": opt, "scheduler": sched, "step": 1, "epoch": 0, "batch_in_epoch": 1}
    folder = save_checkpoint(tmp_path / "c", trainable_state=trainable(model), **args)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert "weights.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_checkpoint_is_pickle_free(tmp_path):
    model = make_model()
    opt, sched = make_opt(model)
    train_steps(model, opt, sched, 1)
    folder = save_checkpoint(
        tmp_path / "c",
        trainable_state=trainable(model),
        optimizer=opt,
        scheduler=sched,
        step=1,
        epoch=0,
        batch_in_epoch=1,
        extra={},
    )
    names = sorted(p.name for p in folder.iterdir())
    assert all(n.endswith((".json", ".safetensors")) for n in names), names
    for n in names:
        assert not (folder / n).read_bytes().startswith(b"\x80"), n  # pickle protocol marker
    from safetensors.torch import load_file

    opt_tensors = load_file(folder / "optimizer.safetensors")
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(opt_tensors)
    ts = json.loads((folder / "trainer_state.json").read_text())
    assert ts["step"] == 1 and "loratune_version" in ts and "time" in ts


def _save(tmp_path, step, folder=None):
    model = make_model()
    opt, sched = make_opt(model)
    train_steps(model, opt, sched, 1)
    return (
        save_checkpoint(
            folder or checkpoint_dir(tmp_path, step),
            trainable_state=trainable(model),
            optimizer=opt,
            scheduler=sched,
            step=step,
            epoch=0,
            batch_in_epoch=step,
            extra={},
        ),
        opt,
        sched,
    )


@pytest.mark.parametrize(
    "damage",
    ["delete_weights", "truncate_optimizer", "flip_byte", "delete_state", "garbage_state"],
)
def test_corrupt_checkpoint_raises_run_error(tmp_path, damage):
    folder, _, _ = _save(tmp_path, 1)
    if damage == "delete_weights":
        (folder / "weights.safetensors").unlink()
    elif damage == "truncate_optimizer":
        p = folder / "optimizer.safetensors"
        p.write_bytes(p.read_bytes()[:20])
    elif damage == "flip_byte":
        p = folder / "weights.safetensors"
        b = bytearray(p.read_bytes())
        b[-1] ^= 0xFF
        p.write_bytes(bytes(b))
    elif damage == "delete_state":
        (folder / "trainer_state.json").unlink()
    elif damage == "garbage_state":
        (folder / "trainer_state.json").write_text("{not json")
    model = make_model()
    opt, sched = make_opt(model)
    before = torch.get_rng_state()
    with pytest.raises(RunError) as e:
        load_checkpoint(folder, opt, sched)
    msg = str(e.value)
    assert str(folder) in msg and "\n" not in msg
    assert opt.state_dict()["state"] == {}  # nothing restored
    assert torch.equal(torch.get_rng_state(), before)


def test_missing_folder_and_mismatched_optimizer(tmp_path):
    model = make_model()
    opt, sched = make_opt(model)
    with pytest.raises(RunError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", opt, sched)
    folder, _, _ = _save(tmp_path, 1)
    other = nn.Linear(3, 3)
    opt_other = torch.optim.AdamW([other.weight], lr=1e-3)
    with pytest.raises(RunError, match="does not fit"):
        load_checkpoint(folder, opt_other, None)


def test_unserialisable_extra_leaves_nothing(tmp_path):
    model = make_model()
    opt, sched = make_opt(model)
    with pytest.raises(TypeError):
        save_checkpoint(
            checkpoint_dir(tmp_path, 1),
            trainable_state=trainable(model),
            optimizer=opt,
            scheduler=sched,
            step=1,
            epoch=0,
            batch_in_epoch=0,
            extra={"f": object()},
        )
    assert latest_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20, 1000000):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "step-000999").mkdir()  # incomplete: no trainer_state.json
    (tmp_path / "checkpoints" / ".step-002000.tmp-deadbeef").mkdir()  # crashed save
    assert checkpoint_dir(tmp_path, 123).name == "step-000123"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 20, 100, 1000000]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1000000"
    removed = prune_checkpoints(tmp_path, keep=2)
    assert len(removed) == 3
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step-000100", "step-000999", "step-1000000"]


def test_without_rng_restore_resume_differs(tmp_path):
    """Control for test_resume_is_bit_exact: the RNG state really matters for the continuation."""
    model = make_model()
    opt, sched = make_opt(model)
    seed_all(1)
    train_steps(model, opt, sched, 2)
    folder = save_checkpoint(
        tmp_path / "c",
        trainable_state=trainable(model),
        optimizer=opt,
        scheduler=sched,
        step=2,
        epoch=0,
        batch_in_epoch=2,
    )
    train_steps(model, opt, sched, 2)
    fresh = make_model()
    opt2, sched2 = make_opt(fresh)
    seed_all(7)
    state = load_checkpoint(folder, opt2, sched2, restore_rng=False)
    with torch.no_grad():
        for name, p in trainable(fresh).items():
            p.copy_(state.trainable_state[name])
    train_steps(fresh, opt2, sched2, 2)
    assert not all(torch.equal(p, q) for p, q in zip(trainable(fresh).values(), trainable(model).values(), strict=True))
