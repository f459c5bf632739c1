"""A multi-adapter runtime: one base model in memory, many trained adapters on it (no HTTP here).

Design. The frozen base *trunk* (the module at ``base_model_prefix``, e.g. ``bert``) is loaded once.
Each loaded adapter gets its own task model (sequence or token classifier, causal LM) built for its
labels, whose trunk attribute is set to that one shared trunk; the adapter's LoRA layers are injected
into the shared trunk under the adapter's name, and its head copy lives in its own task model. The base
weights are never modified (no merging).

A mixed batch runs the shared trunk once per task family with per-row LoRA routing
(``lora.mixed_adapters``): each item is encoded by its adapter's task (``Task.encode``), the family's
inputs are padded together, each adapter's head runs on its own rows of the shared output, and each row
is decoded by its task (``Task.decode``) into the record ``predict`` gives. Causal-LM items generate
one at a time. Least-recently-used unpinned adapters are evicted past ``max_adapters`` or
``adapter_memory_mb`` and reloaded on demand. One re-entrant lock serialises loads, evictions and
forwards, so a request always finishes on the adapters it started with. ``__base__`` names the base
model alone when it is a language model (its completions beside the adapters'); a classifier's head
exists only in its adapters, so a classifier base has no ``__base__``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.artifacts import artifact_task, base_fingerprint, labels_from_weights, read_task_info
from loratune.data.lm import encode_messages, encode_prompt
from loratune.errors import (
    AdapterFileError,
    AdapterNameError,
    AdapterShapeError,
    AdapterUnavailableError,
    LoratuneError,
    TargetModulesError,
    UnknownAdapterError,
)
from loratune.generate import GenerationOptions, generate_ids, keep_last, positions, prompt_format, stopped_at_eos
from loratune.lora import load_adapter, read_adapter_config, read_adapter_shapes
from loratune.lora.io import PREFIX, WEIGHTS_NAME
from loratune.lora.layer import BASE, LoraLinear, is_conv1d
from loratune.lora.model import ADAPTER_NAME, adapter_configs, check_adapter_name, delete_adapter, mixed_adapters
from loratune.models import load_pretrained_model, load_tokenizer, use_tokenizer_pad_id
from loratune.tasks import Task, get_task
from loratune.tasks.base import Encoded, unpad_row

CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Completion:
    """A causal-lm adapter's answer: its text, the prompt and answer token counts, and why it stopped
    (``"stop"``: an end-of-sequence token; ``"length"``: ``max_new_tokens`` or the context ran out)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class _Entry:
    """One registry adapter: where it is, what it is, and (once loaded) its task model."""

    name: str
    folder: Path
    info: dict[str, Any]
    task: Task
    nbytes: int
    model: nn.Module | None = None
    tokenizer: Any = None
    pinned: bool = False
    unavailable: bool = False


class _Given(nn.Module):
    """Stands for the trunk in one head call: returns the trunk outputs it was given (the shared forward's
    rows of one adapter), so the task model's own head code runs on them."""

    def __init__(self, outputs: Any) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, *args: Any, **kw: Any) -> Any:
        return self.outputs


