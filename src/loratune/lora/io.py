"""Adapters on disk, in the Hugging Face PEFT format.

A saved adapter is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``. Tensor
keys are PEFT's: ``base_model.model.<module path>.lora_A.weight`` (r x in) and ``...lora_B.weight``
(out x r); task heads (``modules_to_save``) under their plain path, e.g.
``base_model.model.classifier.weight``. PEFT loads what loratune saves, and the other way round.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from loratune.errors import AdapterFileError, AdapterShapeError
from loratune.fsutil import atomic_dir, follow_umask, os_error_code
from loratune.lora.config import ALL_LINEAR, LoraConfig, module_matches
from loratune.lora.layer import LoraLinear, ModulesToSaveWrapper, in_out_features, is_linear
from loratune.lora.model import (
    active_adapter,
    adapter_configs,
    add_lora,
    check_adapter_name,
    head_wrappers,
    lora_layers,
    require_adapter,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
# PEFT config fields that change what the adapter computes and that loratune does not implement.
_UNSUPPORTED = ("use_dora", "lora_bias", "layer_replication", "trainable_token_indices", "target_parameters")
_CLS_HEADS = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"]}
# adapter_config.json fields that loratune reads: their allowed JSON types and how to name them
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "r": ((int,), "a positive integer"),
    "lora_alpha": ((int, float), "a number"),
    "lora_dropout": ((int, float, type(None)), "a number"),
    "use_rslora": ((bool,), "true or false"),
    "target_modules": ((str, list, type(None)), "a list of layer names or a regex"),
    "modules_to_save": ((list, type(None)), "a list of module names"),
    "rank_pattern": ((dict, type(None)), "a mapping of layer names to ranks"),
    "alpha_pattern": ((dict, type(None)), "a mapping of layer names to alphas"),
    "task_type": ((str, type(None)), "a task type such as SEQ_CLS"),
    "base_model_name_or_path": ((str, type(None)), "a model name or path"),
}


def _base_model_name(model: nn.Module, config: LoraConfig) -> str | None:
    if config.base_model_name_or_path:
        return config.base_model_name_or_path
    model_config = getattr(model, "config", None)
    return getattr(model_config, "name_or_path", None) or getattr(model_config, "_name_or_path", None) or None


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's key names (contiguous CPU copies)."""
    name = require_adapter(model, adapter_name or active_adapter(model) or "")
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(model):
        if name in layer.lora_A:
            tensors[f"{PREFIX}{path}.lora_A.weight"] = layer.lora_A[name].weight
            tensors[f"{PREFIX}{path}.lora_B.weight"] = layer.lora_B[name].weight
    for path, wrapper in head_wrappers(model):
        if name in wrapper.modules_to_save:
            for key, value in wrapper.modules_to_save[name].state_dict().items():
                tensors[f"{PREFIX}{path}.{key}"] = value
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def peft_config_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    """``adapter_config.json`` contents for an adapter, with PEFT's field names."""
    name = require_adapter(model, adapter_name or active_adapter(model) or "")
    config = adapter_configs(model)[name]
    layers = [(p, m) for p, m in lora_layers(model) if name in m.lora_A]
    targets = config.target_modules
    if targets == ALL_LINEAR:  # PEFT too writes the names that "all-linear" resolved to
        targets = sorted({p.rsplit(".", 1)[-1] for p, _ in layers})
    heads = sorted(p for p, w in head_wrappers(model) if name in w.modules_to_save)
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": _base_model_name(model, config),
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "modules_to_save": heads or None,
        "use_rslora": config.use_rslora,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": any(m.fan_in_fan_out for _, m in layers),
        "init_lora_weights": config.init_lora_weights,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
    }


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, then the umask's mode like every other file (it writes 0600). A disk error
    (full, a name too long) is an ``OSError`` naming ``path``, not safetensors' own error."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        code = os_error_code(err)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from err
    follow_umask(path)


def write_adapter(model: nn.Module, folder: str | Path, adapter_name: str | None = None) -> None:
    """Write the adapter's two files into an existing ``folder`` (not atomic; see ``save_adapter``)."""
    folder = Path(folder)
    config = peft_config_dict(model, adapter_name)
    save_tensors(adapter_state_dict(model, adapter_name), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def save_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> Path:
    """Save an adapter (default: the active one) to folder ``path``, atomically, in PEFT format.

    The files are written to a temporary folder that then replaces ``path``: an existing adapter
    there is never left half-written.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_adapter(model, tmp, adapter_name)
    return path


# ------------------------------------------------------------------------------------------ load
def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """Read ``adapter_config.json`` from an adapter folder, with clear errors."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterFileError(f"adapter folder {folder} does not exist; pass the folder that holds {CONFIG_NAME}")
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise AdapterFileError(f"{folder} has no {CONFIG_NAME}; pass a folder saved by loratune or PEFT")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"{cfg_file} is not valid JSON ({exc}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{cfg_file} does not hold a JSON object; re-save the adapter")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterFileError(f"{cfg_file} holds a {peft_type} adapter; loratune loads LoRA adapters only")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise AdapterFileError(f"{cfg_file} uses {key}={config[key]!r}, which loratune does not support")
    if config.get("bias", "none") != "none":
        raise AdapterFileError(f"{cfg_file} trains biases (bias={config['bias']!r}); loratune supports bias='none'")
    _check_field_types(cfg_file, config)
    return config


