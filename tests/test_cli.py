"""The `loratune` command end to end on a tiny local model: train, eval, predict, resume, bad input."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import lock_held_elsewhere, toy_rows, write_csv
from helpers import one_line_error, run, train_args
from loratune.host_memory import supported


def test_train_all_option_groups_then_eval_and_predict(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        train_args(
            tiny_model_dir, toy_data, out,
            "--epochs", "3", "--grad-accum", "2", "--weight-decay", "0.0", "--warmup-ratio", "0.2",
            "--dropout", "0.05", "--target-modules", "query,key,value", "--rslora", "--seed", "7",
            "--eval-every", "4", "--save-every", "3", "--early-stopping-patience", "5",
            "--text-column", "text", "--label-column", "label", "--train-size", "80", "--eval-size", "30",
            "--log-every", "2", "--report-to", "tensorboard",
        ),
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "accuracy (best)" in stdout and "trainable params" in stdout
    adapter = out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "loratune.json", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] == ["key", "query", "value"] and config["use_rslora"] is True
    assert config["r"] == 4 and config["lora_dropout"] == 0.05 and config["modules_to_save"]
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in keys
    info = json.loads((adapter / "loratune.json").read_text())
    assert info["labels"] == ["negative", "positive"]

    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "final",
        "best",
        "wall_seconds",
        "examples_per_s",
        "peak_memory_bytes",
        "trainable_params",
        "total_params",
        "artifact_bytes",
        "precision",
        "device",
        "environment",
    ):
        assert key in summary
    assert summary["train_examples"] == 80 and summary["eval_examples"] == 30
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0  # learning is checked on real weights below
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    steps_per_epoch = 5  # 10 batches of 8, accumulated by 2
    assert [r["step"] for r in evals] == [4, 5, 8, 10, 12, 15]  # every 4 steps and at each epoch end
    assert all(r["type"] in ("train", "eval") for r in records)
    assert max(r["step"] for r in records) == 3 * steps_per_epoch
    assert (out / "curves.png").stat().st_size > 1000
    assert len(list((out / "checkpoints").iterdir())) == 2  # pruned to the newest two
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("eval/accuracy")] == [r["step"] for r in evals]
    assert {"train/loss", "train/lr", "train/examples_per_s", "eval/loss", "eval/macro_f1"} <= set(
        board.Tags()["scalars"]
    )

    code, stdout, err = run(["eval", "--adapter", str(adapter)], capsys)
    assert code == 0, err
    assert f"accuracy  {summary['test']['accuracy']:.4f}" in stdout  # the test split, scored as the run scored it
    assert "true \\ pred" in stdout
    code, stdout, _ = run(["eval", "--adapter", str(adapter), "--json"], capsys)
    assert json.loads(stdout)["accuracy"] == pytest.approx(summary["test"]["accuracy"])

    code, stdout, _ = run(["predict", "--adapter", str(adapter), "a wonderful superb film", "awful dull"], capsys)
    lines = stdout.splitlines()
    assert code == 0 and len(lines) == 2
    assert all(
        re.match(r'^(positive|negative) \(0\.\d{3}\)  \[negative 0\.\d{3} \| positive 0\.\d{3}\]  "', x) for x in lines
    )
    texts = tmp_path / "texts.txt"
    texts.write_text("great fun\n\nterrible plot\n")
    code, stdout, err = run(["predict", "--adapter", str(adapter), "--file", str(texts), "--json"], capsys)
    preds = [json.loads(line) for line in stdout.splitlines()]
    assert [(p["line"], p["text"]) for p in preds] == [(1, "great fun"), (2, ""), (3, "terrible plot")]
    assert err == f"warning: line 2 of {texts} is empty; its prediction is for an empty text\n"
    assert set(preds[0]["probs"]) == {"negative", "positive"} and sum(preds[0]["probs"].values()) == pytest.approx(1)


def test_minilm_lora_learns_toy_sentiment(toy_data, tmp_path, capsys):
    """Real pretrained weights (the packaged MiniLM): LoRA must learn a one-word sentiment rule."""
    out = tmp_path / "minilm"
    code, stdout, err = run(
        ["train", "--dataset", str(toy_data), "--output", str(out), "--max-length", "32", "--batch-size", "8",
         "--epochs", "2", "--lr", "2e-3", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "minilm" and summary["trainable_params"] == 74_498  # q,v r=8 + head
    assert summary["best"]["accuracy"] >= 0.8
    code, stdout, _ = run(["predict", "--adapter", str(out / "adapter"), "--json", "a wonderful superb film",
                           "the plot was awful and dull"], capsys)  # fmt: skip
    assert [json.loads(x)["label"] for x in stdout.splitlines()] == ["positive", "negative"]


def test_full_finetuning_writes_model_and_evaluates(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "full"
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--method", "full", "--epochs", "1",
                                       "--lr", "1e-3"), capsys)  # fmt: skip
    assert code == 0, err
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()
    from loratune.fsutil import umask

    assert (out / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask()  # not safetensors' 0600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"]
    assert summary["frozen_linears_in_compute_dtype"] == 0  # nothing is frozen
    code, _, err = run(["predict", "--adapter", str(out / "model"), "superb"], capsys)
    assert code == 0, err
    # the test split was scored once with the kept model, as eval scores the saved model
    code, stdout, err = run(["eval", "--adapter", str(out / "model"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)


def test_padded_baseline_options_count_more_flops(tiny_model_dir, toy_data, tmp_path, capsys):
    """--padding max_length --no-group-by-length --kernels torch: the padded baseline of the benchmarks."""
    summaries = {}
    for name, extra in {
        "default": (),
        "padded": ("--padding", "max_length", "--no-group-by-length", "--kernels", "torch", "--no-malloc-tuning"),
    }.items():
        out = tmp_path / name
        code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--epochs", "1", *extra), capsys)
        assert code == 0, err
        summaries[name] = json.loads((out / "summary.json").read_text())
    default, padded = summaries["default"], summaries["padded"]
    assert default["kernels"] == "lean" and padded["kernels"] == "torch"
    assert default["freed_memory_kept"] is supported() and padded["freed_memory_kept"] is False
    assert default["first_token_layer"] is True and padded["first_token_layer"] is False  # a BERT classifier
    for s in summaries.values():  # auto precision: bf16 where native, and then the frozen linears in bf16
        assert (s["frozen_linears_in_compute_dtype"] > 0) is (s["precision"] == "bf16")
    assert padded["config"]["padding"] == "max_length" and padded["config"]["group_by_length"] is False
    assert padded["tokens_seen"] == default["tokens_seen"]  # the same real tokens...
    assert padded["model_flops"] > 1.5 * default["model_flops"] > 0  # ...padded to 32 costs more
    for s in summaries.values():
        assert s["matmul_peak_flops_per_s"] > 0 and 0 < s["mfu"] < 1.5


def test_recipe_with_flag_override(tiny_model_dir, toy_data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndataset: {toy_data}\nmax-length: 32\nepochs: 1\nr: 2\n"
                      "precision: fp32\nprogress: false\n")  # fmt: skip
    out = tmp_path / "run"
    code, _, err = run(["train", "--config", str(recipe), "--r", "3", "--output", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 3
    assert json.loads((out / "run_config.json").read_text())["epochs"] == 1
    (out / "stale.txt").write_text("from an older run")
    code, _, err = run(["train", "--config", str(recipe), "--r", "2", "--output", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2
    recipe.write_text("modle: x\n")
    code, _, err = run(["train", "--config", str(recipe)], capsys)
    assert code == 2 and "unknown option 'modle'" in err


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_interrupt_and_resume_equals_uninterrupted_run(tiny_model_dir, toy_data, tmp_path, capsys, monkeypatch):
    args = ("--epochs", "2", "--dropout", "0.1", "--eval-every", "5")
    whole = tmp_path / "whole"
    assert run(train_args(tiny_model_dir, toy_data, whole, *args), capsys)[0] == 0

    # Ctrl-C at the 7th optimizer step (mid-epoch 1): the loop checkpoints and exits with 130.
    import loratune.train.loop as loop

    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip_then_sigint(params, max_norm):
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)
        return real_clip(params, max_norm)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", clip_then_sigint)
    parted = tmp_path / "parted"
    code, _, err = run(train_args(tiny_model_dir, toy_data, parted, *args), capsys)
    assert code == 130
    assert "checkpoint saved at step 7/22" in err and "--resume" in err  # 86 rows (10 validation), batch 8: 11 steps
    monkeypatch.undo()

    code, _, err = run(train_args(tiny_model_dir, toy_data, parted, *args, "--resume"), capsys)
    assert code == 0, err
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((parted / "summary.json").read_text())
    assert b["resumed_from_step"] == 7
    assert a["final"]["accuracy"] == b["final"]["accuracy"] and a["best"]["step"] == b["best"]["step"]
    assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], rel=1e-5)
    ta, tb = _adapter_tensors(whole), _adapter_tensors(parted)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-5, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (parted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(x)["step"] for x in (whole / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "make,extra,needles",
    [
        (lambda d: write_csv(d / "t.csv", toy_rows(20)), ["--text-column", "body"], ["'body'", "text, label"]),
        (lambda d: write_csv(d / "t.csv", []), [], ["has no rows"]),
        (lambda d: write_csv(d / "t.csv", [(t, "positive") for t, _ in toy_rows(20)]), [], ["single class"]),
        (
            lambda d: (d / "t.csv").write_text('text,label\n"a",positive\n"b",\n"c",negative\n' * 5),
            [],
            ["5 of 19 rows", "no label"],
        ),
        (lambda d: (d / "t.csv").write_bytes(b"\x00\x01\x02garbage"), [], ["t.csv"]),
    ],
    ids=["unknown-column", "empty", "single-class", "missing-labels", "unreadable"],
)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(
    make, extra, needles, tiny_model_dir, tmp_path, capsys
):  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    out = tmp_path / "out"
    code, _, err = run(train_args(tiny_model_dir, data / "t.csv", out, *extra), capsys)
    one_line_error(code, err, *needles)
    assert not out.exists()


def test_bad_run_options(tiny_model_dir, toy_data, tmp_path, capsys):
    code, _, err = run(train_args(tmp_path / "no-such-model", toy_data, tmp_path / "o"), capsys)
    one_line_error(code, err, "does not exist", "minilm")
    code, _, err = run(train_args("not-a-cached/hub-model", toy_data, tmp_path / "o"), capsys)
    one_line_error(code, err, "minilm")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, _, err = run(train_args(tiny_model_dir, toy_data, busy), capsys)
    one_line_error(code, err, "not empty", "--overwrite", "--resume")
    assert (busy / "keep.txt").read_text() == "mine"
    code, _, err = run(train_args(tiny_model_dir, toy_data, busy, "--overwrite"), capsys)
    one_line_error(code, err, "not a loratune run folder", "new or empty folder")
    assert (busy / "keep.txt").read_text() == "mine"
    code, _, err = run(train_args(tiny_model_dir, toy_data, tmp_path / "fresh", "--resume"), capsys)
    one_line_error(code, err, "no checkpoint", "drop --resume")
    code, _, err = run(train_args(tiny_model_dir, toy_data, tmp_path / "o", "--r", "0"), capsys)
    one_line_error(code, err, "--r must be >= 1")


def test_adapter_from_another_base_model_is_refused(trained_run, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    out = shutil.copytree(trained_run.folder, tmp_path / "run")  # its loratune.json is edited below
    same_shape = tmp_path / "same-shape"  # same architecture, other weights
    torch.manual_seed(99)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(same_shape)  # fmt: skip
    code, _, err = run(["predict", "--adapter", str(out / "adapter"), "--model", str(same_shape), "x"], capsys)
    one_line_error(code, err, "different model", "--model")
    wider = tmp_path / "wider"
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(wider)  # fmt: skip
    code, _, err = run(["eval", "--adapter", str(out / "adapter"), "--model", str(wider)], capsys)
    one_line_error(code, err, "different model")
    # Without the fingerprint (e.g. an adapter saved by PEFT), the shape check names key and shapes.
    info_file = out / "adapter" / "loratune.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "base_model_fingerprint": None}))
    code, _, err = run(["eval", "--adapter", str(out / "adapter"), "--model", str(wider)], capsys)
    one_line_error(code, err, "lora_A.weight", "(4, 32)", "(4, 48)")
    code, _, err = run(["predict", "--adapter", str(out), "x"], capsys)
    one_line_error(code, err, "adapter/ subfolder")


def test_pause_then_resume_runs_the_same_schedule(tiny_model_dir, toy_data, tmp_path, capsys, monkeypatch):
    """--pause-at-step stops with the whole schedule kept; --resume continues to the same weights."""
    args = ("--epochs", "2", "--dropout", "0.1")
    whole = tmp_path / "whole"
    assert run(train_args(tiny_model_dir, toy_data, whole, *args), capsys)[0] == 0
    parted = tmp_path / "parted"
    import loratune.train.loop as loop

    saved, real_save = [], loop.save_checkpoint
    monkeypatch.setattr(
        loop, "save_checkpoint", lambda folder, **kw: saved.append(kw["step"]) or real_save(folder, **kw)
    )
    code, _, err = run(train_args(tiny_model_dir, toy_data, parted, *args, "--pause-at-step", "7"), capsys)
    assert code == 0, err
    assert saved == [7]  # mid-epoch: one checkpoint, written after the evaluation at the pause
    monkeypatch.undo()
    paused = json.loads((parted / "summary.json").read_text())
    assert paused["paused"] is True and paused["final"]["step"] == 7  # evaluated where it paused
    code, _, err = run(train_args(tiny_model_dir, toy_data, parted, *args, "--resume"), capsys)
    assert code == 0, err
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((parted / "summary.json").read_text())
    assert b["paused"] is False and b["resumed_from_step"] == 7 and b["final"]["step"] == a["final"]["step"]
    # the same training: the final weights evaluate alike (the saved best adapter may differ, since
    # the paused run was also evaluated at step 7)
    assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], rel=1e-5)
    assert a["final"]["accuracy"] == b["final"]["accuracy"]


# ------------------------------------------------------------------ one writer per run folder; honest resumes
def test_a_second_run_into_a_locked_folder_stops_at_once(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    with lock_held_elsewhere(out) as pid:
        code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--epochs", "1"), capsys)
        one_line_error(code, err, f"--output {out} is in use by another loratune command (pid {pid})")
        assert [p.name for p in out.iterdir()] == [".loratune.lock"]  # nothing of the refused run
    # the holder is gone: its lock went with it, and the lock file left behind is harmless
    assert run(train_args(tiny_model_dir, toy_data, out, "--epochs", "1"), capsys)[0] == 0


def test_a_refused_run_leaves_no_folder_behind(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    code, _, err = run(train_args(tiny_model_dir, tmp_path / "missing.csv", out), capsys)
    one_line_error(code, err, "missing.csv")
    assert not out.exists()


def test_resume_refuses_changed_options_and_writes_nothing(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_args(tiny_model_dir, toy_data, out, "--epochs", "2", "--pause-at-step", "3"), capsys)[0] == 0
    saved = (out / "run_config.json").read_text()
    files = sorted(p.name for p in out.rglob("*"))
    for extra, needles in [
        (("--r", "2"), ["--r 4 -> 2"]),
        (("--lr", "1e-3", "--train-size", "50"), ["--train-size (unset) -> 50", "--lr 0.005 -> 0.001"]),
        (("--eval-size", "10", "--seed", "3"), ["--eval-size (unset) -> 10", "--seed 42 -> 3"]),
        (("--max-steps", "2",), ["--max-steps (unset) -> 2"]),  # lowered below the schedule
    ]:  # fmt: skip
        code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--epochs", "2", "--resume", *extra), capsys)
        line = one_line_error(code, err, "--resume cannot change the options", "--overwrite", *needles)
        assert "--eval-every" in line  # it lists what may change
        assert (out / "run_config.json").read_text() == saved and sorted(p.name for p in out.rglob("*")) == files
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--epochs", "2", "--resume", "--eval-every", "2",
                                  "--log-every", "1"), capsys)  # fmt: skip
    assert code == 0, err


def test_resume_may_raise_max_steps_and_the_schedule_stretches(tiny_model_dir, toy_data, tmp_path, capsys):
    from loratune.train.logging import read_metrics

    out = tmp_path / "run"
    args = ("--epochs", "3", "--warmup-ratio", "0", "--log-every", "1")
    assert run(train_args(tiny_model_dir, toy_data, out, *args, "--max-steps", "4"), capsys)[0] == 0
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, *args, "--max-steps", "8", "--pause-at-step", "5",
                                  "--resume"), capsys)  # fmt: skip
    assert code == 0, err
    lrs = {r["step"]: r["lr"] for r in read_metrics(out, kind="train")}
    assert lrs[4] == 0.0 and lrs[5] == pytest.approx(5e-3 * (8 - 5) / 8)  # after each step: the next one's rate
    # step 5 ran at the 8-step schedule's rate (4/8 of 5e-3), not at the first schedule's final 0: it moved
    before, after = (load_file(str(out / "checkpoints" / f"step-00000{s}" / "weights.safetensors")) for s in (4, 5))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_max_length_above_the_model_s_positions_is_clamped_with_a_warning(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, "--epochs", "1", "--max-length", "1024"), capsys)
    assert code == 0, err
    assert (
        "warning: --max-length 1024 is more than the 128 positions BertForSequenceClassification has; using 128" in err
    )
    assert json.loads((out / "adapter" / "loratune.json").read_text())["max_length"] == 128


def test_without_a_separate_test_split_the_summary_says_so(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(train_args(tiny_model_dir, toy_data / "train.csv", out, "--epochs", "1"), capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"] is None and summary["val_examples"] is None
    assert "which is also the one reported" in summary["selection"] and "--val-size" in summary["selection"]
    assert "best chosen on      the eval split" in stdout


def test_all_linear_run_notes_the_layers_it_targeted(tiny_model_dir, toy_data, tmp_path, capsys, monkeypatch):
    """all-linear prints one note line with the layer names; as the fallback for an architecture without
    default targets it says so (here the default is replaced to stand for an unknown model type)."""
    small = ("--epochs", "1", "--train-size", "16", "--eval-size", "8")
    code, stdout, err = run(train_args(tiny_model_dir, toy_data, tmp_path / "a", *small, "--target-modules",
                                       "all-linear"), capsys)  # fmt: skip
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if "all-linear" in line]
    assert notes == [
        "note: all-linear targeted 13 layers: attention.self.query, attention.self.key, attention.self.value, "
        "attention.output.dense, intermediate.dense, output.dense, bert.pooler.dense"
    ]  # 6 per layer and the pooler; never the classifier
    asked = []
    monkeypatch.setattr("loratune.train.setup.default_target_modules", lambda *a: asked.append(a) or "all-linear")
    code, stdout, err = run(train_args(tiny_model_dir, toy_data, tmp_path / "b", *small), capsys)
    assert code == 0, err
    assert asked == [("bert", "seq-cls")]
    assert [line for line in stdout.splitlines() if "all-linear" in line] == [
        notes[0].replace("note: ", "note: no default LoRA targets for model type 'bert', so ")
    ]


def _group_rates(run_dir: Path) -> list[tuple[float, float]]:
    """(lr, initial_lr) of each optimizer group in the newest checkpoint of ``run_dir``."""
    from loratune.train.checkpoint import latest_checkpoint

    groups = json.loads((latest_checkpoint(run_dir) / "optimizer.json").read_text())["param_groups"]
    return [(g["lr"], g["initial_lr"]) for g in groups]


def test_loraplus_ratio_survives_pause_and_resume(tiny_model_dir, toy_data, tmp_path, capsys):
    """The B group keeps K times the rate through warm-up, decay and a resume; summary.json records K."""
    out = tmp_path / "run"
    args = ("--epochs", "2", "--train-size", "48", "--warmup-ratio", "0.2", "--loraplus-ratio", "16")
    assert run(train_args(tiny_model_dir, toy_data, out, *args, "--pause-at-step", "2"), capsys)[0] == 0
    paused = _group_rates(out)  # 12 steps, 3 of warm-up: paused in the warm-up
    assert [initial for _, initial in paused] == [5e-3, 5e-3, 16 * 5e-3]  # A and head, biases, B
    assert paused[0][0] == pytest.approx(5e-3 * 2 / 3) and paused[2][0] == pytest.approx(16 * 5e-3 * 2 / 3)
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, *args[:-1], "8", "--resume"), capsys)
    one_line_error(code, err, "--resume cannot change", "--loraplus-ratio 16 -> 8")
    code, _, err = run(train_args(tiny_model_dir, toy_data, out, *args, "--resume", "--pause-at-step", "9"), capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loraplus_ratio"] == 16 and summary["config"]["loraplus_ratio"] == 16 and summary["steps"] == 9
    rates = _group_rates(out)  # decaying: step 9 of 12
    assert rates[0][0] == pytest.approx(5e-3 * 3 / 9) and rates[2][0] == pytest.approx(16 * 5e-3 * 3 / 9)


def test_the_summary_ends_with_the_runs_warning_when_it_learned_nothing():
    from loratune.cli import format_summary

    summary = {
        "title": "t",
        "metric": "f1",
        "train_examples": 8,
        "eval_examples": 2,
        "best": {"f1": 0.0, "epoch": 1.0},
        "final": {"f1": 0.0},
        "trainable_params": 1,
        "total_params": 2,
        "trainable_percent": 50.0,
        "train_seconds": 1.0,
        "examples_per_s": 8.0,
        "wall_seconds": 2.0,
        "peak_memory_bytes": 1 << 20,
        "precision": "fp32",
        "device": "cpu",
        "artifact": "a",
        "weights_bytes": 10,
    }
    assert "warning" not in format_summary(summary, ["f1"])
    lines = format_summary({**summary, "warning": "every evaluation's entity F1 was 0.0"}, ["f1"]).splitlines()
    assert lines[-1] == "warning: every evaluation's entity F1 was 0.0"
