"""Readers: one per file format, each turning a file into records; their errors are one-line DataErrors.

* tables (CSV, TSV, JSON, JSONL, Parquet) as a ``datasets.Dataset``, typed by the ``datasets`` builders:
  :func:`read_table`;
* JSON and JSON lines as Python records, each with where it starts (nested fields such as word
  lists): :func:`json_records`;
* CoNLL columns (a word and its tag per line): :func:`conll_sentences`;
* plain text, its documents the paragraphs between blank lines: :func:`paragraphs`.

Text is decoded as ``--encoding`` (default UTF-8); a file that is not valid UTF-8, with no encoding
given, is read with its undecodable bytes replaced and one warning (:func:`text_errors`).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from loratune.errors import DataError
from loratune.hub import exception_chain

log = logging.getLogger(__name__)

# file suffix -> (datasets builder, extra builder kwargs)
TABLE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
JSON_SUFFIXES = (".json", ".jsonl")


def read_table(path: Path, encoding: str | None = None) -> datasets.Dataset:
    """One table file, read with the ``datasets`` builder for its suffix."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(
            f"cannot read {path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(TABLE_FORMATS)}."
        )
    builder, kwargs = TABLE_FORMATS[suffix]
    try:
        if builder != "parquet" and text_errors(str(path), _chunks(path), encoding) == "replace":
            with tempfile.TemporaryDirectory() as tmp:  # datasets 4.x cannot decode with replacement
                return _load_file(builder, _utf8_copy(path, Path(tmp)), kwargs)
        return _load_file(builder, path, {**kwargs, **({"encoding": encoding} if encoding else {})})
    except DataError:
        raise
    except Exception as err:  # mapped to one DataError below
        chain = exception_chain(err)
        if any("corresponds to no data" in str(e) or type(e).__name__ == "EmptyDataError" for e in chain):
            raise DataError(f"{path} has no rows; fill it with data or pass another file.") from err
        raise DataError(
            f"cannot read {path} as {suffix.lstrip('.')}: {one_line(err)}; fix the file or convert it to "
            "CSV/JSONL/Parquet with a header row."
        ) from err


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


def read_text(path: Path, encoding: str | None = None) -> str:
    """The text of ``path`` decoded as ``encoding`` (see :func:`text_errors`), without a byte-order mark."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); check the file.") from None
    errors = text_errors(str(path), [data], encoding)
    return data.decode(encoding or "utf-8", errors=errors).lstrip("\ufeff")


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


def json_records(text: str, name: str, *, lines: bool = False) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs of JSON text: a list of records (``record 0`` ...), ``{"data": [...]}``, or
    JSON lines (``line 1`` ...; ``lines``, or a .json file that is not one JSON value)."""
    whole, whole_error = None, None
    if not lines:
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as err:
            whole_error = err
    if isinstance(whole, dict) and len(whole) == 1 and isinstance(next(iter(whole.values())), list):
        whole = next(iter(whole.values()))  # {"data": [...]}
    if isinstance(whole, list):
        return [(f"record {i}", r) for i, r in enumerate(whole)]
    records: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except ValueError as err:
            first = whole_error is not None and not records  # not JSON lines either: the whole file's error
            where, error = (whole_error.lineno, whole_error) if first else (number, err)
            raise DataError(f"{name}:{where}: not valid JSON ({error}); fix the line.") from None
    return records


def conll_sentences(text: str, name: str) -> list[tuple[str, list[str], list[str]]]:
    """``(where, words, tags)`` of CoNLL text: a word per line, its tag in the last column, blank lines
    between sentences, ``-DOCSTART-`` lines skipped; ``where`` is the sentence's first line. Every word line
    of a document has as many columns as its first one: a line short of a column would take another as its tag."""
    out: list[tuple[str, list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    start, width = 0, None  # width: (columns, line) of the first word line; every word line has as many
    for number, line in enumerate([*text.splitlines(), ""], 1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                out.append((f"line {start}", words, tags))
                words, tags = [], []
            width = width if not columns else None  # a document (after -DOCSTART-) may have its own columns
            continue
        if len(columns) < 2:
            raise DataError(
                f"{name}:{number}: a word line needs the word and its tag (whitespace-separated, the tag "
                f"last), got {line.strip()!r}; fix the line, or separate sentences with an empty line."
            )
        width = width or (len(columns), number)
        if len(columns) != width[0]:
            raise DataError(
                f"{name}:{number}: {len(columns)} columns where line {width[1]} has {width[0]} (the tag is the "
                f"last column, so it must be the same one on every line), got {line.strip()!r}; fix the line."
            )
        if not words:
            start = number
        words.append(columns[0])
        tags.append(columns[-1])
    return out


def paragraphs(text: str) -> list[str]:
    """The documents of plain text: its paragraphs between blank lines, inner line breaks kept."""
    return [d.strip("\n") for d in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if d.strip()]


def one_line(err: BaseException | None) -> str:
    """The most specific message in an exception chain, on one line."""
    if err is None:
        return "unknown error"
    deepest = exception_chain(err)[-1]
    text = f"{type(deepest).__name__}: {deepest}" if str(deepest) else type(deepest).__name__
    return " ".join(text.split())[:300]
