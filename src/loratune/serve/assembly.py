"""Task models assembled on one shared base trunk, and the checks an adapter passes first.

The frozen base *trunk* (the module at ``base_model_prefix``, e.g. ``bert``) is loaded once. Each
adapter gets its own task model (sequence or token classifier, causal LM) built for its labels, whose
trunk attribute is set to that one shared trunk; the adapter's LoRA layers are injected into the shared
trunk under the adapter's name, and its head copy lives in its own task model. The base weights are
never modified (no merging). An adapter of another base model, or one whose layers the trunk lacks, is
refused before anything is built; ``load_adapter`` checks each tensor's shape before the trunk changes.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.artifacts import base_fingerprint, labels_from_weights
from loratune.errors import AdapterFileError, AdapterShapeError, TargetModulesError
from loratune.lora import load_adapter
from loratune.lora.io import PREFIX
from loratune.lora.model import adapter_configs, delete_adapter
from loratune.models import load_config, load_pretrained_model, load_tokenizer, use_tokenizer_pad_id
from loratune.serve.registry import TOKENIZER_FILES, AdapterFiles
from loratune.tasks import Task


@dataclass
class Entry:
    """One name the runtime serves: its task, its ``loratune.json`` record (``info``), the record of its files
    (None for ``__base__``), and once loaded its task model and tokenizer."""

    name: str
    task: Task
    info: dict[str, Any]
    files: AdapterFiles | None = None
    model: nn.Module | None = None
    tokenizer: Any = None
    unavailable: bool = False

    @classmethod
    def of(cls, files: AdapterFiles) -> Entry:
        return cls(files.name, files.task, files.info, files)

    def reread(self, files: AdapterFiles) -> None:
        """Take the adapter's files as read again (it is not loaded)."""
        self.files, self.task, self.info = files, files.task, files.info


