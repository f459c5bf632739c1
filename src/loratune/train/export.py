"""What a run keeps: the adapter (or the full model) with its tokenizer and ``loratune.json``, written at each
best evaluation, and the test split scored once with those kept weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import loratune
from loratune.artifacts import TASK_FILE
from loratune.fsutil import atomic_dir, follow_umask
from loratune.lora import load_adapter, write_adapter
from loratune.models import hub_id
from loratune.train.distributed import Parallel
from loratune.train.evaluate import evaluate
from loratune.train.setup import RunSetup, data_options

ADAPTER_DIR, MODEL_DIR = "adapter", "model"


def artifact_dir(out: Path, method: str) -> Path:
    """Where a run in ``out`` keeps its weights: ``adapter/`` for LoRA, ``model/`` for full fine-tuning."""
    return out / (ADAPTER_DIR if method == "lora" else MODEL_DIR)


def without_matrix(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics`` without the confusion matrix (summary.json keeps the best one apart)."""
    return {k: v for k, v in (metrics or {}).items() if k != "confusion_matrix"}


def task_info(setup: RunSetup) -> dict[str, Any]:
    """What ``loratune.json`` records: enough to predict, and to re-evaluate on the same data."""
    cfg = setup.cfg
    return {
        "task": setup.task.name,
        "method": cfg.method,
        **setup.task.artifact_info(setup.data),
        "base_model": cfg.model,
        "base_model_hub_id": hub_id(cfg.model),
        "base_model_revision": cfg.revision,
        "base_model_fingerprint": setup.fingerprint,
        "max_length": setup.max_length,
        "data": data_options(cfg).record(),
        "loratune_version": loratune.__version__,
    }


def save_artifact(setup: RunSetup, out: Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write the adapter (or full model) with tokenizer and task info, atomically."""
    info = task_info(setup)
    if metrics is not None:
        info["metrics"] = without_matrix(metrics)
    target = artifact_dir(out, setup.cfg.method)
    with atomic_dir(target) as tmp:
        if setup.cfg.method == "lora":
            write_adapter(setup.model, tmp)
        else:
            setup.model.save_pretrained(tmp, safe_serialization=True)
            for weights in tmp.glob("*.safetensors"):
                follow_umask(weights)  # safetensors writes 0600; every other file follows the umask
        setup.tokenizer.save_pretrained(tmp)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return target


def test_kept(setup: RunSetup, out: Path, loader: DataLoader, parallel: Parallel) -> dict[str, Any]:
    """The eval split's metrics for the kept evaluation's weights (the saved artifact), scored once
    (every rank loads the artifact and scores its shard)."""
    if setup.cfg.method == "lora":
        load_adapter(setup.model, out / ADAPTER_DIR, adapter_name="kept")  # and make it the active one
    else:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted((out / MODEL_DIR).glob("*.safetensors")):
            state.update(load_file(shard, device=str(setup.device)))
        setup.model.load_state_dict(state, strict=False)  # tied weights are saved once
    metrics = setup.task.metrics(setup.data)
    return evaluate(setup.model, loader, metrics, device=setup.device, precision=setup.precision, parallel=parallel)
