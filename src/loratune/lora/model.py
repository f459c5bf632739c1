"""Putting LoRA into a model and managing its adapters: add, switch, merge, mix, count.

All functions work in place on any ``nn.Module``; they know nothing of transformers beyond duck
typing (``get_output_embeddings``, ``config.name_or_path``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from loratune.errors import AdapterNameError, TargetModulesError, UnknownAdapterError
from loratune.lora.config import ALL_LINEAR, LoraConfig, module_matches, module_within
from loratune.lora.layer import BASE, LoraLinear, MixedRouting, ModulesToSaveWrapper, is_linear

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a safe adapter (and registry folder) name
CONFIGS_ATTR = "loratune_adapters"  # model attribute: {adapter name: LoraConfig}


def check_adapter_name(name: object) -> str:
    """Return ``name`` if it is a safe adapter name, else raise ``AdapterNameError``."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise AdapterNameError(
            f"adapter name {name!r} is not a safe identifier: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit (e.g. 'sentiment')"
        )
    return name


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The ``LoraConfig`` of each adapter the model holds, by name (in the order they were added)."""
    return model.__dict__.setdefault(CONFIGS_ATTR, {})


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters the model holds."""
    return list(adapter_configs(model))


def active_adapter(model: nn.Module) -> str | None:
    """Name of the active adapter, or None."""
    return model.__dict__.get("loratune_active")


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def head_wrappers(model: nn.Module) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            yield name, module


def _wrapped(model: nn.Module) -> Iterator[LoraLinear | ModulesToSaveWrapper]:
    for module in model.modules():
        if isinstance(module, LoraLinear | ModulesToSaveWrapper):
            yield module


def require_adapter(model: nn.Module, name: str) -> str:
    """``name``, if ``model`` holds an adapter of that name; else an ``UnknownAdapterError`` listing those it holds."""
    known = list_adapters(model)
    if name not in known:
        listing = ", ".join(repr(k) for k in known) or "none (add one with add_lora or load_adapter)"
        raise UnknownAdapterError(f"unknown adapter {name!r}; the model holds: {listing}")
    return name


def _linear_candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every module path that LoRA could wrap: linear layers and existing ``LoraLinear``s."""
    found: dict[str, nn.Module] = {}
    skip: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, LoraLinear | ModulesToSaveWrapper):
            skip.append(path)
            if isinstance(module, LoraLinear):
                found[path] = module
            continue
        if is_linear(module):
            found[path] = module
    return found


def _output_head_path(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((path for path, m in model.named_modules() if m is head), None)


def _base_model_path(model: nn.Module) -> str | None:
    """The path of the model's trunk (``base_model_prefix``: ``bert``, ``model``, ``transformer``) when
    the model wraps one in a task head; None for a bare trunk or a model without one."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix and "." not in prefix else None
    return prefix if isinstance(base, nn.Module) and base is not model else None


def _matches(path: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):  # PEFT's rule for a string: a regex for the whole path
        return re.fullmatch(targets, path) is not None
    return any(module_matches(path, t) for t in targets)


def find_target_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """Module paths that ``config.target_modules`` selects; raise ``TargetModulesError`` if none."""
    candidates = _linear_candidates(model)
    heads = config.modules_to_save or []
    if config.target_modules == ALL_LINEAR:  # the trunk's linear layers: never a head
        skip = _output_head_path(model)
        base = _base_model_path(model)
        inside = [p for p in candidates if base is None or p.startswith(base + ".")]
        paths = [p for p in inside if p != skip and not module_within(p, heads)]
    else:
        paths = [p for p in candidates if _matches(p, config.target_modules) and not module_within(p, heads)]
    if not paths:
        leaves = list(dict.fromkeys(p.rsplit(".", 1)[-1] for p in candidates))  # in model order
        raise TargetModulesError(
            f"target_modules {config.target_modules!r} matched no linear layer of "
            f"{type(model).__name__}; its linear layers are named: {', '.join(leaves) or 'none'}"
        )
    return paths


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def _find_heads(model: nn.Module, names: list[str]) -> list[str]:
    """Paths of the modules that ``modules_to_save`` names (suffix match, outermost only)."""
    paths: list[str] = []
    for path, _ in model.named_modules():
        inside = any(path.startswith(p + ".") for p in paths)
        if path and not inside and any(module_matches(path, n) for n in names):
            paths.append(path)
    return paths


