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

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from loratune.data.sources import (
    AUTO_VAL_FRACTION,
    AUTO_VAL_MAX,
    TWEETS_ALIAS,
    _check_sizes,
    _existing_file,
    _hub_load,
    _looks_like_path,
    _read_dataset,
    check_encoding,
    text_errors,
)
from loratune.errors import DataError

log = logging.getLogger(__name__)

TOKENS_COLUMN_CANDIDATES: tuple[str, ...] = ("tokens", "words")
TAGS_COLUMN_CANDIDATES: tuple[str, ...] = ("tags", "ner_tags", "labels", "label")
JSON_SUFFIXES = (".json", ".jsonl")
# file-name parts that name a split: CoNLL-2003 calls its dev set testa and its test set testb
_TRAIN_NAMES = ("train",)
_TEST_NAMES = ("test", "testb")
_VALIDATION_NAMES = ("validation", "valid", "dev", "val", "testa", "eval")
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


# ---------------------------------------------------------------------------------------------------
# public entry point


def load_tagging(
    dataset: str | None = None,
    *,
    train_file: str | Path | None = None,
    eval_file: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    train_size: int | None = None,
    eval_size: int | None = None,
    val_size: int | None = None,
    seed: int = 42,
    eval_fraction: float = 0.1,
    encoding: str | None = None,
    dataset_revision: str | None = None,
    label_all_tokens: bool = False,
    labels: Sequence[str] | None = None,
) -> TaggingData:
    """Load tagging data from a local file or folder (CoNLL, JSON/JSONL, parquet) or a hub dataset.

    The data options mean what they mean for text classification (``load_text_classification``):
    the validation split is the data's own dev split (a folder's ``dev``/``testa`` file, a hub
    ``validation`` split) when it has a separate test split, else ``val_size`` sentences held out of
    train, else by default 10 % of train (at most 2000) when the eval split is a separate test split.
    ``labels``: the tag list to use (an adapter's); eval tags outside it are an error. Without it, the
    tags of the train split, sorted, ``O`` first.
    """
    _check_sizes(train_size, eval_size, eval_fraction)
    if val_size is not None and (not isinstance(val_size, int) or val_size < 0):
        raise DataError(f"--val-size must be an integer >= 0, got {val_size!r}; pass a number of sentences.")
    check_encoding(encoding)
    columns = (text_column, label_column)
    train, ev, val, source = _load_splits(dataset, train_file, eval_file, columns, encoding, dataset_revision)
    if val is not None and val_size is not None:  # --val-size holds validation out of train instead
        source, val = source.replace(f" + {val.name}", ""), None
    return _finish(
        train,
        ev,
        val,
        source,
        train_size=train_size,
        eval_size=eval_size,
        val_size=val_size,
        seed=seed,
        eval_fraction=eval_fraction,
        label_all_tokens=label_all_tokens,
        labels=labels,
    )


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
# sources


def _load_splits(
    dataset: str | None,
    train_file: str | Path | None,
    eval_file: str | Path | None,
    columns: tuple[str | None, str | None],
    encoding: str | None,
    revision: str | None,
) -> tuple[Sentences, Sentences | None, Sentences | None, str]:
    if dataset is not None and (train_file is not None or eval_file is not None):
        raise DataError(f"both a dataset ('{dataset}') and --train-file/--eval-file were given; pass one of them.")
    if dataset is None and train_file is None:
        if eval_file is not None:
            raise DataError("--eval-file was given without --train-file; pass --train-file PATH as well.")
        raise DataError(
            "no dataset given; token-cls needs tagged data: pass --train-file PATH (CoNLL or JSONL), "
            "a folder, or a hub dataset such as conll2003."
        )
    if dataset is not None and dataset.strip().lower() == TWEETS_ALIAS:
        raise DataError(
            "tweets is text-classification data (a label per text), not tagged words; for "
            "--task token-cls pass --train-file PATH (CoNLL or JSONL), a folder, or conll2003."
        )
    if revision is not None and (dataset is None or Path(dataset).expanduser().exists()):
        raise DataError(
            f"--dataset-revision {revision} pins a dataset on the Hugging Face hub, and this data is "
            "local; drop --dataset-revision"
        )
    if dataset is None:
        train_path = _existing_file(Path(train_file))
        train = read_tagged_file(train_path, *columns, encoding=encoding)
        if eval_file is None:
            return train, None, None, str(train_path)
        eval_path = _existing_file(Path(eval_file))
        if eval_path.resolve() == train_path.resolve():
            return train, train, None, str(eval_path)
        ev = read_tagged_file(eval_path, *columns, encoding=encoding)
        return train, ev, None, f"train: {train_path}, eval: {eval_path}"
    path = Path(dataset).expanduser()
    if path.is_dir():
        return _load_folder(path, columns, encoding)
    if path.is_file():
        return read_tagged_file(path, *columns, encoding=encoding), None, None, str(path)
    if _looks_like_path(dataset):
        raise DataError(f"'{dataset}' does not exist; pass an existing file or folder, or a hub dataset name.")
    return _load_hub(dataset, columns, revision)


