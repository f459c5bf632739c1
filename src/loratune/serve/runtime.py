"""A multi-adapter runtime: one base model in memory, many trained adapters on it (no HTTP here).

``Runtime`` is the one class a caller uses; each of its jobs lives in a module of its own:
``registry.py`` (the adapter names, safe paths, and each adapter's files read into one record),
``cache.py`` (least-recently-used unpinned adapters are evicted past ``max_adapters`` or
``adapter_memory_mb`` and reloaded on demand), ``assembly.py`` (each adapter's task model built on the
one shared base trunk, after its checks) and ``predictions.py`` (mixed batches and completions).

An adapter's files are read once per load, and afresh at each load: an adapter retrained in place
serves its new weights and labels once it is unloaded and loaded again. One re-entrant lock serialises
loads, evictions and forwards, so a request always finishes on the adapters it started with.
``__base__`` names the base model alone when it is a language model (its completions beside the
adapters'); a classifier's head exists only in its adapters, so a classifier base has no ``__base__``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loratune.errors import AdapterUnavailableError, LoratuneError, UnknownAdapterError
from loratune.generate import GenerationOptions
from loratune.lora.layer import BASE
from loratune.serve.assembly import Entry, SharedTrunk
from loratune.serve.cache import AdapterCache
from loratune.serve.predictions import Completion, Predictor, trunk_forward
from loratune.serve.registry import Registry, summary_metric
from loratune.tasks import get_task


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
        self._registry = Registry(registry)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = max(1, int(batch_size))
        memory_limit = None if adapter_memory_mb is None else int(adapter_memory_mb * 1024 * 1024)
        self._cache = AdapterCache(max_adapters, memory_limit)
        self._shared = SharedTrunk(model, self.device)
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}

    @property
    def registry(self) -> Path:
        """The registry folder."""
        return self._registry.root

    @registry.setter
    def registry(self, folder: Path) -> None:
        self._registry = Registry(folder)

    @property
    def base_name(self) -> str | None:
        """The served base model (None until the first adapter names it)."""
        return self._shared.base_name

    @property
    def evictions(self) -> int:
        """How many adapters were evicted to keep the budget."""
        return self._cache.evictions

    @property
    def _trunk(self) -> nn.Module | None:
        return self._shared.module

    # ------------------------------------------------------------------ registry
    def names(self) -> list[str]:
        """The adapter names in the registry (sub-folders holding an adapter, named as adapters may be), sorted."""
        return self._registry.names()

    def refused(self) -> dict[str, str]:
        """The registry folders holding an adapter that is not served, each with the reason."""
        return self._registry.refused()

    def list(self) -> list[dict[str, Any]]:
        """One record per registry adapter: task, labels, rank, targets, size, base, metric, state.

        Read without the model lock, so it answers at once while a generation runs: a loaded adapter's
        entry as it stands, another's files read afresh (and not kept). A folder that holds an adapter the
        registry refuses (its name, a path out of it) is listed as unavailable, with the reason."""
        names, refused = self._registry.scan()
        records = [self._record(name, self._peek) for name in names]
        records += [_unreadable(name, reason) for name, reason in refused.items()]
        return sorted(records, key=lambda record: record["name"])

    def _peek(self, name: str) -> Entry:
        """The entry of ``name`` as a reader sees it, changing nothing (no lock needed)."""
        e = self._entries.get(name)
        if e is not None and e.model is not None:
            return e
        fresh = Entry.of(self._registry.read(name))
        fresh.unavailable = e.unavailable if e is not None else False
        return fresh

    def describe(self, name: str) -> dict[str, Any]:
        """``list``'s record of one adapter (an unknown or unsafe name raises)."""
        with self._lock:
            if name != BASE and name not in self._entries:
                self._registry.folder(name)
            return self._record(name)

    def _record(self, name: str, entry: Callable[[str], Entry] | None = None) -> dict[str, Any]:
        """``list``'s record of ``name`` (its entry from ``entry``, by default ``_entry``); an unreadable
        adapter's names its problem (``error``)."""
        if name == BASE:
            e = self._entry(BASE)
            return {
                "name": BASE,
                "task": e.task.name,
                "labels": None,
                "r": None,
                "target_modules": None,
                "size_bytes": 0,
                "base_model": self.base_name,
                "metric": None,
                "loaded": e.model is not None,
                "pinned": True,
                "available": not e.unavailable,
            }
        try:
            e = (entry or self._entry)(name)
        except LoratuneError as err:
            return _unreadable(name, str(err))
        return {
            "name": e.name,
            "task": e.task.name,
            "labels": e.info.get("labels"),
            "r": e.files.config.get("r"),
            "target_modules": e.files.config.get("target_modules"),
            "size_bytes": e.files.nbytes,
            "base_model": e.files.base_model,
            "metric": summary_metric(e.files.folder),
            "loaded": e.model is not None,
            "pinned": self._cache.is_pinned(name),
            "available": not e.unavailable,
        }

    def _entry(self, name: str) -> Entry:
        """The entry of ``name``; an adapter that is not loaded has its files read afresh."""
        if name == BASE:
            if BASE not in self._entries:
                self._entries[BASE] = self._base_entry()
            return self._entries[BASE]
        e = self._entries.get(name)
        if e is not None and e.model is not None:
            return e
        files = self._registry.read(name)
        if e is None:
            e = self._entries[name] = Entry.of(files)
        else:
            e.reread(files)
        return e

    def _known(self, name: str) -> Entry:
        """The entry of ``name`` as it stands: its files are read only for a name not seen before."""
        return self._entries.get(name) or self._entry(name)

    def serves_base(self) -> bool:
        """Whether ``__base__`` (the base model alone) is served: for a language model. It reads files and
        the base model's config, never waiting for the model lock, so it answers while a generation runs."""
        if BASE in self._entries:
            return True
        try:
            self._check_base(self._peek)
        except LoratuneError:
            return False
        return True

    def _base_entry(self) -> Entry:
        """The entry of ``__base__``: the base model alone, served when it is a language model (a classifier
        has no head without an adapter)."""
        self._check_base(self._entry)
        return Entry(BASE, get_task("causal-lm"), {"task": "causal-lm", "labels": None, "base_model": self.base_name})

    def _check_base(self, entry: Callable[[str], Entry]) -> None:
        """Raise unless the base model alone can be served: its name is known and it is a language model
        (a causal-lm adapter, or its config's architecture, says so). ``entry`` reads an adapter's entry."""
        names = self.names()
        if self.base_name is None and names:
            self._shared.base_for(entry(names[0]).files)
        if self.base_name is None:
            raise UnknownAdapterError(f"{BASE!r} needs the base model's name: pass model=NAME (serve --model)")
        if not any(_task_name(entry, n) == "causal-lm" for n in names) and not self._shared.is_language_model():
            raise UnknownAdapterError(
                f"{BASE!r} (the base model alone) is served for language models only: a classifier has no head "
                "without an adapter; name an adapter of the registry"
            )

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
            e = self._known(name)
            self._drop(e)
            self._cache.unpin(name)  # a later load does not pin it again
            e.unavailable = True

    def pin(self, name: str) -> None:
        """Keep adapter ``name`` loaded: eviction never picks it (it is loaded now)."""
        with self._lock:
            self.load(name)
            self._cache.pin(name)

    def unpin(self, name: str) -> None:
        """Let adapter ``name`` be evicted again."""
        with self._lock:
            self._known(name)
            self._cache.unpin(name)

    def check(self, name: object) -> str:
        """``name``'s task, if it can be served now (else the error a request for it gets); nothing is loaded."""
        with self._lock:
            e = self._entry(name)  # type: ignore[arg-type]
            if e.unavailable:
                raise AdapterUnavailableError(f"adapter {e.name!r} was unloaded; load it again to serve it")
            return e.task.name

    def loaded(self) -> list[str]:
        """Loaded adapters, least recently used first (read without the lock: a liveness probe never waits)."""
        return self._cache.loaded()

    def _ensure(self, e: Entry, keep: set[str]) -> None:
        """Load ``e`` if it is not loaded (refusing an unloaded one), mark it used, and keep the budget."""
        if e.unavailable:
            raise AdapterUnavailableError(f"adapter {e.name!r} was unloaded; load it again to serve it")
        if e.name == BASE:  # the base model's output layer: not an adapter, never evicted or counted
            if e.model is None:
                self._shared.build_base(e)
            return
        built = e.model is None
        if built:
            self._shared.build(e)
        self._cache.use(e.name, e.files.nbytes)
        try:
            self._cache.evict(keep, lambda victim: self._drop(self._entries[victim]))
        except LoratuneError:
            if built:  # over the budget with it: it leaves again, as it came
                self._drop(e)
            raise

    def _drop(self, e: Entry) -> None:
        """Remove ``e``'s adapter from the shared trunk and its task model from memory."""
        self._shared.remove(e)
        self._cache.remove(e.name)

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
            return self._predictor().predict(items, entries, self.batch_size, kw)

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
            return self._predictor().complete(e, prompt, messages, options, raw, stream)

    def _predictor(self) -> Predictor:
        return Predictor(self._trunk, self.device, self._trunk_forward)

    def _trunk_forward(self, batch: dict[str, torch.Tensor], names: list[str]) -> Any:
        """The shared trunk once over the padded ``batch``, row ``i`` through adapter ``names[i]``."""
        return trunk_forward(self._trunk, batch, names)


def _unreadable(name: str, reason: str) -> dict[str, Any]:
    """``list``'s record of a registry folder that cannot be served, with the reason (``error``)."""
    return {"name": name, "loaded": False, "pinned": False, "available": False, "error": reason}


def _task_name(entry: Callable[[str], Entry], name: str) -> str | None:
    """The task of registry adapter ``name`` (its entry from ``entry``); None when it cannot be read."""
    try:
        return entry(name).task.name
    except LoratuneError:
        return None
