"""The real data in ../shared/data goes through the same local-file path users take.

A tiny step budget on a tiny model: this checks loading, columns, labels and the whole run, not
accuracy. Skipped when ../shared is absent.
"""

from __future__ import annotations

import json

import pytest
import torch

from loratune.cli import main


@pytest.mark.parametrize(
    "folder,labels,text_column",
    [("imdb", ["0", "1"], "text"), ("sst2", ["0", "1"], "sentence")],
)
def test_train_two_steps_on_real_data(shared_data, tiny_model_dir, tmp_path, folder, labels, text_column):
    out = tmp_path / folder
    code = main([
        "train", "--model", str(tiny_model_dir), "--dataset", str(shared_data / folder), "--output", str(out),
        "--train-size", "64", "--eval-size", "32", "--max-steps", "2", "--max-length", "64", "--batch-size", "8",
        "--precision", "fp32", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_examples"] == 64 and summary["eval_examples"] == 32
    assert summary["labels"] == labels
    info = json.loads((out / "adapter" / "loratune.json").read_text())
    assert info["labels"] == labels


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    from conftest import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-lm"), dtype=torch.float32)


@pytest.mark.parametrize(
    "name,kind,extra",
    [("instruction-data.json", "instruction", ["--train-size", "935", "--eval-size", "110"]),
     ("tiny_shakespeare.txt", "text", ["--eval-size", "50"])],
)  # fmt: skip
def test_causal_lm_two_steps_on_real_data(shared_data, tiny_lm_dir, tmp_path, name, kind, extra):
    out = tmp_path / "lm"
    code = main([
        "train", "--task", "causal-lm", "--model", str(tiny_lm_dir), "--train-file", str(shared_data / "lm" / name),
        "--output", str(out), "--max-steps", "2", "--max-length", "64", "--batch-size", "8", "--precision", "fp32",
        "--target-modules", "q_proj,v_proj", "--no-progress", *extra,
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["metric"] == "perplexity" and summary["best"]["tokens"] > 0
    info = json.loads((out / "adapter" / "loratune.json").read_text())
    assert info["data_format"] == kind
    if kind == "instruction":
        assert summary["train_examples"] == 935 and summary["eval_examples"] == 110