class SharedTrunk:
    """The base model's trunk, loaded once on ``device``, and the task models built on it.

    Args:
        base_name: the base model; default: the first adapter's (then every adapter must name it).
        device: where the models run.
    """

    def __init__(self, base_name: str | None, device: torch.device) -> None:
        self.base_name = base_name
        self.explicit_base = base_name is not None
        self.device = device
        self.module: nn.Module | None = None
        self.fingerprint: str | None = None
        self._tokenizers: dict[str, Any] = {}  # loaded tokenizers by the digest of their files

    def base_for(self, files: AdapterFiles) -> str:
        """The shared base model name; an adapter of another base model is refused."""
        own = files.base_model
        if self.base_name is None:
            if not own:
                raise AdapterFileError(f"adapter {files.name!r} does not name its base model; pass model=NAME_OR_PATH")
            self.base_name = own
        elif not self.explicit_base and own and own != self.base_name:
            raise AdapterShapeError(
                f"adapter {files.name!r} was trained on {own!r}, and this registry serves {self.base_name!r}; "
                "keep one base model per registry (or pass model= to serve them all on one)"
            )
        return self.base_name

    def get(self, files: AdapterFiles | None = None) -> nn.Module:
        """The shared trunk, loaded on first use as the base model's ``AutoModel`` (``files``: an adapter
        whose base model it is, or None once the base model is known)."""
        if self.module is None:
            trunk = load_pretrained_model("AutoModel", self.base_for(files) if files is not None else self.base_name)
            trunk.eval().requires_grad_(False).to(self.device)
            self.module, self.fingerprint = trunk, base_fingerprint(trunk)
        return self.module

    def is_language_model(self) -> bool:
        """Whether the base model's own architecture is a language model (it then has an output layer); its
        config tells, so the model need not be loaded."""
        config = self.module.config if self.module is not None else load_config(self.base_name)
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in getattr(config, "architectures", None) or [])

    def build(self, e: Entry) -> None:
        """Build adapter entry ``e``'s task model on the shared trunk and inject its adapter, after the checks."""
        files = e.files
        base = self.base_for(files)
        trunk = self.get(files)
        self._check(files, trunk)
        tokenizer = _tokenizer(files.folder, base, self._tokenizers)  # before the trunk changes
        if e.task.has_labels:  # a PEFT-saved adapter: the labels from its head size
            e.info = {**e.info, "labels": e.info.get("labels") or labels_from_weights(files.folder, files.shapes)}
        net = self._task_model(e, base, trunk)
        use_tokenizer_pad_id(net, tokenizer)
        try:
            load_adapter(net, files.folder, adapter_name=e.name, config=files.config)
        except AdapterShapeError as err:
            raise AdapterShapeError(
                f"adapter {e.name!r} does not fit the served base model {base!r}: {str(err).split('; ')[0]}; "
                "it was trained on another base model"
            ) from None
        adapter_configs(trunk)[e.name] = adapter_configs(net)[e.name]
        e.model, e.tokenizer = net, tokenizer

    def build_base(self, e: Entry) -> None:
        """``__base__``'s model: the base model's own output layer on the shared trunk."""
        e.model, e.tokenizer = self._task_model(e, self.base_name, self.get()), load_tokenizer(self.base_name)
        use_tokenizer_pad_id(e.model, e.tokenizer)

    def remove(self, e: Entry) -> None:
        """Remove ``e``'s LoRA layers from the shared trunk and drop its task model (and head)."""
        if e.model is not None and e.files is not None:
            delete_adapter(e.model, e.name)
            adapter_configs(self.module).pop(e.name, None)
        e.model, e.tokenizer = None, None

    def _check(self, files: AdapterFiles, trunk: nn.Module) -> None:
        """Refuse an adapter of another base model (fingerprint) or whose layers the trunk lacks."""
        expected = files.info.get("base_model_fingerprint")
        if expected and self.fingerprint not in (None, expected):
            raise AdapterShapeError(
                f"adapter {files.name!r} was trained on base model {files.info.get('base_model')!r}, not on the "
                f"served {self.base_name!r} (its embeddings differ); serve it from a registry of that base model"
            )
        layers = {k: k.removeprefix(PREFIX).split(".lora_")[0] for k in files.shapes if ".lora_" in k}
        modules = dict(trunk.named_modules())
        found = {p: _in_trunk(modules, p) is not None for p in layers.values()}
        if not any(found.values()):
            raise TargetModulesError(
                f"adapter {files.name!r} targets {files.config.get('target_modules')!r}, which match no layer of "
                f"the served base model {self.base_name!r}; serve it with the model it was trained on"
            )
        for key, path in layers.items():
            if not found[path]:
                raise TargetModulesError(f"adapter {files.name!r} names layer {key!r}, absent from {self.base_name!r}")

    def _task_model(self, e: Entry, base: str, trunk: nn.Module) -> nn.Module:
        """``e``'s task model with the shared trunk in it.

        A classifier is built empty (on the meta device) around the trunk: its head's weights all come
        from the adapter, so the base weights are not read again. A language model loads its output
        layer from the base model (then ties it to the shared embeddings when the model ties them).
        """
        if e.task.has_labels:
            net = _classifier_skeleton(e.task.auto_class, trunk, e.info["labels"])
        else:
            net = e.task.load_model(base, {**e.info, "labels": None})
        setattr(net, net.base_model_prefix, trunk)
        if getattr(net.config, "tie_word_embeddings", False):
            net.tie_weights()
        return net.eval().requires_grad_(False).to(self.device)


def _classifier_skeleton(auto_class: str, trunk: nn.Module, labels: list[str]) -> nn.Module:
    """A classifier for ``labels`` of the trunk's architecture, built on the meta device (no weights read).

    Its own trunk is replaced by a placeholder (the caller puts the shared one in); its head gets zeroed
    tensors on the trunk's device, which only the adapter's head copy (loaded next) is computed from."""
    import transformers

    config = copy.deepcopy(trunk.config)
    config.num_labels = len(labels)
    config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
    with torch.device("meta"):
        net = getattr(transformers, auto_class).from_config(config)
    device = next(trunk.parameters()).device
    setattr(net, net.base_model_prefix, nn.Identity())
    net.to_empty(device=device)
    with torch.no_grad():
        for t in (*net.parameters(), *net.buffers()):
            t.zero_()
    return net


def _in_trunk(modules: dict[str, nn.Module], path: str) -> nn.Module | None:
    """The trunk module of a task-model path (``bert.encoder...`` or ``encoder...``), None if absent."""
    _, _, rest = path.partition(".")
    return modules.get(rest) if rest and rest in modules else modules.get(path)


def _tokenizer(folder: Path, base: str, cache: dict[str, Any]) -> Any:
    """The adapter's saved tokenizer, else the base model's; adapters whose tokenizer files are the same
    bytes share one loaded tokenizer (``cache``, keyed by their digest), as every run saves its copy."""
    if not (folder / "tokenizer_config.json").is_file():
        key, source = f"base:{base}", base
    else:
        digest = hashlib.sha256()
        for name in TOKENIZER_FILES:
            path = folder / name
            digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"\0absent"))
        key, source = digest.hexdigest(), str(folder)
    if key not in cache:
        cache[key] = load_tokenizer(source)
    return cache[key]
