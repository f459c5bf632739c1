"""Reading a task's data: the source resolved, then its files (or hub splits) read by the task's schema.

A task's :class:`Schema` says only what is its own: how its folders are laid out (``layout``), what a
record is called (``unit``), and how one file or one hub split becomes its records. :func:`read_source`
does the rest for every task; the split policy (``data.splits``) then picks the records of each split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets

from loratune.data.hub_datasets import load_hub
from loratune.data.options import DataOptions
from loratune.data.resolve import ALIAS, FILES, FOLDER, HUB, Layout, Source, resolve
from loratune.data.splits import Split
from loratune.errors import DataError


class Schema(Protocol):
    """A task's records: how its data is laid out and how a file or a hub split is read."""

    layout: Layout
    unit: str  # what one record is called in messages: rows, sentences, records

    def read_file(self, path: Path, options: DataOptions, train: Any = None) -> Any:
        """One file's split; ``train``: the train split already read, when this is an eval file."""

    def read_dataset(self, ds: datasets.Dataset, name: str, options: DataOptions) -> Any:
        """One hub split (a ``datasets.Dataset``)."""

    def is_labelled(self, split: Any) -> bool:
        """Whether a hub split has labels to learn or score (GLUE's test split has none)."""

    def read_alias(self, name: str, options: DataOptions) -> tuple[Any, str]:
        """A packaged alias's train split and its description (for a layout with ``aliases``)."""


@dataclass
class Read:
    """The splits read: ``eval`` None means it is held out of ``train``; ``val`` None, none of its own."""

    train: Any
    eval: Any | None
    val: Any | None
    source: str  # where they came from, in words


def read_source(options: DataOptions, schema: Schema) -> Read:
    """The train, eval and validation splits that ``options`` name, read by ``schema``."""
    options.check(schema.unit)
    source = resolve(options, schema.layout)
    if source.kind == ALIAS:
        train, described = schema.read_alias(source.name, options)
        return Read(train, None, None, described)
    if source.kind == HUB:
        train, ev, val = _read_hub(source, schema, options)
    elif source.kind == FILES:
        train, ev, val = _read_files(source, schema, options)
    else:
        train, ev, val = _read_folder(source, schema, options)
    if options.val_size is not None:  # --val-size holds the validation split out of train instead
        val = None
    return Read(train, ev, val, describe(source, ev, val))


def _read_files(source: Source, schema: Schema, options: DataOptions) -> tuple[Any, Any, None]:
    train = schema.read_file(source.train, options)
    if not source.tests:
        return train, None, None
    if source.tests[0].resolve() == source.train.resolve():  # e.g. `loratune eval --eval-file`: read it once
        return train, train, None
    return train, schema.read_file(source.tests[0], options, train), None


def _read_folder(source: Source, schema: Schema, options: DataOptions) -> tuple[Any, Any, Any]:
    """A folder's train split, its eval split (the test file, else the validation file) and its validation split
    (the validation file next to a test file); an unreadable validation file next to a good test file is left out."""
    train = schema.read_file(source.train, options)
    test = _first(source.tests, "test", schema, options, train)
    val = _first(source.validations, "validation", schema, options, train)
    if test is not None and not isinstance(test, DataError):
        return train, test, (None if isinstance(val, DataError) else val)
    if val is not None and not isinstance(val, DataError):
        return train, val, None
    if test is not None or val is not None:
        raise test or val  # e.g. a test file without labels, and nothing else to evaluate on
    return train, None, None


def _first(paths: tuple[Path, ...], kind: str, schema: Schema, options: DataOptions, train: Any) -> Any:
    """The first of ``paths`` that reads, as a ``kind`` split; the first error when none does (with
    ``layout.fallback``; without it the first path's error is raised); None when there is no path."""
    error: DataError | None = None
    for path in paths:
        try:
            split = schema.read_file(path, options, train)
        except DataError as err:  # e.g. an unlabelled GLUE test.tsv: try the next one
            if not schema.layout.fallback:
                raise
            error = error or err
            continue
        split.kind = kind
        return split
    return error


def _read_hub(source: Source, schema: Schema, options: DataOptions) -> tuple[Any, Any, Any]:
    """A hub dataset: its test split (labelled) is the eval split and its validation split the validation one;
    without a labelled test split, the validation split is the eval split."""
    name, splits = source.name, load_hub(source.name, source.revision)
    if "train" not in splits:
        raise DataError(f"hub dataset '{name}' has no train split (splits: {', '.join(splits)}); pass local files.")
    train = schema.read_dataset(splits["train"], f"{name} [train]", options)
    found = {}
    for kind in ("test", "validation"):
        split = schema.read_dataset(splits[kind], f"{name} [{kind}]", options) if kind in splits else None
        if split is not None and schema.is_labelled(split):
            split.kind = kind
            found[kind] = split
    if not found and ("test" in splits or "validation" in splits):
        raise DataError(
            f"hub dataset '{name}' has no labelled test or validation split (splits: {', '.join(splits)}); "
            "pass local files with --train-file/--eval-file."
        )
    if "test" in found:
        return train, found["test"], found.get("validation")
    return train, found.get("validation"), None


def describe(source: Source, ev: Split | None, val: Split | None) -> str:
    """Where the splits came from, in words: the files, the folder and its files, or the hub dataset's splits."""
    if source.kind == FILES:
        if not source.tests:
            return source.name
        if source.tests[0].resolve() == source.train.resolve():
            return str(source.tests[0])
        return f"train: {source.train}, eval: {source.tests[0]}"
    used = [split.name for split in (ev, val) if split is not None]
    if source.kind == FOLDER:
        return f"{source.name} ({source.train.name}" + "".join(f" + {name}" for name in used) + ")"
    assert source.kind == HUB
    return f"hub dataset '{source.name}' (train" + "".join(f" + {n.split('[')[-1].rstrip(']')}" for n in used) + ")"


def pick_column(
    columns: list[str],
    given: str | None,
    candidates: Sequence[str],
    kind: str,
    name: str,
    what: str | None = None,
    *,
    lenient: bool = False,
) -> str:
    """The column of ``name`` that ``--{kind}-column`` gives, else the first of ``candidates`` (any case).

    ``what``: the column in messages (default ``kind``). With ``lenient`` (an eval file), a given name that
    this file lacks falls back to the candidates.
    """
    flag = f"--{kind}-column"
    if given is not None:
        if given in columns:
            return given
        if not lenient:
            raise DataError(
                f"column '{given}' not found in {name}; the columns are: {', '.join(columns)}. Pass {flag} NAME."
            )
    lowered = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    looked = f"'{given}', " if given else ""
    raise DataError(
        f"no {what or kind} column found in {name} (looked for {looked}{', '.join(candidates)}); "
        f"the columns are: {', '.join(columns)}. Pass {flag} NAME."
    )