def _check_field_types(cfg_file: Path, config: dict[str, Any]) -> None:
    """Raise ``AdapterFileError`` naming the first field of ``config`` that has the wrong type."""
    for key, (types, expected) in _FIELD_TYPES.items():
        if key not in config:
            continue
        value = config[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if isinstance(value, list):
            ok = ok and all(isinstance(v, str) for v in value)
        if key == "r" and ok:
            ok = value >= 1
        if not ok:
            raise AdapterFileError(f"{cfg_file}: {key!r} must be {expected}, got {value!r}; fix or re-save the adapter")


def _weights_file(folder: Path, allow_pickle: bool) -> Path:
    """The adapter's weights file: its safetensors, else its pickle ``.bin`` when ``allow_pickle``."""
    st_file, bin_file = folder / WEIGHTS_NAME, folder / PICKLE_WEIGHTS_NAME
    if st_file.is_file():
        return st_file
    if bin_file.is_file():
        if not allow_pickle:
            raise AdapterFileError(
                f"{bin_file} is a pickle file, which can run code when loaded; if you trust its source, convert it to "
                f"safetensors with PEFT: model = PeftModel.from_pretrained(base_model, '{folder}'), then "
                f"model.save_pretrained('{folder}', safe_serialization=True)"
            )
        return bin_file
    raise AdapterFileError(f"{folder} has no {WEIGHTS_NAME}; pass a folder saved by loratune or PEFT")


def read_adapter_weights(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the adapter tensors (safetensors; a pickle ``.bin`` only with ``allow_pickle=True``)."""
    file = _weights_file(Path(path), allow_pickle)
    if file.name == PICKLE_WEIGHTS_NAME:
        try:
            tensors = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterFileError(f"{file} could not be read ({_first_line(exc)}); re-save the adapter") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise AdapterFileError(f"{file} does not hold a dict of tensors; re-save the adapter")
        return tensors
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{file} is corrupt or truncated ({_first_line(exc)}); re-save the adapter") from None


def read_adapter_shapes(path: str | Path, *, allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """The adapter's tensor names and shapes, checked as ``read_adapter_weights`` checks them.

    From a safetensors file only its header is read (which safetensors checks against the file size).
    """
    file = _weights_file(Path(path), allow_pickle)
    if file.name == PICKLE_WEIGHTS_NAME:
        return {k: tuple(t.shape) for k, t in read_adapter_weights(path, allow_pickle=True).items()}
    try:
        with safe_open(str(file), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"{file} is corrupt or truncated ({_first_line(exc)}); re-save the adapter") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _split_keys(
    tensors: dict[str, torch.Tensor], adapter_name_in_keys: set[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Group PEFT keys into {module path: {"A": .., "B": ..}} and the remaining (head) tensors."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        k = key.removeprefix(PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in k:
                path, _, tail = k.partition(marker)
                if tail.split(".")[0] in adapter_name_in_keys:  # very old PEFT kept the adapter name
                    tail = tail.split(".", 1)[1]
                if tail != "weight":
                    raise AdapterFileError(f"unexpected adapter tensor {key!r}; loratune reads LoRA A/B weights")
                lora.setdefault(path, {})[part[-1]] = value
                break
        else:
            rest[k] = value
    return lora, rest


def _check_shape(key: str, got: torch.Size, expected: tuple[int, ...]) -> None:
    if tuple(got) != tuple(expected):
        raise AdapterShapeError(
            f"adapter tensor {key!r} has shape {tuple(got)} but the model expects {tuple(expected)}; "
            "was the adapter trained on a different base model?"
        )


def load_adapter(
    model: nn.Module,
    path: str | Path,
    adapter_name: str | None = None,
    *,
    is_trainable: bool = False,
    allow_pickle: bool = False,
    config: dict[str, Any] | None = None,
) -> nn.Module:
    """Load a PEFT-format adapter from ``path`` into ``model`` and make it the active adapter.

    Works on a plain model (LoRA layers are added where the adapter's keys say) and on a model that
    already holds adapters (``adapter_name`` must then be new; default ``"default"``). Every tensor
    is checked against the model before the model is changed. With ``is_trainable=False`` the
    adapter is loaded frozen, for inference. ``config``: the folder's ``read_adapter_config``, when
    the caller has read it already.
    """
    name = check_adapter_name(adapter_name or "default")
    config_dict = read_adapter_config(path) if config is None else config
    tensors = read_adapter_weights(path, allow_pickle=allow_pickle)
    lora, rest = _split_keys(tensors, {"default", name})
    if not lora:
        raise AdapterFileError(f"{Path(path) / WEIGHTS_NAME} holds no LoRA tensors; is it a LoRA adapter?")
    heads = list(config_dict.get("modules_to_save") or []) or _CLS_HEADS.get(config_dict.get("task_type"), [])
    head_tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in rest.items():
        head_path = _head_of(model, key, heads)
        head_tensors.setdefault(head_path, {})[key.removeprefix(head_path + ".")] = value
    lora_config = _lora_config(Path(path) / CONFIG_NAME, config_dict, sorted(lora), sorted(head_tensors))
    _check_fits(model, lora_config, lora, head_tensors)
    add_lora(model, lora_config, name)
    # Saving it again writes the names the file was saved with, not the regex.
    lora_config.target_modules = config_dict.get("target_modules") or sorted({p.rsplit(".", 1)[-1] for p in lora})
    lora_config.modules_to_save = heads or None
    with torch.no_grad():
        for module_path, ab in lora.items():
            layer = model.get_submodule(module_path)
            layer.lora_A[name].weight.copy_(ab["A"])
            layer.lora_B[name].weight.copy_(ab["B"])
        for head_path, state in head_tensors.items():
            model.get_submodule(head_path).modules_to_save[name].load_state_dict(state)
    if not is_trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def _lora_config(cfg_file: Path, config_dict: dict[str, Any], layers: list[str], heads: list[str]) -> LoraConfig:
    """The ``LoraConfig`` of exactly ``layers`` (and the ``heads``) that the file holds tensors for;
    values that ``LoraConfig`` refuses are an ``AdapterFileError`` naming ``cfg_file``."""
    try:
        return LoraConfig(
            r=int(config_dict.get("r", 8)),
            alpha=float(config_dict.get("lora_alpha", 8)),
            dropout=float(config_dict.get("lora_dropout") or 0.0),
            target_modules="|".join(re.escape(p) for p in layers),  # one full-path regex
            modules_to_save=heads or None,
            use_rslora=bool(config_dict.get("use_rslora", False)),
            task_type=config_dict.get("task_type"),
            base_model_name_or_path=config_dict.get("base_model_name_or_path"),
            rank_pattern=dict(config_dict.get("rank_pattern") or {}),
            alpha_pattern=dict(config_dict.get("alpha_pattern") or {}),
        )
    except ValueError as err:
        problem = str(err).split(";")[0]  # without LoraConfig's advice for code
        raise AdapterFileError(f"{cfg_file}: {problem}; fix or re-save the adapter") from None


def _check_fits(
    model: nn.Module,
    config: LoraConfig,
    lora: dict[str, dict[str, torch.Tensor]],
    head_tensors: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Raise unless every adapter tensor has a module of the right shape in ``model``."""
    base_name = config.base_model_name_or_path or "another model"
    for module_path, ab in lora.items():
        key_a = f"{PREFIX}{module_path}.lora_A.weight"
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise AdapterFileError(f"adapter layer {module_path!r} lacks its {missing} tensor; re-save the adapter")
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise AdapterShapeError(
                f"adapter tensor {key_a!r} names module {module_path!r}, which {type(model).__name__} "
                f"does not have; the adapter was trained on {base_name}"
            ) from None
        if not isinstance(module, LoraLinear) and not is_linear(module):
            raise AdapterShapeError(f"adapter layer {module_path!r} is a {type(module).__name__}, not a linear layer")
        in_f, out_f = in_out_features(module)
        _check_shape(key_a, ab["A"].shape, (config.rank_for(module_path), in_f))
        _check_shape(f"{PREFIX}{module_path}.lora_B.weight", ab["B"].shape, (out_f, ab["A"].shape[0]))
    for head_path, state in head_tensors.items():
        head = model.get_submodule(head_path)
        if isinstance(head, ModulesToSaveWrapper):
            head = head.original_module
        own = head.state_dict()
        for key, value in state.items():
            if key not in own:
                raise AdapterShapeError(
                    f"adapter tensor '{PREFIX}{head_path}.{key}' has no place in head {head_path!r}"
                )
            _check_shape(f"{PREFIX}{head_path}.{key}", value.shape, tuple(own[key].shape))
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterFileError(
                f"adapter lacks head tensors {', '.join(head_path + '.' + m for m in missing)}; re-save it"
            )


def _head_of(model: nn.Module, key: str, heads: list[str]) -> str:
    """The module path of ``modules_to_save`` that tensor ``key`` belongs to."""
    for path, _ in model.named_modules():
        if path and key.startswith(path + ".") and any(module_matches(path, h) for h in heads):
            return path
    raise AdapterShapeError(
        f"adapter tensor '{PREFIX}{key}' is neither a LoRA weight nor part of a head in modules_to_save "
        f"({', '.join(heads) or 'none'}) of {type(model).__name__}; was it trained on another base model?"
    )
