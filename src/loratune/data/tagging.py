"""Where tagging (token-classification, NER) data comes from: CoNLL files, JSON/JSONL records, folders
and Hugging Face hub datasets.

Every source ends as a :class:`TaggingData`: ``datasets.Dataset`` splits with the columns ``tokens``
(list of words) and ``tags`` (list of tag ids, one per word), plus the id -> tag list.

* **CoNLL** (any file that is not ``.json``/``.jsonl``/``.parquet``, e.g. ``eng.train``, ``train.conll``):
  one word per line, whitespace-separated columns with the tag in the LAST one, a blank line between
  sentences, ``-DOCSTART-`` lines skipped.
* **JSON/JSONL**: one record per sentence with a list of words (``tokens``, ``words``) and a list of
  tags (``tags``, ``ner_tags``, ``labels``); ``--text-column``/``--label-column`` name others.
* **Hub datasets** (``conll2003``) and ``.parquet`` files: the same columns; tags given as ids of a
  ``Sequence(ClassLabel)`` feature are mapped through its names.

A malformed line or record is a :class:`~loratune.errors.DataError` naming the file and line (record).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from loratune.data.load import pick_column, read_source
from loratune.data.options import DataOptions
from loratune.data.readers import JSON_SUFFIXES, conll_sentences, json_records, read_table, read_text
from loratune.data.resolve import Layout
from loratune.data.splits import drawn, take
from loratune.errors import DataError

log = logging.getLogger(__name__)

TOKENS_COLUMN_CANDIDATES: tuple[str, ...] = ("tokens", "words")
TAGS_COLUMN_CANDIDATES: tuple[str, ...] = ("tags", "ner_tags", "labels", "label")
# file-name parts that name a split: CoNLL-2003 calls its dev set testa and its test set testb
LAYOUT = Layout(
    needs="token-cls needs tagged data: pass --train-file PATH (CoNLL or JSONL), a folder, or a hub dataset "
    "such as conll2003.",
    data="tagged words",
    examples="train.conll, eng.train",
    suffixes=None,
    test_names=("test", "testb"),
    validation_names=("validation", "valid", "dev", "val", "testa", "eval"),
    any_part=True,
)
_IOB = re.compile(r"^[BI]-.+$")
UNTRAINED = -100  # the label id that the loss and the metrics ignore


@dataclass
class TaggingData:
    """Tagged splits with columns ``tokens`` (list of str) and ``tags`` (list of int ids into ``labels``).

    With ``label_all_tokens`` the train split also has ``inner_tags``: the id that each word's later
    sub-tokens learn (B-X -> I-X). ``val`` (or None) chooses the best checkpoint; ``eval`` is scored.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    labels: list[str]
    source: str
    val: datasets.Dataset | None = None
    selection: str = ""
    label_all_tokens: bool = False
    tokens_column: str = "tokens"
    tags_column: str = "tags"

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass
class Sentences:
    """One raw split: words and their tag names per sentence, where each starts (line or record), its name."""

    tokens: list[list[str]]
    tags: list[list[str]]
    name: str
    where: list[str] = field(default_factory=list)  # "line 12" / "record 3", for messages
    kind: str = "test"  # "test" or "validation": what the source calls this split
    tokens_column: str = "tokens"
    tags_column: str = "tags"

    def __len__(self) -> int:
        return len(self.tokens)


# ---------------------------------------------------------------------------------------------------
# public entry point


def load_tagging(dataset: str | None = None, *, labels: Sequence[str] | None = None, **options: Any) -> TaggingData:
    """Load tagging data: ``dataset`` and ``options`` are :class:`DataOptions`' fields (see
    :func:`load_tagged_words`); ``labels``: the tag list to use (an adapter's)."""
    return load_tagged_words(DataOptions(dataset=dataset, **options), labels)


def load_tagged_words(options: DataOptions, labels: Sequence[str] | None = None) -> TaggingData:
    """Tagging data from a local file or folder (CoNLL, JSON/JSONL, parquet) or a hub dataset.

    The splits are every task's (``data.splits.drawn``): the validation split is the data's own dev
    split (a folder's ``dev``/``testa`` file, a hub ``validation`` split) when it has a separate test
    split. ``labels``: the tag list to use (an adapter's); eval tags outside it are an error. Without it,
    the tags of the train split, sorted, ``O`` first.
    """
    read = read_source(options, TaggedWords())
    train, ev, val = read.train, read.eval, read.val
    plan = drawn(train, ev, val, options, "sentences", keep_order=True)
    rows: Rows = _take((train.tokens, train.tags), plan.train)
    evaluated = ev if ev is not None else train
    eval_rows = _take((evaluated.tokens, evaluated.tags), plan.eval)
    val_rows = (val.tokens, val.tags) if plan.own_val else None
    if plan.val is not None:
        val_rows = _take((train.tokens, train.tags), plan.val)
    names = _tag_names(labels, rows)
    _check_known(
        names, labels, train.name, [(ev.name if ev else train.name, eval_rows), (val.name if val else "", val_rows)]
    )
    _warn_not_iob(names)
    return TaggingData(
        train=_dataset(rows, names, options.label_all_tokens),
        eval=_dataset(eval_rows, names),
        labels=names,
        source=read.source,
        val=_dataset(val_rows, names) if val_rows is not None else None,
        selection=plan.selection,
        label_all_tokens=options.label_all_tokens,
        tokens_column=train.tokens_column,
        tags_column=train.tags_column,
    )


