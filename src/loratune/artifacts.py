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

from loratune.errors import AdapterFileError, AdapterShapeError, LoratuneError
from loratune.lora import load_adapter, read_adapter_config, read_adapter_shapes
from loratune.lora.io import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME
from loratune.models import load_tokenizer, use_tokenizer_pad_id
from loratune.tasks import Task, get_task, task_for_peft_type

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
    kind: str  # "lora", "full", or "base" (a pretrained model without adapter)

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"] or [])


def read_task_info(folder: Path) -> dict[str, Any]:
    """``loratune.json`` of an artifact folder (``{}`` when absent), its fields' types checked."""
    path = folder / TASK_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise AdapterFileError(f"{path} is not valid JSON ({_first_line(err)}); re-save the adapter") from None
    if not isinstance(info, dict):
        raise AdapterFileError(f"{path} does not hold a JSON object; re-save the adapter")
    if not isinstance(info.get("data", {}), dict | None):
        raise AdapterFileError(f"{path}: 'data' must be an object of data options, got {info['data']!r}; fix it")
    labels, max_length = info.get("labels"), info.get("max_length")
    if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise AdapterFileError(f"{path}: 'labels' must be a non-empty list of names, got {labels!r}; re-save it")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise AdapterFileError(f"{path}: 'max_length' must be a positive integer, got {max_length!r}; fix it")
    return info


