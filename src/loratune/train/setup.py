"""A run's setup: its data, tokenizer and model, LoRA added (or every weight unfrozen), all checked before
the output folder is touched, so a user error never leaves a half-written run behind."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import loratune
from loratune.artifacts import base_fingerprint
from loratune.data.options import RECORDED, DataOptions
from loratune.device import resolve_device
from loratune.lora import ALL_LINEAR, LoraConfig
from loratune.lora.model import lora_layers
from loratune.models import (
    default_target_modules,
    hub_id,
    load_tokenizer,
    short_patterns,
    use_tokenizer_pad_id,
)
from loratune.prepare import DTYPES, Preparation, prepare_model
from loratune.tasks import Task, TaskData, get_task
from loratune.train.config import RunConfig, with_task
from loratune.train.precision import resolve_precision


@dataclass
class RunSetup:
    """Everything a run needs, built and checked before the output folder is touched."""

    cfg: RunConfig
    task: Task
    data: TaskData
    tokenizer: Any
    model: nn.Module
    device: torch.device
    precision: str
    fingerprint: str | None
    preparation: Preparation  # what prepare_model did to the model
    max_length: int  # --max-length, or the model's positions if fewer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def usable_max_length(requested: int, model: nn.Module, tokenizer: Any) -> int:
    """``requested``, or the model's number of positions if that is fewer (with a one-line warning).

    RoBERTa-style position embeddings reserve ``padding_idx + 1`` positions; a tokenizer may know a
    smaller limit (``model_max_length``).
    """
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    positions = next((m for n, m in model.named_modules() if n.endswith("position_embeddings")), None)
    if limits[0] and isinstance(positions, nn.Embedding) and positions.padding_idx is not None:
        limits[0] -= positions.padding_idx + 1
    limits.append(getattr(tokenizer, "model_max_length", None))
    limit = min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=None)
    if limit is None or requested <= limit:
        return requested
    print(
        f"warning: --max-length {requested} is more than the {limit} positions {type(model).__name__} has; "
        f"using {limit}",
        file=sys.stderr,
        flush=True,
    )
    return limit


def data_options(cfg: RunConfig) -> DataOptions:
    """The data options of ``cfg``, as ``Task.load_data`` takes them."""
    return DataOptions(**{name: getattr(cfg, name) for name in RECORDED})


def load_data(cfg: RunConfig) -> TaskData:
    """The train and eval data that ``cfg`` names (subsampled and split with its seed)."""
    cfg = with_task(cfg)
    return get_task(cfg.task).load_data(data_options(cfg))


def lora_config(cfg: RunConfig, task: Task, model: nn.Module) -> LoraConfig:
    """The adapter ``cfg`` asks for; the architecture's default targets when it names none."""
    return LoraConfig(
        r=cfg.r,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        target_modules=cfg.target_modules or default_target_modules(model.config.model_type, task.name),
        modules_to_save=task.modules_to_save(model),
        use_rslora=cfg.rslora,
        task_type=task.peft_task_type,
        base_model_name_or_path=hub_id(cfg.model),
    )


def all_linear_note(model: nn.Module, fallback: bool) -> str:
    """What ``all-linear`` adapted: ``all-linear targeted 12 layers: attention.self.query, ...``;
    ``fallback``: it was chosen because the architecture has no default targets."""
    paths = [path for path, _ in lora_layers(model)]
    why = f"no default LoRA targets for model type '{model.config.model_type}', so " if fallback else ""
    return f"{why}all-linear targeted {len(paths)} layers: {', '.join(short_patterns(paths))}"


def prepare(cfg: RunConfig, device: torch.device | None = None) -> RunSetup:
    """Load data, tokenizer and model; add LoRA (or unfreeze all for full fine-tuning).

    ``device``: this process's device (a distributed run's rank device); by default ``cfg.device``'s."""
    cfg = with_task(cfg)
    seed_everything(cfg.seed)
    device = device or resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    task = get_task(cfg.task)
    data = load_data(cfg)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = task.load_model(
        cfg.model,
        task.artifact_info(data),
        trust_remote_code=cfg.trust_remote_code,
        compute_dtype=DTYPES[precision],
        revision=cfg.revision,
    )
    use_tokenizer_pad_id(model, tokenizer)
    max_length = usable_max_length(cfg.max_length, model, tokenizer)
    fingerprint = base_fingerprint(model)
    adapter = lora_config(cfg, task, model) if cfg.method == "lora" else None
    prepare_model(
        model, adapter, precision=precision, kernels=cfg.kernels, gradient_checkpointing=cfg.gradient_checkpointing
    )
    model.to(device)
    done = loratune.preparation(model)
    for note in done.notes:
        print(f"note: {note}", flush=True)
    if adapter is not None and adapter.target_modules == ALL_LINEAR:
        print(f"note: {all_linear_note(model, cfg.target_modules is None)}", flush=True)
    return RunSetup(cfg, task, data, tokenizer, model, device, precision, fingerprint, done, max_length)