class TaggedWords:
    """The token-cls schema: a list of words and a list of tags per sentence."""

    layout = LAYOUT
    unit = "sentences"

    def read_file(self, path: Path, options: DataOptions, train: Sentences | None = None) -> Sentences:
        return read_tagged_file(path, options.text_column, options.label_column, encoding=options.encoding)

    def read_dataset(self, ds: datasets.Dataset, name: str, options: DataOptions) -> Sentences:
        return sentences_from_dataset(ds, name, options.text_column, options.label_column)

    def is_labelled(self, split: Sentences) -> bool:
        return True


def is_iob(tag: str) -> bool:
    """Whether ``tag`` is ``O`` or an IOB/IOB2 tag such as ``B-PER``/``I-PER``."""
    return tag == "O" or bool(_IOB.match(tag))


def inside_tag(tag: str) -> str:
    """The tag of a word's later pieces: ``B-PER`` -> ``I-PER``; others (``O``, ``I-PER``) unchanged."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def ordered_labels(tags: set[str]) -> list[str]:
    """Tag names sorted, ``O`` first."""
    return sorted(tags, key=lambda t: (t != "O", t))


# ---------------------------------------------------------------------------------------------------
# readers


def read_tagged_file(
    path: Path, text_column: str | None = None, label_column: str | None = None, *, encoding: str | None = None
) -> Sentences:
    """One file: JSON/JSONL records, a parquet table, or else CoNLL columns."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return sentences_from_dataset(read_table(path), path.name, text_column, label_column)
    text = read_text(path, encoding)
    if suffix in JSON_SUFFIXES:
        return read_json_records(text, path.name, text_column, label_column, lines=suffix == ".jsonl")
    if text_column is not None or label_column is not None:
        log.warning(
            "%s is read as CoNLL columns (the word first, the tag last); --text-column and "
            "--label-column name JSON fields and are not used for it",
            path.name,
        )
    return read_conll(text, path.name)


def read_conll(text: str, name: str) -> Sentences:
    """Sentences of CoNLL text (``data.readers.conll_sentences``)."""
    out = Sentences([], [], name)
    for where, words, tags in conll_sentences(text, name):
        out.tokens.append(words)
        out.tags.append(tags)
        out.where.append(where)
    if not out.tokens:
        raise DataError(f"{name} has no sentences; fill it with CoNLL lines (word ... tag) or pass another file.")
    return out


def read_json_records(
    text: str, name: str, text_column: str | None, label_column: str | None, *, lines: bool = False
) -> Sentences:
    """Sentences of JSON records (``data.readers.json_records``): each a words list and a tags list."""
    records = json_records(text, name, lines=lines)
    if not records:
        raise DataError(f'{name} has no records; fill it with {{"tokens": [...], "tags": [...]}} records.')
    first = records[0][1]
    if not isinstance(first, dict):
        raise DataError(
            f"{name} {records[0][0]}: expected an object with a words list and a tags list, "
            f"got {type(first).__name__}; fix the file."
        )
    tokens_col = pick_column(list(first), text_column, TOKENS_COLUMN_CANDIDATES, "text", name, "words")
    tags_col = pick_column(list(first), label_column, TAGS_COLUMN_CANDIDATES, "label", name, "tags")
    out = Sentences([], [], name, tokens_column=tokens_col, tags_column=tags_col)
    for where, record in records:
        words, tags = _checked_record(record, tokens_col, tags_col, f"{name} {where}")
        if words:
            out.tokens.append(words)
            out.tags.append(tags)
            out.where.append(where)
    if not out.tokens:
        raise DataError(f"{name} has no words in any record; fill it or pass another file.")
    return out


def _checked_record(record: Any, tokens_col: str, tags_col: str, where: str) -> tuple[list[str], list[str]]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}; fix the record.")
    missing = [c for c in (tokens_col, tags_col) if c not in record]
    if missing:
        raise DataError(
            f"{where}: no '{missing[0]}' field (the fields are: {', '.join(map(str, record))}); "
            "fix the record or pass --text-column/--label-column."
        )
    words, tags = record[tokens_col], record[tags_col]
    for col, value in ((tokens_col, words), (tags_col, tags)):
        if not isinstance(value, list):
            raise DataError(
                f"{where}: '{col}' must be a list (one entry per word), got {type(value).__name__}; fix the record."
            )
    if len(words) != len(tags):
        raise DataError(
            f"{where}: {len(words)} words in '{tokens_col}' but {len(tags)} tags in '{tags_col}'; "
            "give one tag per word."
        )
    bad = [v for v in (*words, *tags) if not isinstance(v, str | int) or isinstance(v, bool)]
    bad += [v for v in words if isinstance(v, str) and not v.strip()]
    if bad:
        raise DataError(f"{where}: words and tags must be non-empty strings, got {bad[0]!r}; fix the record.")
    number = next((t for t in tags if isinstance(t, int)), None)
    if number is not None:  # as the string "0" it would be scored as an entity type, not as O
        raise DataError(
            f"{where}: tag {number} is a number and the data names no tag for it; write the tag names "
            "(O, B-PER, ...), or use a dataset whose ClassLabel feature names its ids."
        )
    return [str(w) for w in words], list(tags)


