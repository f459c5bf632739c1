"""Decoder classifiers find each row's last real token by the pad id: it must be the tokenizer's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import save_tiny_llama
from loratune.artifacts import load_artifact
from loratune.cli import main
from loratune.tasks.seq_cls import predict_proba

SHORT, LONG = "a good film", "the movie was really quite a film and the plot was boring"


@pytest.fixture(scope="module")
def own_pad_llama(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer pads with a token of its own, not EOS (config: no pad id)."""
    return save_tiny_llama(tmp_path_factory.mktemp("own-pad-llama"), dtype=torch.float32)


def _padded_and_alone(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities of SHORT padded to LONG's length in a batch, and of SHORT alone (no padding)."""
    padded = predict_proba(model, tokenizer, [SHORT, LONG])[0]
    alone = predict_proba(model, tokenizer, [SHORT])[0]
    return torch.from_numpy(padded), torch.from_numpy(alone)


def test_training_and_an_artifact_classify_a_padded_row_as_the_unpadded_one(own_pad_llama, toy_data, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", str(own_pad_llama), "--dataset", str(toy_data), "--output", str(out),
            "--max-length", "32", "--max-steps", "2", "--precision", "fp32", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    loaded = load_artifact(out / "adapter")
    tokenizer = loaded.tokenizer
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.padding_side == "right"
    padded, alone = _padded_and_alone(loaded.model, tokenizer)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    assert loaded.model.config.pad_token_id == tokenizer.pad_token_id


def test_the_training_model_pads_as_its_tokenizer(own_pad_llama, toy_data):
    from loratune.train.config import build_config
    from loratune.train.setup import prepare

    prep = prepare(build_config(model=str(own_pad_llama), dataset=str(toy_data), precision="fp32", max_length=32))
    padded, alone = _padded_and_alone(prep.model, prep.tokenizer)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    assert prep.model.config.pad_token_id == prep.tokenizer.pad_token_id != prep.tokenizer.eos_token_id
