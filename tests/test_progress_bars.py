"""Download bars stay on; per-item processing bars (datasets' map, transformers' weight loading) go off."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stderr
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from huggingface_hub.utils import are_progress_bars_disabled
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from loratune.cli import _quiet_libraries
from loratune.models import load_model_for_sequence_classification

DATASETS_TQDM = importlib.import_module("datasets.utils.tqdm")  # the module, which its tqdm class shadows
HUB_TQDM = importlib.import_module("huggingface_hub.utils.tqdm")
DOWNLOAD_BARS = ("huggingface_hub.http_get", "huggingface_hub.xet_get", "huggingface_hub.snapshot_download")


@pytest.fixture
def restore_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from the libraries' default bar settings (all on); put the previous ones back afterwards."""
    monkeypatch.setattr(DATASETS_TQDM, "_hf_datasets_progress_bars_disabled", False)
    monkeypatch.setattr(HUB_TQDM, "progress_bar_states", {})
    monkeypatch.setattr(hf_logging, "_tqdm_hook", None)
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)


def transformers_bar_is_drawn() -> bool:
    return not isinstance(hf_logging.tqdm(range(2)), hf_logging.EmptyTqdm)


def test_cli_setup_keeps_download_bars(restore_bars) -> None:
    _quiet_libraries()
    assert not any(are_progress_bars_disabled(name) for name in DOWNLOAD_BARS)
    assert DATASETS_TQDM.are_progress_bars_disabled()
    assert not transformers_bar_is_drawn()
    err = io.StringIO()
    with redirect_stderr(err):
        datasets.Dataset.from_dict({"x": list(range(5))}).map(lambda r: r, desc="Tokenising")
    assert "Tokenising" not in err.getvalue()


def test_model_loading_keeps_download_bars(restore_bars, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)).save_pretrained(
        tmp_path
    )
    seen: list[tuple[bool, bool]] = []
    load = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.append((any(are_progress_bars_disabled(name) for name in DOWNLOAD_BARS), transformers_bar_is_drawn()))
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    assert transformers_bar_is_drawn()
    load_model_for_sequence_classification(str(tmp_path), 2)
    assert seen == [(False, False)]  # downloads drawn, "Loading weights" not
    assert transformers_bar_is_drawn()  # the hook is put back
