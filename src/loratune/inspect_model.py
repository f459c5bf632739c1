"""``loratune inspect``: a model's linear layers and what LoRA would train on them, per task.

Nothing is downloaded but the config, and no weights are read: the model is built on the meta
device, so a 70B model costs no memory. The LoRA counts are the A and B matrices alone
(``r * (in + out)`` per targeted layer); the task head, which a run trains in full, is not counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from loratune.errors import ModelNotFoundError
from loratune.lora import LoraConfig
from loratune.lora.layer import in_out_features, is_linear
from loratune.lora.model import find_target_modules
from loratune.models import default_target_modules, layer_pattern, load_config
from loratune.tasks import TASKS, get_task


@dataclass
class LinearGroup:
    """The linear layers that share a name pattern (layer index as ``*``) and a shape."""

    pattern: str
    in_features: int
    out_features: int
    count: int


@dataclass
class TaskTargets:
    """A task's default LoRA targets and the LoRA parameters (A and B only) they would train."""

    task: str
    targets: list[str] | str | None  # None: transformers has no model of this architecture for the task
    layers: int = 0
    lora_params: int = 0
    note: str | None = None


@dataclass
class Inspection:
    """What ``loratune inspect`` reports about one model."""

    model: str
    model_type: str
    parameters: int  # the bare model's (no task head), each shared tensor once
    linear_layers: list[LinearGroup]
    r: int
    tasks: list[TaskTargets] = field(default_factory=list)
    head_counted: bool = False  # lora_params count the A and B matrices only, never the head


def linear_groups(model: nn.Module) -> list[LinearGroup]:
    """The model's linear layers grouped by ``layer_pattern`` and shape, in model order."""
    groups: dict[tuple[str, int, int], LinearGroup] = {}
    for path, module in model.named_modules():
        if is_linear(module):
            key = (layer_pattern(path), *in_out_features(module))
            groups.setdefault(key, LinearGroup(*key, count=0)).count += 1
    return list(groups.values())


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``, each shared (tied) tensor once."""
    return sum(p.numel() for p in model.parameters())


def _on_meta(class_name: str, config: Any, trust_remote_code: bool) -> nn.Module:
    """``transformers.<class_name>.from_config`` on the meta device: the modules, no memory for weights."""
    import transformers

    with torch.device("meta"):
        return getattr(transformers, class_name).from_config(config, trust_remote_code=trust_remote_code)


def task_targets(task: str, config: Any, r: int, trust_remote_code: bool = False) -> TaskTargets:
    """``task``'s default targets on ``config``'s architecture, as a run would resolve them (the task's own
    LoRA defaults first, e.g. token-cls's all-linear, then the architecture's table)."""
    spec = get_task(task)
    try:
        model = _on_meta(spec.auto_class, config, trust_remote_code)
    except ValueError:  # no such head for this architecture
        return TaskTargets(task, None, note=f"transformers has no {spec.auto_class} for {config.model_type}")
    own = spec.defaults.get("lora", {}).get("target_modules")
    targets = own or default_target_modules(config.model_type, task)
    note = "the task's default" if own else "no default for this type" if isinstance(targets, str) else None
    lora = LoraConfig(r=r, target_modules=targets, modules_to_save=spec.modules_to_save(model) or None)
    paths = find_target_modules(model, lora)
    shapes = [in_out_features(model.get_submodule(path)) for path in paths]
    return TaskTargets(task, targets, len(paths), sum(r * (i + o) for i, o in shapes), note=note)


def inspect_model(name: str, r: int = 8, *, revision: str | None = None, trust_remote_code: bool = False) -> Inspection:
    """Inspect ``name`` (alias, folder or hub id): its config only, the model built on the meta device."""
    config = load_config(name, trust_remote_code=trust_remote_code, revision=revision)
    try:
        bare = _on_meta("AutoModel", config, trust_remote_code)
    except ValueError as err:
        detail = (str(err).strip().splitlines() or ["ValueError"])[0]
        raise ModelNotFoundError(f"transformers cannot build model '{name}' ({detail}); pass another model") from None
    tasks = [task_targets(task, config, r, trust_remote_code) for task in TASKS]
    return Inspection(name, config.model_type, parameter_count(bare), linear_groups(bare), r, tasks)


def as_json(report: Inspection) -> str:
    """The report as one JSON object."""
    return json.dumps(asdict(report))


def format_inspection(report: Inspection) -> str:
    """The report as aligned text."""
    lines = [f"model        {report.model}", f"model type   {report.model_type}",
             f"parameters   {report.parameters:,} (the bare model, no task head)",
             "linear layers (in x out, count):"]  # fmt: skip
    shapes = [f"{g.in_features}x{g.out_features}" for g in report.linear_layers]
    width = max((len(g.pattern) for g in report.linear_layers), default=0)
    shape_width = max(map(len, shapes), default=0)
    for g, shape in zip(report.linear_layers, shapes, strict=True):
        lines.append(f"  {g.pattern.ljust(width)}  {shape.ljust(shape_width)}  x{g.count}")
    lines.append(f"default LoRA targets at r={report.r} (LoRA A and B parameters only; the task head is not counted):")
    for t in report.tasks:
        if t.targets is None:
            lines.append(f"  {t.task:<10} n/a: {t.note}")
            continue
        names = t.targets if isinstance(t.targets, str) else ", ".join(t.targets)
        names += f" ({t.note})" if t.note else ""
        lines.append(f"  {t.task:<10} {names:<30} {t.layers:>4} layers  {t.lora_params:>12,} params")
    return "\n".join(lines)