def _split_role(path: Path) -> str | None:
    """``train``, ``test`` or ``validation`` as the file name says (``eng.testa`` -> validation), else None."""
    parts = [p for p in re.split(r"[_\-.\s]", path.name.lower()) if p]
    for role, names in (("train", _TRAIN_NAMES), ("test", _TEST_NAMES), ("validation", _VALIDATION_NAMES)):
        if any(part in names for part in parts):
            return role
    return None


def _load_folder(
    folder: Path, columns: tuple[str | None, str | None], encoding: str | None
) -> tuple[Sentences, Sentences | None, Sentences | None, str]:
    """A folder with a train file and optionally a test and a dev file (``eng.train``/``eng.testb``/``eng.testa``)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    by_role: dict[str, list[Path]] = {}
    for p in files:
        role = _split_role(p)
        if role is not None:
            by_role.setdefault(role, []).append(p)
    for role, found in by_role.items():
        if len(found) > 1:
            raise DataError(
                f"folder {folder} has several {role} files ({', '.join(p.name for p in found)}); "
                "pass --train-file and --eval-file to pick them."
            )
    if "train" not in by_role:
        names = ", ".join(p.name for p in files) or "no files"
        raise DataError(
            f"folder {folder} has no train file (found: {names}); add one whose name says train "
            "(train.conll, eng.train) or pass --train-file PATH."
        )
    train = read_tagged_file(by_role["train"][0], *columns, encoding=encoding)
    test = read_tagged_file(by_role["test"][0], *columns, encoding=encoding) if "test" in by_role else None
    val = read_tagged_file(by_role["validation"][0], *columns, encoding=encoding) if "validation" in by_role else None
    if val is not None:
        val.kind = "validation"
    ev, val = (test, val) if test is not None else (val, None)
    named = " + ".join(s.name for s in (ev, val) if s is not None)
    return train, ev, val, f"{folder} ({train.name}" + (f" + {named})" if named else ")")


def _load_hub(
    name: str, columns: tuple[str | None, str | None], revision: str | None
) -> tuple[Sentences, Sentences | None, Sentences | None, str]:
    """A hub dataset (``conll2003``): train, its test split as eval and its validation split as val."""
    dsd = _hub_load(name, revision)
    if "train" not in dsd:
        raise DataError(f"hub dataset '{name}' has no train split (splits: {', '.join(dsd)}); pass local files.")
    train = sentences_from_dataset(dsd["train"], f"{name} [train]", *columns)
    test = sentences_from_dataset(dsd["test"], f"{name} [test]", *columns) if "test" in dsd else None
    val = sentences_from_dataset(dsd["validation"], f"{name} [validation]", *columns) if "validation" in dsd else None
    if val is not None:
        val.kind = "validation"
    ev, val = (test, val) if test is not None else (val, None)
    names = " + ".join(s.name.split("[")[-1].rstrip("]") for s in (ev, val) if s is not None)
    return train, ev, val, f"hub dataset '{name}' (train" + (f" + {names})" if names else ")")


# ---------------------------------------------------------------------------------------------------
# readers


def read_tagged_file(
    path: Path, text_column: str | None = None, label_column: str | None = None, *, encoding: str | None = None
) -> Sentences:
    """One file: JSON/JSONL records, a parquet table, or else CoNLL columns."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return sentences_from_dataset(_read_dataset(path), path.name, text_column, label_column)
    text = _read_text(path, encoding)
    if suffix in JSON_SUFFIXES:
        return read_json_records(text, path.name, text_column, label_column, lines=suffix == ".jsonl")
    if text_column is not None or label_column is not None:
        log.warning(
            "%s is read as CoNLL columns (the word first, the tag last); --text-column and "
            "--label-column name JSON fields and are not used for it",
            path.name,
        )
    return read_conll(text, path.name)