def add_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Add a LoRA adapter to ``model`` in place and make it the active, trainable one.

    The targeted linear layers are wrapped in ``LoraLinear`` (once; later adapters reuse the
    wrapper), the ``modules_to_save`` get a per-adapter copy, and every other parameter is frozen.
    Returns ``model``.
    """
    check_adapter_name(adapter_name)
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise AdapterNameError(
            f"adapter {adapter_name!r} already exists; pick another name or delete_adapter() it first"
        )
    targets = find_target_modules(model, config)
    heads = _find_heads(model, config.modules_to_save or [])
    if config.modules_to_save and not heads:
        raise TargetModulesError(
            f"modules_to_save {config.modules_to_save!r} matched no module of {type(model).__name__}; "
            f"its top-level modules are: {', '.join(n for n, _ in model.named_children())}"
        )
    for path in targets:
        module = model.get_submodule(path)
        if not isinstance(module, LoraLinear):
            module = LoraLinear(module)
            _set_submodule(model, path, module)
        module.add_adapter(
            adapter_name,
            r=config.rank_for(path),
            scaling=config.scaling_for(path),
            dropout=config.dropout,
            init=config.init_lora_weights,
        )
    for path in heads:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSaveWrapper):
            module = ModulesToSaveWrapper(module)
            _set_submodule(model, path, module)
        module.add_adapter(adapter_name)
    configs[adapter_name] = config
    set_adapter(model, adapter_name)
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter (its LoRA weights and head); only it is trainable.

    A merged adapter is unmerged first.
    """
    require_adapter(model, adapter_name)
    unmerge_adapter(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in _wrapped(model):
        module.active_adapter = adapter_name
        if isinstance(module, LoraLinear) and adapter_name in module.lora_A:
            module.lora_A[adapter_name].weight.requires_grad_(True)
            module.lora_B[adapter_name].weight.requires_grad_(True)
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            module.modules_to_save[adapter_name].requires_grad_(True)
    model.__dict__["loratune_active"] = adapter_name


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove ``adapter_name``. If it was active, the most recent remaining adapter becomes active."""
    require_adapter(model, adapter_name)
    for module in _wrapped(model):
        if module.has_adapter(adapter_name):
            module.delete_adapter(adapter_name)
    del adapter_configs(model)[adapter_name]
    if active_adapter(model) == adapter_name:
        model.__dict__["loratune_active"] = None
        remaining = list_adapters(model)
        if remaining:
            set_adapter(model, remaining[-1])


def merge_adapter(model: nn.Module, adapter_name: str | None = None) -> None:
    """Merge an adapter (default: the active one) into the base weights: same outputs, no extra cost.

    Its head copy keeps serving, as it does unmerged. ``unmerge_adapter`` undoes it.
    """
    name = require_adapter(model, adapter_name or active_adapter(model) or "")
    if name != active_adapter(model):
        set_adapter(model, name)
    for _, layer in lora_layers(model):
        if name in layer.lora_A:
            layer.merge(name)


def unmerge_adapter(model: nn.Module) -> None:
    """Subtract every merged adapter from the base weights."""
    for _, layer in lora_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Merge an adapter (default: the active one) and return a plain model with no LoRA modules.

    Its head copy replaces the original head. The other adapters are dropped.
    """
    name = require_adapter(model, adapter_name or active_adapter(model) or "")
    merge_adapter(model, name)
    for path, layer in list(lora_layers(model)):
        layer.merged_adapters.clear()
        _set_submodule(model, path, layer.base_layer)
    for path, wrapper in list(head_wrappers(model)):
        head = wrapper.modules_to_save[name] if wrapper.has_adapter(name) else wrapper.original_module
        _set_submodule(model, path, head)
    model.__dict__.pop(CONFIGS_ATTR, None)
    model.__dict__.pop("loratune_active", None)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[None]:
    """Run the base model alone: no LoRA, original heads. Merged weights are unmerged first."""
    unmerge_adapter(model)
    modules = list(_wrapped(model))
    for module in modules:
        module.disabled = True
    try:
        yield
    finally:
        for module in modules:
            module.disabled = False


@contextmanager
def mixed_adapters(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Route example ``i`` of the next forward passes through adapter ``names[i]``.

    ``"__base__"`` means the base model. All adapters run together, grouped by adapter (no loop over
    examples). Inference only: the model must be in eval mode and unmerged.
    """
    if model.training:
        raise ValueError("mixed_adapters is for inference: call model.eval() first")
    for n in set(names):
        if n != BASE:
            require_adapter(model, n)
    unmerge_adapter(model)
    order = list(dict.fromkeys(n for n in names if n != BASE))
    index = {n: i for i, n in enumerate(order)}
    ids = torch.tensor([index.get(n, -1) for n in names], dtype=torch.long)
    routing = MixedRouting(ids=ids, names=order)
    modules = list(_wrapped(model))
    for module in modules:
        module.mixed = routing
    try:
        yield
    finally:
        for module in modules:
            module.mixed = None


@dataclass(frozen=True)
class ParameterReport:
    """Trainable and total parameters, as counts and bytes."""

    trainable: int
    total: int
    trainable_bytes: int
    total_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || trainable%: {self.percent:.4f}"


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count trainable and total parameters (each shared tensor once), like PEFT's summary line."""
    seen: set[int] = set()
    trainable = total = trainable_bytes = total_bytes = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n, nbytes = p.numel(), p.numel() * p.element_size()
        total += n
        total_bytes += nbytes
        if p.requires_grad:
            trainable += n
            trainable_bytes += nbytes
    return ParameterReport(trainable, total, trainable_bytes, total_bytes)