def load_artifact(
    path: str | Path,
    *,
    model: str | None = None,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Loaded:
    """Load a training run's artifact for inference (eval mode, frozen), as its task's model.

    For an adapter, the base model comes from ``loratune.json`` (or ``adapter_config.json``'s
    ``base_model_name_or_path``), or ``model`` to override; a base model other than the one the
    adapter was trained on is refused (shapes, or the embedding fingerprint when shapes agree).
    The base loads at ``revision``, or else at the hub revision it was trained at (``loratune.json``).
    Every file is checked: a missing, corrupt or truncated one is an ``AdapterFileError``.
    """
    folder = Path(path)
    if not folder.is_dir():
        problem = "is a file" if folder.exists() else "does not exist"
        raise AdapterFileError(f"--adapter {folder} {problem}; pass the adapter/ (or model/) folder of a run")
    info = read_task_info(folder)
    task = artifact_task(folder, info)
    if (folder / "adapter_config.json").is_file():
        if revision is None and model in (None, info.get("base_model")):
            revision = info.get("base_model_revision")
        net, labels, base = _load_lora(folder, info, task, model, trust_remote_code, revision)
        kind = "lora"
    elif (folder / "config.json").is_file():
        if revision is not None:
            raise AdapterFileError(f"--revision pins a base model, and {folder} is a whole model; drop --revision")
        net, base = _load_full(folder, task, trust_remote_code), str(folder)
        labels = _full_model_labels(folder, info, net) if task.has_labels else None
        kind = "full"
    else:
        raise AdapterFileError(_neither_config(folder))
    tokenizer = _artifact_tokenizer(folder, base, trust_remote_code, revision)
    use_tokenizer_pad_id(net, tokenizer)
    info = {**info, "task": task.name, "labels": labels}
    if model and info.get("base_model") and model != info["base_model"] and kind == "lora":
        print(f"note: adapter was trained on {info['base_model']!r}; using --model {model!r}", file=sys.stderr)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    return Loaded(net, tokenizer, info, kind)


def load_base_model(
    name: str,
    task: Task,
    *,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Loaded:
    """A pretrained model with no adapter (eval mode, frozen), for a task without a trained head
    (causal-lm): what an adapter is compared with."""
    if task.has_labels:
        raise LoratuneError(f"a {task.name} model needs a trained head; pass --adapter DIR (a run's adapter/ folder)")
    net = task.load_model(name, {}, trust_remote_code=trust_remote_code, revision=revision)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
    use_tokenizer_pad_id(net, tokenizer)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    info = {"task": task.name, "labels": None, "base_model": name, "base_model_revision": revision}
    return Loaded(net, tokenizer, info, "base")


def _neither_config(folder: Path) -> str:
    """The error for a folder that is neither an adapter nor a model, with the likely fix."""
    if any((folder / name).is_file() for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME)):
        return (
            f"{folder} holds adapter weights but no adapter_config.json; copy that file from where the adapter "
            "was saved, or re-save the adapter with PEFT's save_pretrained"
        )
    hint = " (did you mean its adapter/ subfolder?)" if (folder / "adapter").is_dir() else ""
    return f"{folder} holds neither adapter_config.json nor config.json{hint}; pass an adapter or model folder"


def _load_lora(
    folder: Path, info: dict[str, Any], task: Task, model: str | None, trust_remote_code: bool, revision: str | None
) -> tuple[nn.Module, list[str] | None, str]:
    """The base model (at the hub ``revision``) with the adapter of ``folder`` loaded; its labels; its name."""
    peft_config = read_adapter_config(folder)
    base = model or info.get("base_model") or peft_config.get("base_model_name_or_path")
    if not base:
        raise AdapterFileError(f"{folder} does not name its base model; pass --model NAME_OR_PATH")
    labels = (info.get("labels") or labels_from_weights(folder)) if task.has_labels else None
    net = task.load_model(base, {**info, "labels": labels}, trust_remote_code=trust_remote_code, revision=revision)
    expected = info.get("base_model_fingerprint")
    if expected and base_fingerprint(net) not in (None, expected):
        raise AdapterShapeError(
            f"adapter {folder} was trained on base model {info.get('base_model')!r}, and {base!r} is a "
            f"different model (its embeddings differ); pass --model {info.get('base_model')}"
        )
    load_adapter(net, folder)
    return net, labels, base


def _load_full(folder: Path, task: Task, trust_remote_code: bool) -> nn.Module:
    """A fully fine-tuned model saved with ``save_pretrained``, as the task's ``auto_class``."""
    import transformers

    from loratune.models import _model_errors  # the same one-line errors as for base models

    with _model_errors(str(folder)):
        return getattr(transformers, task.auto_class).from_pretrained(folder, trust_remote_code=trust_remote_code)


def _full_model_labels(folder: Path, info: dict[str, Any], net: nn.Module) -> list[str]:
    """A full classifier's label names: ``loratune.json``'s, else its config's; one per output."""
    labels = info.get("labels") or [net.config.id2label[i] for i in range(net.config.num_labels)]
    if len(labels) != net.config.num_labels:
        raise AdapterFileError(
            f"{folder / TASK_FILE} names {len(labels)} labels but the model has {net.config.num_labels} "
            "outputs; fix its 'labels'"
        )
    return labels


def artifact_task(folder: Path, info: dict[str, Any], config: dict[str, Any] | None = None) -> Task:
    """The artifact's task: ``loratune.json``'s, else the one of its PEFT ``task_type`` (seq-cls if none).
    ``config``: the folder's ``read_adapter_config``, when read already."""
    if info.get("task"):
        try:
            return get_task(info["task"])
        except LoratuneError:
            raise AdapterFileError(
                f"{folder / TASK_FILE} names an unknown task {info['task']!r}; fix its 'task'"
            ) from None
    if config is None and (folder / "adapter_config.json").is_file():
        config = read_adapter_config(folder)
    return task_for_peft_type(config.get("task_type")) if config is not None else get_task("seq-cls")


def _artifact_tokenizer(folder: Path, base: str, trust_remote_code: bool, revision: str | None = None) -> Any:
    """The tokenizer saved in ``folder``, else the base model's (at ``revision``); unreadable files are an error."""
    if not (folder / "tokenizer_config.json").is_file():
        return load_tokenizer(base, trust_remote_code=trust_remote_code, revision=revision)
    try:
        return load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
    except LoratuneError:
        raise
    except Exception as err:  # tokenizers raises plain Exceptions for a corrupt tokenizer.json
        raise AdapterFileError(
            f"the tokenizer files in {folder} cannot be read ({_first_line(err)}); re-save them, or delete "
            "tokenizer_config.json there to use the base model's tokenizer"
        ) from None


def labels_from_weights(folder: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """Label names for an adapter without ``loratune.json`` (e.g. saved by PEFT): from the head size.
    ``shapes``: the folder's ``read_adapter_shapes``, when read already."""
    for key, shape in (read_adapter_shapes(folder) if shapes is None else shapes).items():
        if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")):
            return [str(i) for i in range(shape[0])]
    raise AdapterFileError(
        f"{folder} has no loratune.json and its weights hold no classifier head; pass an adapter saved by "
        "loratune train, or one that PEFT saved with task_type='SEQ_CLS' (which saves the head)"
    )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
