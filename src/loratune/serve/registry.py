"""The adapter registry on disk: its names, safe paths, and each adapter's files read into one record.

A registry is a folder with one adapter per sub-folder ``NAME``: the adapter files in ``NAME`` itself
or in ``NAME/adapter`` (a training run's folder). Every path the runtime reads from it (the adapter
folder, each file in it, the run's ``summary.json``) is resolved and must lie inside the registry, so
no symlink at any level leads out of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.artifacts import artifact_task, read_task_info
from loratune.errors import AdapterFileError, AdapterNameError, LoratuneError, UnknownAdapterError
from loratune.lora import read_adapter_config, read_adapter_shapes
from loratune.lora.io import CONFIG_NAME, WEIGHTS_NAME
from loratune.lora.model import check_adapter_name
from loratune.tasks import Task

SUMMARY = "summary.json"
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


@dataclass(frozen=True)
class AdapterFiles:
    """One registry adapter's files, read once: its folder (resolved), ``adapter_config.json``, the
    shapes of its weights, ``loratune.json`` (``info``), its task and the size of its weights."""

    name: str
    folder: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    info: dict[str, Any]
    task: Task
    nbytes: int

    @property
    def base_model(self) -> str | None:
        """The base model the adapter names: ``loratune.json``'s, else ``adapter_config.json``'s."""
        return self.info.get("base_model") or self.config.get("base_model_name_or_path")


class Registry:
    """The adapters of folder ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AdapterFileError(f"adapter registry {self.root} is not a folder; pass a folder of adapters")

    def names(self) -> list[str]:
        """The adapter names in the registry (safe sub-folders holding an adapter), sorted."""
        return self.scan()[0]

    def refused(self) -> dict[str, str]:
        """The sub-folders that hold an adapter the registry does not serve, each with the reason: an
        unsafe folder name (a dot, a space, other letters than ASCII, more than 64 characters) or a path
        that leads out of the registry. Hidden folders (a leading dot) are skipped, as ``ls`` does."""
        return self.scan()[1]

    def scan(self) -> tuple[list[str], dict[str, str]]:
        """``names()`` and ``refused()`` from one pass over the registry folder."""
        found, refused = [], {}
        for child in sorted(self.root.iterdir()):
            try:
                if self._find(child.name) is not None:
                    found.append(child.name)
            except LoratuneError as err:
                if not child.name.startswith(".") and _holds_adapter(child):
                    refused[child.name] = f"{err}; rename or copy the folder to serve it"
        return found, refused

    def folder(self, name: object) -> Path:
        """The resolved adapter folder of ``name``, a plain folder name inside the registry (else an error)."""
        folder = self._find(name)
        if folder is None:
            listing = ", ".join(self.names()) or "none"
            raise UnknownAdapterError(f"unknown adapter {name!r}; the registry {self.root} holds: {listing}")
        return folder

    def read(self, name: str) -> AdapterFiles:
        """Adapter ``name``'s files, read now (each once)."""
        folder = self.folder(name)
        config = read_adapter_config(folder)
        info = read_task_info(folder)
        weights = folder / WEIGHTS_NAME
        nbytes = weights.stat().st_size if weights.is_file() else 0
        shapes = read_adapter_shapes(folder)
        return AdapterFiles(name, folder, config, shapes, info, artifact_task(folder, info, config), nbytes)

    def _find(self, name: object) -> Path | None:
        """``name``'s resolved adapter folder, None if it holds no adapter; an unsafe name, or a path of it
        that leads out of the registry, raises ``AdapterNameError``."""
        if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
            raise AdapterNameError(f"adapter name {name!r} is not a folder name in the registry; use e.g. 'sentiment'")
        check_adapter_name(name)
        path = self.root / name
        self._check_inside(name, path)
        for folder in (path, path / "adapter"):
            if (folder / CONFIG_NAME).is_file():
                self._check_inside(name, folder)
                folder = folder.resolve()
                for inner in (folder.parent / SUMMARY, *folder.iterdir()):  # what the runtime and tokenizer read
                    self._check_inside(name, inner)
                return folder
        return None

    def _check_inside(self, name: str, path: Path) -> None:
        """Raise unless ``path``, resolved, lies inside the registry."""
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise AdapterNameError(
                f"adapter {name!r} points outside the registry {self.root} ({path.name} leads out of it); "
                "copy it in instead"
            )


def _holds_adapter(path: Path) -> bool:
    """Whether registry entry ``path`` has an adapter's config, in itself or in ``adapter/``."""
    try:
        return any((folder / CONFIG_NAME).is_file() for folder in (path, path / "adapter"))
    except OSError:  # a name too long for a path under it, a loop of symlinks
        return False


def summary_metric(folder: Path) -> dict[str, Any] | None:
    """The run's metric from ``summary.json`` beside the adapter (or in its parent): test, else best."""
    for path in (folder / SUMMARY, folder.parent / SUMMARY):
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