def sentences_from_dataset(
    ds: datasets.Dataset, name: str, text_column: str | None = None, label_column: str | None = None
) -> Sentences:
    """The sentences of a ``datasets.Dataset`` (hub split, parquet file); ``Sequence(ClassLabel)`` tag ids
    are mapped through the feature's names."""
    if len(ds) == 0:
        raise DataError(f"{name} has no rows; fill it with data or pass another split.")
    columns = list(ds.column_names)
    tokens_col = pick_column(columns, text_column, TOKENS_COLUMN_CANDIDATES, "text", name, "words")
    tags_col = pick_column(columns, label_column, TAGS_COLUMN_CANDIDATES, "label", name, "tags")
    feature = ds.features.get(tags_col)
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) in datasets 2/3
    if inner is None and isinstance(feature, list) and feature:  # a List feature in datasets 4
        inner = feature[0]
    names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None
    rows = ds.select_columns([tokens_col, tags_col]).to_dict()
    out = Sentences([], [], name, tokens_column=tokens_col, tags_column=tags_col)
    for i, (words, tags) in enumerate(zip(rows[tokens_col], rows[tags_col], strict=True)):
        if names is not None and isinstance(tags, list):
            bad = next((t for t in tags if not isinstance(t, int) or not 0 <= t < len(names)), None)
            if bad is not None:
                raise DataError(
                    f"{name} row {i}: tag id {bad!r} is outside 0..{len(names) - 1} "
                    f"({', '.join(names)}); use a tagged split."
                )
            tags = [names[t] for t in tags]
        words, tags = _checked_record({tokens_col: words, tags_col: tags}, tokens_col, tags_col, f"{name} row {i}")
        if words:
            out.tokens.append(words)
            out.tags.append(tags)
            out.where.append(f"row {i}")
    return out


# ---------------------------------------------------------------------------------------------------
# labels, sizes, splitting

Rows = tuple[list[list[str]], list[list[str]]]  # words and tag names per sentence


def _tag_names(labels: Sequence[str] | None, rows: Rows) -> list[str]:
    """``labels`` (an adapter's), else the tags of the train ``rows``, sorted, ``O`` first."""
    return list(labels) if labels is not None else ordered_labels({t for tags in rows[1] for t in tags})


def _take(rows: Rows, indices: list[int]) -> Rows:
    return take(rows[0], indices), take(rows[1], indices)


def _warn_not_iob(names: list[str]) -> None:
    """One warning naming the tags that are not IOB: they are scored as given."""
    odd = sorted({t for t in names if not is_iob(t)})
    if odd:
        log.warning(
            "tags %s are not IOB tags (O, B-X, I-X): entities are scored with seqeval's default mode, "
            "and a tag without B-/I- counts as an inside tag",
            ", ".join(odd[:5]),
        )


def _check_known(
    names: list[str], labels: Sequence[str] | None, train: str, splits: list[tuple[str, Rows | None]]
) -> None:
    """An error naming the first tags of ``splits`` outside ``names`` (the adapter's ``labels``, or the train's)."""
    known = "the adapter knows" if labels is not None else f"the train data ({train}) has"
    known_set = set(names)
    for split_name, split_rows in splits:
        if split_rows is None:
            continue
        unseen = Counter(t for tags in split_rows[1] for t in tags if t not in known_set)
        if unseen:
            shown = ", ".join(f"'{t}' ({c} words)" for t, c in sorted(unseen.items())[:5])
            raise DataError(
                f"{split_name} has tags that {known} not: {shown}; the known tags are: "
                f"{', '.join(names)}. Fix the tags or use matching data."
            )


def _dataset(rows: Rows, names: list[str], label_all_tokens: bool = False) -> datasets.Dataset:
    to_id = {name: i for i, name in enumerate(names)}
    columns: dict[str, Any] = {"tokens": rows[0], "tags": [[to_id[t] for t in tags] for tags in rows[1]]}
    features = {"tokens": datasets.List(datasets.Value("string")), "tags": datasets.List(datasets.Value("int64"))}
    if label_all_tokens:
        inner = [to_id.get(inside_tag(name), i) for i, name in enumerate(names)]
        columns["inner_tags"] = [[inner[t] for t in tags] for tags in columns["tags"]]
        features["inner_tags"] = datasets.List(datasets.Value("int64"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))