def _rows_of(outputs: Any, index: torch.Tensor) -> Any:
    """The rows ``index`` of a trunk's batched outputs (its tensor fields only)."""
    fields = {k: v[index] for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    return type(outputs)(**fields)


class Runtime:
    """Adapters of a registry folder served on one shared base model (see the module docstring).

    Args:
        registry: a folder with one trained run's ``adapter/`` per sub-folder (or ``sub-folder/adapter``).
        model: the base model; default: the adapters' ``base_model`` (all must share it).
        max_adapters: at most this many loaded adapters (least recently used unpinned ones are evicted).
        adapter_memory_mb: at most this many MB of adapter weights loaded.
        device: where the model runs (default CPU).
        batch_size: at most this many items of one task family share a trunk forward.
    """

    def __init__(
        self,
        registry: Path,
        model: str | None = None,
        *,
        max_adapters: int | None = None,
        adapter_memory_mb: float | None = None,
        device: torch.device | str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.registry = Path(registry)
        if not self.registry.is_dir():
            raise AdapterFileError(f"adapter registry {self.registry} is not a folder; pass a folder of adapters")
        self.base_name = model
        self._explicit_base = model is not None
        self.max_adapters = max_adapters
        self.memory_limit = None if adapter_memory_mb is None else int(adapter_memory_mb * 1024 * 1024)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = max(1, int(batch_size))
        self.evictions = 0
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._trunk: nn.Module | None = None
        self._tokenizers: dict[str, Any] = {}  # loaded tokenizers by the digest of their files
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ registry
    def names(self) -> list[str]:
        """The adapter names in the registry (sub-folders holding an adapter, named as adapters may be), sorted."""
        found = []
        for child in sorted(self.registry.iterdir()):
            inside = child.resolve().is_relative_to(self.registry.resolve())
            if ADAPTER_NAME.fullmatch(child.name) and inside and self._adapter_folder(child) is not None:
                found.append(child.name)
        return found

    def list(self) -> list[dict[str, Any]]:
        """One record per registry adapter: task, labels, rank, targets, size, base, metric, state."""
        with self._lock:
            return [self._record(name) for name in self.names()]

    def describe(self, name: str) -> dict[str, Any]:
        """``list``'s record of one adapter (an unknown or unsafe name raises)."""
        with self._lock:
            self._entry(name)
            return self._record(name)

    def _record(self, name: str) -> dict[str, Any]:
        """``list``'s record of ``name``; an unreadable adapter's names its problem (``error``)."""
        if name == BASE:
            e = self._entries[BASE]
            return {"name": BASE, "task": e.task.name, "labels": None, "r": None, "target_modules": None,
                    "size_bytes": 0, "base_model": self.base_name, "metric": None, "loaded": e.model is not None,
                    "pinned": True, "available": not e.unavailable}  # fmt: skip
        try:
            e = self._entry(name)
            config = read_adapter_config(e.folder)
        except LoratuneError as err:
            return {"name": name, "loaded": False, "pinned": False, "available": False, "error": str(err)}
        return {
            "name": e.name,
            "task": e.task.name,
            "labels": e.info.get("labels"),
            "r": config.get("r"),
            "target_modules": config.get("target_modules"),
            "size_bytes": e.nbytes,
            "base_model": e.info.get("base_model") or config.get("base_model_name_or_path"),
            "metric": _summary_metric(e.folder),
            "loaded": e.model is not None,
            "pinned": e.pinned,
            "available": not e.unavailable,
        }

    @staticmethod
    def _adapter_folder(child: Path) -> Path | None:
        for folder in (child, child / "adapter"):
            if (folder / CONFIG).is_file():
                return folder
        return None

    def _safe_folder(self, name: object) -> Path:
        """The adapter folder of ``name``, a plain folder name inside the registry (else an error)."""
        if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
            raise AdapterNameError(f"adapter name {name!r} is not a folder name in the registry; use e.g. 'sentiment'")
        check_adapter_name(name)
        path = self.registry / name
        if not path.resolve().is_relative_to(self.registry.resolve()):
            raise AdapterNameError(f"adapter {name!r} points outside the registry {self.registry}; copy it in instead")
        folder = self._adapter_folder(path) if path.is_dir() else None
        if folder is None:
            listing = ", ".join(self.names()) or "none"
            raise UnknownAdapterError(f"unknown adapter {name!r}; the registry {self.registry} holds: {listing}")
        return folder

    def _entry(self, name: str) -> _Entry:
        """The registry entry of ``name`` (read on first use)."""
        if name == BASE and name not in self._entries:
            self._entries[name] = self._base_entry()
        if name not in self._entries:
            folder = self._safe_folder(name)
            info = read_task_info(folder)
            task = artifact_task(folder, info)
            weights = folder / WEIGHTS_NAME
            nbytes = weights.stat().st_size if weights.is_file() else 0
            self._entries[name] = _Entry(name, folder, info, task, nbytes)
        return self._entries[name]

    # ------------------------------------------------------------------ loading
    def load(self, name: str) -> None:
        """Load adapter ``name`` (again available after ``unload``); evicts others past the budget."""
        with self._lock:
            e = self._entry(name)
            e.unavailable = False
            self._ensure(e, keep={name})

    def unload(self, name: str) -> None:
        """Unload adapter ``name`` and refuse requests for it until ``load`` is called again."""
        with self._lock:
            e = self._entry(name)
            self._drop(e)
            e.unavailable = True

    def pin(self, name: str) -> None:
        """Keep adapter ``name`` loaded: eviction never picks it (it is loaded now)."""
        with self._lock:
            self.load(name)
            self._entry(name).pinned = True

    def unpin(self, name: str) -> None:
        """Let adapter ``name`` be evicted again."""
        with self._lock:
            self._entry(name).pinned = False

    def check(self, name: object) -> str:
        """``name``'s task, if it can be served now (else the error a request for it gets); nothing is loaded."""
        with self._lock:
            e = self._entry(name)  # type: ignore[arg-type]
            if e.unavailable:
                raise AdapterUnavailableError(f"adapter {e.name!r} was unloaded; load it again to serve it")
            return e.task.name

    def loaded(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _ensure(self, e: _Entry, keep: set[str]) -> None:
        """Load ``e`` if it is not loaded (refusing an unloaded one), mark it used, and keep the budget."""
        if e.unavailable:
            raise AdapterUnavailableError(f"adapter {e.name!r} was unloaded; load it again to serve it")
        if e.model is None:
            self._load_entry(e)
        if e.name == BASE:  # the base model's output layer: not an adapter, never evicted or counted
            return
        self._loaded[e.name] = None
        self._loaded.move_to_end(e.name)
        self._evict(keep)

    def _evict(self, keep: set[str]) -> None:
        """Evict least recently used unpinned adapters (not in ``keep``) while over the budget."""
        while self._over_budget():
            victim = next((n for n in self._loaded if n not in keep and not self._entries[n].pinned), None)
            if victim is None:
                raise LoratuneError(
                    f"the {len(self._loaded)} adapters this request needs or pinned ones exceed the adapter budget; "
                    "raise max_adapters / adapter_memory_mb or unpin some"
                )
            self._drop(self._entries[victim])
            self.evictions += 1

    def _over_budget(self) -> bool:
        too_many = self.max_adapters is not None and len(self._loaded) > self.max_adapters
        size = sum(self._entries[n].nbytes for n in self._loaded)
        return too_many or (self.memory_limit is not None and size > self.memory_limit)

    def _drop(self, e: _Entry) -> None:
        """Remove ``e``'s LoRA layers from the shared trunk and drop its task model (and head)."""
        if e.model is None:
            return
        if e.name != BASE:
            delete_adapter(e.model, e.name)
            adapter_configs(self._trunk).pop(e.name, None)
        e.model, e.tokenizer = None, None
        self._loaded.pop(e.name, None)

    def _base_for(self, e: _Entry) -> str:
        """The shared base model name; an adapter of another base model is refused."""
        own = e.info.get("base_model") or read_adapter_config(e.folder).get("base_model_name_or_path")
        if self.base_name is None:
            if not own:
                raise AdapterFileError(f"adapter {e.name!r} does not name its base model; pass model=NAME_OR_PATH")
            self.base_name = own
        elif not self._explicit_base and own and own != self.base_name:
            raise AdapterShapeError(
                f"adapter {e.name!r} was trained on {own!r}, and this registry serves {self.base_name!r}; "
                "keep one base model per registry (or pass model= to serve them all on one)"
            )
        return self.base_name

    def _base_entry(self) -> _Entry:
        """The entry of ``__base__``: the base model alone, served when it is a language model (a classifier
        has no head without an adapter)."""
        names = self.names()
        if self.base_name is None and names:
            self._base_for(self._entry(names[0]))
        if self.base_name is None:
            raise UnknownAdapterError(f"{BASE!r} needs the base model's name: pass model=NAME (serve --model)")
        lm = any(self._task_name(n) == "causal-lm" for n in names)
        if not lm:
            config = self._shared_trunk(None).config
            lm = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in getattr(config, "architectures", None) or [])
        if not lm:
            raise UnknownAdapterError(
                f"{BASE!r} (the base model alone) is served for language models only: a classifier has no head "
                "without an adapter; name an adapter of the registry"
            )
        info = {"task": "causal-lm", "labels": None, "base_model": self.base_name}
        return _Entry(BASE, self.registry, info, get_task("causal-lm"), 0, pinned=True)

    def _task_name(self, name: str) -> str | None:
        """The task of registry adapter ``name``; None when it cannot be read."""
        try:
            return self._entry(name).task.name
        except LoratuneError:
            return None

    def _shared_trunk(self, e: _Entry | None) -> nn.Module:
        """The shared trunk, loaded on first use as the base model's ``AutoModel`` (``e``: an entry whose
        base model it is, or None once the base model is known)."""
        if self._trunk is None:
            trunk = load_pretrained_model("AutoModel", self._base_for(e) if e is not None else self.base_name)
            trunk.eval().requires_grad_(False).to(self.device)
            self._trunk, self._fingerprint = trunk, base_fingerprint(trunk)
        return self._trunk

    def _load_entry(self, e: _Entry) -> None:
        """Build ``e``'s task model on the shared trunk and inject its adapter, after the checks."""
        base = self._base_for(e) if e.name != BASE else self.base_name
        trunk = self._shared_trunk(e)
        if e.name == BASE:  # no adapter: the base model's own output layer on the shared trunk
            e.model, e.tokenizer = self._task_model(e, base, trunk), load_tokenizer(base)
            use_tokenizer_pad_id(e.model, e.tokenizer)
            return
        self._check_fits(e, trunk)
        tokenizer = _tokenizer(e.folder, base, self._tokenizers)  # before the trunk changes: nothing fails after that
        net = self._task_model(e, base, trunk)
        use_tokenizer_pad_id(net, tokenizer)
        load_adapter(net, e.folder, adapter_name=e.name)
        adapter_configs(trunk)[e.name] = adapter_configs(net)[e.name]
        e.model, e.tokenizer = net, tokenizer

    def _task_model(self, e: _Entry, base: str, trunk: nn.Module) -> nn.Module:
        """``e``'s task model with the shared trunk in it.

        A classifier is built empty (on the meta device) around the trunk: its head's weights all come
        from the adapter, so the base weights are not read again. A language model loads its output
        layer from the base model (then ties it to the shared embeddings when the model ties them).
        """
        if e.task.has_labels:
            labels = e.info.get("labels") or labels_from_weights(e.folder)  # PEFT-saved: from the head size
            e.info = {**e.info, "labels": labels}
            net = _classifier_skeleton(e.task.auto_class, trunk, labels)
        else:
            net = e.task.load_model(base, {**e.info, "labels": None})
        setattr(net, net.base_model_prefix, trunk)
        if getattr(net.config, "tie_word_embeddings", False):
            net.tie_weights()
        return net.eval().requires_grad_(False).to(self.device)

    def _check_fits(self, e: _Entry, trunk: nn.Module) -> None:
        """Refuse an adapter of another base model (fingerprint, shapes) or whose layers the trunk lacks."""
        expected = e.info.get("base_model_fingerprint")
        if expected and self._fingerprint not in (None, expected):
            raise AdapterShapeError(
                f"adapter {e.name!r} was trained on base model {e.info.get('base_model')!r}, not on the served "
                f"{self.base_name!r} (its embeddings differ); serve it from a registry of that base model"
            )
        lora = {k: s for k, s in read_adapter_shapes(e.folder).items() if ".lora_" in k}
        paths = {k.removeprefix(PREFIX).split(".lora_")[0] for k in lora}
        modules = dict(trunk.named_modules())
        found = {p: _in_trunk(modules, p) for p in paths}
        if not any(found.values()):
            raise TargetModulesError(
                f"adapter {e.name!r} targets {read_adapter_config(e.folder).get('target_modules')!r}, which match "
                f"no layer of the served base model {self.base_name!r}; serve it with the model it was trained on"
            )
        for key, shape in lora.items():
            module = found[key.removeprefix(PREFIX).split(".lora_")[0]]
            if module is None:
                raise TargetModulesError(f"adapter {e.name!r} names layer {key!r}, absent from {self.base_name!r}")
            in_f, out_f = _features(module)
            ok = shape[1] == in_f if ".lora_A." in key else shape[0] == out_f
            if not ok:
                raise AdapterShapeError(
                    f"adapter {e.name!r} tensor {key!r} has shape {shape}, which does not fit {self.base_name!r}; "
                    "it was trained on another base model"
                )

    # ------------------------------------------------------------------ predicting
    def predict(self, name: str, texts: Sequence[str], **kw: Any) -> list[dict[str, Any]]:
        """Records of ``name``'s task ``predict`` for ``texts`` (loading the adapter if evicted)."""
        return self.predict_mixed([(name, t) for t in texts], **kw)

    def predict_mixed(self, items: Sequence[tuple[str, str]], **kw: Any) -> list[dict[str, Any]]:
        """One record per ``(adapter name, text)`` in input order; one shared trunk forward per task family
        (per ``batch_size`` items of it)."""
        with self._lock:
            names = {n for n, _ in items}
            entries = {n: self._entry(n) for n in names}
            for n in names:
                self._ensure(entries[n], keep=names)
            out: list[dict[str, Any] | None] = [None] * len(items)
            families: dict[str, list[int]] = {}
            for i, (n, _) in enumerate(items):
                families.setdefault(entries[n].task.name, []).append(i)
            for family in families.values():
                for lo in range(0, len(family), self.batch_size):
                    rows = family[lo : lo + self.batch_size]
                    for i, record in zip(rows, self._predict_family(items, rows, entries, kw), strict=True):
                        out[i] = record
            return out  # type: ignore[return-value]

    @torch.no_grad()
    def _predict_family(
        self, items: Sequence[tuple[str, str]], rows: list[int], entries: dict[str, _Entry], kw: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Records for ``rows`` of one task family: encode each item with its task, run the trunk once over
        them all, each adapter's head on its own rows, and decode each row with its task."""
        first = entries[items[rows[0]][0]]
        if not first.task.has_labels:  # causal-lm: generation runs the trunk per token; per item then
            return [self._predict_one(entries[items[i][0]], items[i][1], kw) for i in rows]
        encoded = [_encode(entries[items[i][0]], items[i][1], kw) for i in rows]
        ran = [j for j, x in enumerate(encoded) if x.inputs[0] is not None]
        inputs = [_as_tensors(encoded[j].inputs[0], self.device) for j in ran]
        names = [items[rows[j]][0] for j in ran]
        batch = _pad(inputs, first.tokenizer) if inputs else {}
        outputs = self._trunk_forward(batch, names)
        logits = self._heads(outputs, batch, names, entries)
        found = dict(zip(ran, logits, strict=True))
        return [_decode(entries[items[i][0]], found.get(j), encoded[j]) for j, i in enumerate(rows)]

    def _heads(
        self, outputs: Any, batch: dict[str, torch.Tensor], names: list[str], entries: dict[str, _Entry]
    ) -> list[torch.Tensor]:
        """Each row's logits from its adapter's head, one head call per adapter, padding cut off."""
        logits: list[torch.Tensor | None] = [None] * len(names)
        for name in dict.fromkeys(names):
            index = torch.tensor([k for k, n in enumerate(names) if n == name], device=self.device)
            rows = _head_logits(entries[name], _rows_of(outputs, index), {k: v[index] for k, v in batch.items()})
            for k, row in zip(index.tolist(), rows, strict=True):
                logits[k] = unpad_row(row, batch["attention_mask"][k])
        return logits  # type: ignore[return-value]

    def complete(
        self,
        name: str,
        *,
        prompt: str | None = None,
        messages: Sequence[dict[str, str]] | None = None,
        options: GenerationOptions | None = None,
        raw: bool = False,
        stream: Any = None,
    ) -> Completion:
        """Causal-lm adapter ``name``'s answer to ``prompt`` (formatted as its training data, unless ``raw``)
        or to the chat ``messages``; the prompt keeps its last tokens when it and the answer exceed the
        context. ``stream``: a text file the tokens are written to as they come."""
        options = (options or GenerationOptions()).check()
        with self._lock:
            e = self._entry(name)
            self._ensure(e, keep={name})
            if e.task.has_labels:
                raise LoratuneError(
                    f"adapter {name!r} is a {e.task.name} adapter; completions need a causal-lm one (use /v1/predict)"
                )
            fmt = prompt_format(e.info, e.tokenizer, raw=raw)
            if messages is not None:
                ids = encode_messages(e.tokenizer, fmt, messages)
            else:
                ids = encode_prompt(e.tokenizer, fmt, [(prompt or "", None)])
            context = positions(e.model) or 2048
            ids = keep_last(ids, context - min(options.max_new_tokens, context // 2))
            with mixed_adapters(self._trunk, [e.name]):
                new = generate_ids(e.model, e.tokenizer, ids, options, stream=stream, stream_end="")
            text = e.tokenizer.decode(new, skip_special_tokens=True)
            reason = "stop" if stopped_at_eos(e.model, e.tokenizer, new) else "length"
            return Completion(text, len(ids), len(new), reason)

    def _predict_one(self, e: _Entry, text: str, kw: dict[str, Any]) -> dict[str, Any]:
        """One record from ``e``'s model alone (its rows routed through its adapter)."""
        with mixed_adapters(self._trunk, [e.name]):
            return _task_predict(e, text, kw)

    def _trunk_forward(self, batch: dict[str, torch.Tensor], names: list[str]) -> Any:
        """The shared trunk once over the padded ``batch``, row ``i`` through adapter ``names[i]``."""
        if not names:
            return None
        with mixed_adapters(self._trunk, names):
            return self._trunk(**batch)


def _classifier_skeleton(auto_class: str, trunk: nn.Module, labels: list[str]) -> nn.Module:
    """A classifier for ``labels`` of the trunk's architecture, built on the meta device (no weights read).

    Its own trunk is replaced by a placeholder (the caller puts the shared one in); its head gets zeroed
    tensors on the trunk's device, which only the adapter's head copy (loaded next) is computed from."""
    import copy

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


def _head_logits(e: _Entry, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``e``'s task model's head on the given trunk ``outputs`` of ``batch``'s rows: float logits on the CPU."""
    prefix = e.model.base_model_prefix
    trunk = getattr(e.model, prefix)
    setattr(e.model, prefix, _Given(outputs))
    try:
        return e.model(**batch).logits.float().cpu()
    finally:
        setattr(e.model, prefix, trunk)


def _task_info(e: _Entry) -> dict[str, Any]:
    """``e``'s ``loratune.json`` record as its task reads it (labels only for a classifier)."""
    return {**e.info, "labels": e.info.get("labels") if e.task.has_labels else None}


def _encode(e: _Entry, text: str, kw: dict[str, Any]) -> Encoded:
    """``e``'s task encoding of one text, at the adapter's ``max_length`` unless ``kw`` says otherwise."""
    max_length = kw.get("max_length") or e.info.get("max_length") or 256
    return e.task.encode([text], e.tokenizer, _task_info(e), max_length=max_length)


def _decode(e: _Entry, logits: torch.Tensor | None, encoded: Encoded) -> dict[str, Any]:
    """``e``'s task record of one encoded text from its logits row."""
    return e.task.decode([logits], encoded, _task_info(e))[0]


def _as_tensors(inputs: dict[str, list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """One text's encoded inputs as a batch of one row on ``device``."""
    return {k: torch.tensor([v], device=device) for k, v in inputs.items()}


def _task_predict(e: _Entry, text: str, kw: dict[str, Any]) -> dict[str, Any]:
    """``e``'s task ``predict`` for one text, at the adapter's ``max_length`` unless ``kw`` says otherwise."""
    options = {"max_length": e.info.get("max_length") or 256, **kw}
    return e.task.predict(e.model, e.tokenizer, [text], _task_info(e), **options)[0]


def _pad(inputs: list[dict[str, torch.Tensor]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """One batch from single-row inputs, padded on the right whatever the tokenizer's side: ids with the pad
    id, masks and type ids with 0. A token's output then does not depend on the padding (positions start
    at 0 in every row, and a causal model never looks ahead)."""
    length = max(x["input_ids"].shape[1] for x in inputs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for key in inputs[0]:
        rows = []
        for x in inputs:
            t = x[key]
            fill = t.new_full((1, length - t.shape[1]), pad_id if key == "input_ids" else 0)
            rows.append(torch.cat([t, fill], dim=1))
        batch[key] = torch.cat(rows)
    return batch


def _in_trunk(modules: dict[str, nn.Module], path: str) -> nn.Module | None:
    """The trunk module of a task-model path (``bert.encoder...`` or ``encoder...``), None if absent."""
    _, _, rest = path.partition(".")
    return modules.get(rest) if rest and rest in modules else modules.get(path)


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a linear layer, ``LoraLinear`` or ``Conv1D``."""
    if isinstance(module, LoraLinear):
        return module.in_features, module.out_features
    w = module.weight
    return (w.shape[0], w.shape[1]) if is_conv1d(module) else (w.shape[1], w.shape[0])


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)


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


def _summary_metric(folder: Path) -> dict[str, Any] | None:
    """The run's metric from ``summary.json`` beside the adapter (or in its parent): test, else best."""
    for path in (folder / "summary.json", folder.parent / "summary.json"):
        if path.is_file():
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            name = summary.get("metric")
            for key in ("test", "best", "final"):
                if isinstance(summary.get(key), dict) and name in summary[key]:
                    return {"name": name, "value": summary[key][name], "split": key}
            return None
    return None
