"""Merge a LoRA adapter into its base model and save a plain transformers model (``loratune merge``).

The output folder is what ``save_pretrained`` writes (``config.json`` and ``.safetensors`` weights only),
the tokenizer, and the adapter's ``loratune.json`` marked ``"method": "merged"`` and ``"merged_from"``:
``AutoModelFor<Task>.from_pretrained(output)`` loads it without loratune, and ``loratune eval/predict
--adapter output`` load it as a full model.

The merge itself runs in fp32 (the base loads in fp32 whatever dtype it is stored in); the merged
weights are then saved in ``dtype``: by default the dtype the base model's ``config.json`` records
(``dtype`` or ``torch_dtype``), fp32 when it records none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.artifacts import TASK_FILE, Loaded, load_artifact, read_task_info
from loratune.errors import AdapterFileError, RunError
from loratune.fsutil import atomic_dir, check_keeps, follow_umask
from loratune.lora import merge_and_unload
from loratune.lora.io import CONFIG_NAME
from loratune.lora.model import lora_layers
from loratune.prepare import DTYPES

_STORED = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_merge_paths(adapter: Path, output: Path, *, overwrite: bool = False, model: str | None = None) -> None:
    """Refuse, before anything is loaded or written: a folder that is not an adapter, an output inside
    it, an output that exists and is not empty (without ``overwrite``), an output that holds the adapter,
    a local ``model`` or the current directory (``overwrite`` would delete them)."""
    if not adapter.is_dir():
        problem = "is a file" if adapter.exists() else "does not exist"
        raise AdapterFileError(f"--adapter {adapter} {problem}; pass the adapter/ folder of a LoRA run")
    if not (adapter / CONFIG_NAME).is_file():
        if (adapter / "config.json").is_file():
            raise AdapterFileError(
                f"--adapter {adapter} is a full model (config.json, no adapter_config.json): it is already "
                "merged; load it with from_pretrained as it is"
            )
        hint = " (did you mean its adapter/ subfolder?)" if (adapter / "adapter").is_dir() else ""
        raise AdapterFileError(f"--adapter {adapter} holds no adapter_config.json{hint}; pass a LoRA adapter folder")
    out, src = output.resolve(), adapter.resolve()
    if out == src or src in out.parents:
        raise RunError(f"--output {output} is inside --adapter {adapter}; pass a folder outside it")
    if output.exists() or output.is_symlink():
        if not output.is_dir():
            raise RunError(f"--output {output} is a file; pass a folder path")
        if any(output.iterdir()) and not overwrite:
            raise RunError(f"--output {output} exists and is not empty; pass --overwrite to replace it, or another")
        check_keeps(output, {"--adapter": adapter, "--model": model})


def stored_dtype(base: str | None, revision: str | None = None) -> torch.dtype:
    """The dtype the base model's ``config.json`` records (``dtype``, else ``torch_dtype``); fp32 when it
    records none, or when the config cannot be read."""
    if not base:
        return torch.float32
    try:
        from transformers import PretrainedConfig

        from loratune.models import resolve_model

        config, _ = PretrainedConfig.get_config_dict(resolve_model(base, revision), revision=revision)
    except Exception:  # an unreachable hub model, an alias with a revision...: keep the fp32 the merge ran in
        return torch.float32
    name = config.get("dtype") or config.get("torch_dtype")
    return _STORED.get(str(name).removeprefix("torch."), torch.float32)


def merge_to_folder(
    adapter: str | Path,
    output: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    model: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Path, torch.dtype]:
    """Merge the LoRA adapter folder ``adapter`` into its base model; write the plain model to ``output``.

    ``dtype``: ``"fp32"``, ``"bf16"`` or ``"fp16"``; None: the base model's stored dtype (see module doc).
    The folder is written atomically. Returns the output folder and the dtype its weights were saved in.
    """
    adapter, output = Path(adapter), Path(output)
    check_merge_paths(adapter, output, overwrite=overwrite, model=model)
    loaded = load_artifact(adapter, model=model, revision=revision, trust_remote_code=trust_remote_code)
    base = loaded.info.get("base_model") if model is None else model
    target = DTYPES[dtype] if dtype else stored_dtype(base, revision or loaded.info.get("base_model_revision"))
    net = merged_model(loaded).to(target)
    info = {
        **read_task_info(adapter),
        "task": loaded.info["task"],
        "labels": loaded.info["labels"],
        "method": "merged",
        "merged_from": str(adapter),
    }
    with atomic_dir(output) as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
        for weights in tmp.glob("*.safetensors"):
            follow_umask(weights)  # safetensors writes 0600; every other file follows the umask
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output, target


def merged_model(loaded: Loaded) -> nn.Module:
    """``loaded``'s adapter merged into its base weights: a plain transformers model, labels in its config.

    A model read from a GGUF file was de-quantised when loaded: it forgets its GGUF quantizer, so that
    ``save_pretrained`` writes its plain weights. An output head that LoRA adapts and that shares its
    weight with the input embeddings is untied first (its own copy of the weight, ``tie_word_embeddings``
    off), so the merge leaves the embeddings as they were.
    """
    net = loaded.model
    _untie_adapted_head(net)
    net = merge_and_unload(net)
    _forget_gguf(net)
    for attr in ("loratune_new_modules",):
        net.__dict__.pop(attr, None)
    if loaded.labels:
        net.config.id2label = dict(enumerate(loaded.labels))
        net.config.label2id = {label: i for i, label in enumerate(loaded.labels)}
        net.config.num_labels = len(loaded.labels)
    return net


def _forget_gguf(net: nn.Module) -> None:
    quantizer = getattr(net, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    method = getattr(config, "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        return
    if not getattr(config, "dequantize", True):
        raise RunError(
            "the base model's weights are still GGUF blocks; merge needs them de-quantised: load the "
            "base without GGUF kernels (or pass --model with a safetensors copy of it)"
        )
    net.hf_quantizer = None
    net.__dict__.pop("is_quantized", None)
    if hasattr(net.config, "quantization_config"):
        del net.config.quantization_config


def _untie_adapted_head(net: nn.Module) -> None:
    get_out, get_in = getattr(net, "get_output_embeddings", None), getattr(net, "get_input_embeddings", None)
    head = get_out() if callable(get_out) else None
    emb = get_in() if callable(get_in) else None
    if head is None or emb is None:
        return
    for _, layer in lora_layers(net):
        base = layer.base_layer
        if layer is head or base is head or getattr(base, "weight", None) is emb.weight:
            base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            _set_untied(net)


def _set_untied(net: nn.Module) -> None:
    config: Any = net.config
    config.tie_word_embeddings = False
    text = getattr(config, "get_text_config", None)
    if callable(text):
        text().tie_word_embeddings = False