def _read_text(path: Path, encoding: str | None) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); check the file.") from None
    errors = text_errors(str(path), [data], encoding)
    return data.decode(encoding or "utf-8", errors=errors).lstrip("\ufeff")


def read_conll(text: str, name: str) -> Sentences:
    """Sentences of CoNLL text: a word per line, its tag in the last column, blank lines between sentences."""
    out = Sentences([], [], name)
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def close() -> None:
        if words:
            out.tokens.append(list(words))
            out.tags.append(list(tags))
            out.where.append(f"line {start}")
            words.clear()
            tags.clear()

    for number, line in enumerate(text.splitlines(), 1):
        columns = line.split()
        if not columns:
            close()
            continue
        if columns[0] == "-DOCSTART-":
            close()
            continue
        if len(columns) < 2:
            raise DataError(
                f"{name}:{number}: a word line needs the word and its tag (whitespace-separated, the tag "
                f"last), got {line.strip()!r}; fix the line, or separate sentences with an empty line."
            )
        if not words:
            start = number
        words.append(columns[0])
        tags.append(columns[-1])
    close()
    if not out.tokens:
        raise DataError(f"{name} has no sentences; fill it with CoNLL lines (word ... tag) or pass another file.")
    return out


def read_json_records(
    text: str, name: str, text_column: str | None, label_column: str | None, *, lines: bool = False
) -> Sentences:
    """Sentences of JSON (a list of records) or JSON lines (a record per line; ``lines``, or a .json file
    that is not one JSON value): each a words list and a tags list."""
    records: list[tuple[str, Any]]
    stripped = text.strip()
    if not stripped:
        raise DataError(f'{name} has no records; fill it with {{"tokens": [...], "tags": [...]}} records.')
    whole = None
    if not lines:
        try:
            whole = json.loads(stripped)
        except ValueError:
            whole = None
    if isinstance(whole, list):
        records = [(f"record {i}", r) for i, r in enumerate(whole)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except ValueError as err:
                raise DataError(f"{name}:{number}: not valid JSON ({err}); fix the line.") from None
    if not records:
        raise DataError(f'{name} has no records; fill it with {{"tokens": [...], "tags": [...]}} records.')
    first = records[0][1]
    if not isinstance(first, dict):
        raise DataError(
            f"{name} {records[0][0]}: expected an object with a words list and a tags list, "
            f"got {type(first).__name__}; fix the file."
        )
    tokens_col = _pick(list(first), text_column, TOKENS_COLUMN_CANDIDATES, "text", name)
    tags_col = _pick(list(first), label_column, TAGS_COLUMN_CANDIDATES, "label", name)
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
        raise DataError(
            f"{where}: words and tags must be non-empty strings (tags may be ids), got {bad[0]!r}; fix the record."
        )
    return [str(w) for w in words], [str(t) for t in tags]


def sentences_from_dataset(
    ds: datasets.Dataset, name: str, text_column: str | None = None, label_column: str | None = None
) -> Sentences:
    """The sentences of a ``datasets.Dataset`` (hub split, parquet file); ``Sequence(ClassLabel)`` tag ids
    are mapped through the feature's names."""
    if len(ds) == 0:
        raise DataError(f"{name} has no rows; fill it with data or pass another split.")
    columns = list(ds.column_names)
    tokens_col = _pick(columns, text_column, TOKENS_COLUMN_CANDIDATES, "text", name)
    tags_col = _pick(columns, label_column, TAGS_COLUMN_CANDIDATES, "label", name)
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


def _pick(columns: list[str], given: str | None, candidates: Sequence[str], kind: str, name: str) -> str:
    flag = f"--{kind}-column"
    if given is not None:
        if given in columns:
            return given
        raise DataError(
            f"column '{given}' not found in {name}; the columns are: {', '.join(columns)}. Pass {flag} NAME."
        )
    lowered = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    raise DataError(
        f"no {'words' if kind == 'text' else 'tags'} column found in {name} (looked for "
        f"{', '.join(candidates)}); the columns are: {', '.join(columns)}. Pass {flag} NAME."
    )


# ---------------------------------------------------------------------------------------------------
# labels, sizes, splitting

Rows = tuple[list[list[str]], list[list[str]]]  # words and tag names per sentence


def _finish(
    train: Sentences,
    ev: Sentences | None,
    val: Sentences | None,
    source: str,
    *,
    train_size: int | None,
    eval_size: int | None,
    val_size: int | None,
    seed: int,
    eval_fraction: float,
    label_all_tokens: bool,
    labels: Sequence[str] | None,
) -> TaggingData:
    rows: Rows = (train.tokens, train.tags)
    if ev is None:
        n = len(rows[0])
        n_eval = eval_size if eval_size is not None else max(1, round(n * eval_fraction))
        if n < 2 or n_eval >= n:
            raise DataError(
                f"{train.name} has {n} sentences, too few to split off {n_eval} for eval; pass a "
                "larger file, a smaller --eval-size, or an --eval-file."
            )
        eval_rows, rows = _carve(rows, n_eval, np.random.default_rng(seed))
        eval_size = None
    else:
        eval_rows = (ev.tokens, ev.tags)
    val_rows, rows, selection = _validation(train, ev, val, rows, val_size, seed)
    rows = _subsample(rows, train_size, seed, train.name)
    eval_rows = _subsample(eval_rows, eval_size, seed, ev.name if ev else train.name)
    if labels is None:
        names = ordered_labels({t for tags in rows[1] for t in tags})
        known = f"the train data ({train.name}) has"
    else:
        names = list(labels)
        known = "the adapter knows"
    _check_known(names, known, [(ev.name if ev else train.name, eval_rows), (val.name if val else "", val_rows)])
    _warn_not_iob(names)
    return TaggingData(
        train=_dataset(rows, names, label_all_tokens),
        eval=_dataset(eval_rows, names),
        labels=names,
        source=source,
        val=_dataset(val_rows, names) if val_rows is not None else None,
        selection=selection,
        label_all_tokens=label_all_tokens,
        tokens_column=train.tokens_column,
        tags_column=train.tags_column,
    )


def _warn_not_iob(names: list[str]) -> None:
    """One warning naming the tags that are not IOB: they are scored as given."""
    odd = sorted({t for t in names if not is_iob(t)})
    if odd:
        log.warning(
            "tags %s are not IOB tags (O, B-X, I-X): entities are scored with seqeval's default mode, "
            "and a tag without B-/I- counts as an inside tag",
            ", ".join(odd[:5]),
        )


def _check_known(names: list[str], known: str, splits: list[tuple[str, Rows | None]]) -> None:
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


def _carve(rows: Rows, n: int, rng: np.random.Generator) -> tuple[Rows, Rows]:
    """``n`` sentences drawn with ``rng``, and the sentences left (in their order)."""
    perm = rng.permutation(len(rows[0]))
    held, kept = perm[:n], np.sort(perm[n:])
    return ([rows[0][i] for i in held], [rows[1][i] for i in held]), (
        [rows[0][i] for i in kept],
        [rows[1][i] for i in kept],
    )


def _subsample(rows: Rows, size: int | None, seed: int, name: str) -> Rows:
    if size is None:
        return rows
    if size > len(rows[0]):
        log.warning("%s has %d sentences, fewer than the %d asked for; using all of them", name, len(rows[0]), size)
        size = len(rows[0])
    idx = np.random.default_rng(seed).permutation(len(rows[0]))[:size]
    return [rows[0][i] for i in idx], [rows[1][i] for i in idx]


def _validation(
    train: Sentences, ev: Sentences | None, val: Sentences | None, rows: Rows, val_size: int | None, seed: int
) -> tuple[Rows | None, Rows, str]:
    """As ``sources._validation``: the validation rows (or None), the train rows left, and the selection in words."""
    evaluated = ev.name if ev is not None else f"{train.name}, held out"
    shared = f"the eval split ({evaluated}), which is also the one reported"
    if val_size == 0:
        return None, rows, f"{shared}: --val-size 0"
    if val is not None and val_size is None:
        return (val.tokens, val.tags), rows, f"the dataset's validation split ({val.name})"
    if val_size is None and (ev is None or ev.kind != "test"):
        return None, rows, f"{shared}: there is no separate test split (--val-size N holds a validation split out)"
    n = val_size if val_size is not None else min(AUTO_VAL_MAX, max(1, round(AUTO_VAL_FRACTION * len(rows[0]))))
    if n >= len(rows[0]):
        raise DataError(
            f"--val-size {n} leaves none of the {len(rows[0])} train sentences to train on; pass a smaller one."
        )
    held, left = _carve(rows, n, np.random.default_rng([seed, 1]))
    why = "--val-size" if val_size is not None else "10 % by default, as the eval split is a separate test split"
    return held, left, f"{n} sentences held out of the train split ({why})"
