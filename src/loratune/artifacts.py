"""Load what a training run saved: a LoRA adapter folder (plus its base model) or a full model.

An artifact folder holds ``loratune.json`` (task, label names, base model and its fingerprint), the
tokenizer files, and either the PEFT adapter files or a ``save_pretrained`` model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.errors import AdapterFileError, AdapterShapeError
from loratune.lora import load_adapter, read_adapter_config
from loratune.models import load_model_for_sequence_classification, load_tokenizer, use_tokenizer_pad_id

TASK_FILE = "loratune.json"


def base_fingerprint(model: nn.Module) -> str | None:
    """A short hash of the (frozen) input embeddings: tells one base model from another."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is None or not hasattr(emb, "weight"):
        return None
    rows = emb.weight.detach()[:256].float().cpu().contiguous()
    return hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    info: dict[str, Any]
    kind: str  # "lora" or "full"

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])


def read_task_info(folder: Path) -> dict[str, Any]:
    path = folder / TASK_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AdapterFileError(f"{path} is not valid JSON ({err}); re-save the adapter") from None
    return info if isinstance(info, dict) else {}


def load_artifact(
    path: str | Path,
    *,
    model: str | None = None,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Loaded:
    """Load a sequence-classification artifact for inference (eval mode, frozen).

    For an adapter, the base model comes from ``loratune.json`` (or ``adapter_config.json``'s
    ``base_model_name_or_path``), or ``model`` to override; a base model other than the one the
    adapter was trained on is refused (shapes, or the embedding fingerprint when shapes agree).
    The base loads at ``revision``, or else at the hub revision it was trained at (``loratune.json``).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterFileError(f"--adapter {folder} does not exist; pass the adapter/ (or model/) folder of a run")
    info = read_task_info(folder)
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        hint = " (did you mean its adapter/ subfolder?)" if (folder / "adapter").is_dir() else ""
        raise AdapterFileError(
            f"{folder} holds neither adapter_config.json nor config.json{hint}; pass an adapter or model folder"
        )
    tokenizer_src = str(folder) if (folder / "tokenizer_config.json").is_file() else None
    if is_adapter:
        peft_config = read_adapter_config(folder)
        base = model or info.get("base_model") or peft_config.get("base_model_name_or_path")
        if not base:
            raise AdapterFileError(f"{folder} does not name its base model; pass --model NAME_OR_PATH")
        labels = info.get("labels") or _labels_from_weights(folder)
        if revision is None and base == info.get("base_model"):
            revision = info.get("base_model_revision")
        net = load_model_for_sequence_classification(
            base,
            len(labels),
            dict(enumerate(labels)),
            {n: i for i, n in enumerate(labels)},
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
        expected = info.get("base_model_fingerprint")
        if expected and base_fingerprint(net) not in (None, expected):
            raise AdapterShapeError(
                f"adapter {folder} was trained on base model {info.get('base_model')!r}, and {base!r} is a "
                f"different model (its embeddings differ); pass --model {info.get('base_model')}"
            )
        load_adapter(net, folder)
        tokenizer = load_tokenizer(tokenizer_src or base, trust_remote_code=trust_remote_code,
                                   revision=None if tokenizer_src else revision)  # fmt: skip
        kind = "lora"
    else:
        if revision is not None:
            raise AdapterFileError(f"--revision pins a base model, and {folder} is a whole model; drop --revision")
        from transformers import AutoModelForSequenceClassification

        from loratune.models import _model_errors  # the same one-line errors as for base models

        with _model_errors(str(folder)):
            net = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code)
        labels = info.get("labels") or [net.config.id2label[i] for i in range(net.config.num_labels)]
        tokenizer = load_tokenizer(tokenizer_src or str(folder), trust_remote_code=trust_remote_code)
        kind = "full"
    use_tokenizer_pad_id(net, tokenizer)
    info = {**info, "labels": labels}
    if model and info.get("base_model") and model != info["base_model"] and kind == "lora":
        print(f"note: adapter was trained on {info['base_model']!r}; using --model {model!r}", file=sys.stderr)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    return Loaded(net, tokenizer, info, kind)


def _labels_from_weights(folder: Path) -> list[str]:
    """Label names for an adapter without ``loratune.json`` (e.g. saved by PEFT): from the head size."""
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")):
                return [str(i) for i in range(f.get_slice(key).get_shape()[0])]
    raise AdapterFileError(f"{folder} has no loratune.json and no classifier head; pass an adapter saved by a run")
