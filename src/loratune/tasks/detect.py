"""Which task a dataset is for, read from the data itself when ``--task`` is not given.

* tokens with one tag each (CoNLL lines, or records with ``tokens`` and ``tags``/``ner_tags``): token-cls;
* instruction records (``instruction`` and ``output``) or a plain ``.txt`` text: causal-lm;
* anything else (a text and a label per row, the tweets demo): seq-cls.

Only the first records of a local file are read. A hub dataset is recognised by its column names when
its description can be fetched, and by a few well-known names (``conll2003``) otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.hub import hub_reachable

_TAG = re.compile(r"^(O|[BIESLU]-\S+|[BIESLU]_\S+)$")
_TOKEN_COLUMNS = ({"tokens", "tags"}, {"tokens", "ner_tags"})
_INSTRUCTION = {"instruction", "output"}
_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet", ".conll", ".iob", ".bio")
_KNOWN_TOKEN_SETS = ("conll2003", "conllpp", "wnut_17", "wikiann", "ncbi_disease", "bc2gm_corpus")
PEEK_LINES = 50


@dataclass(frozen=True)
class Guess:
    task: str
    reason: str  # one phrase: what in the data said so


def guess_task(dataset: str | None, train_file: str | None) -> Guess:
    """The task for ``dataset`` (hub name, folder, file, ``tweets``) or ``train_file``; seq-cls by default."""
    if train_file is not None:
        return _from_file(Path(train_file).expanduser())
    if dataset is None or dataset.strip().lower() == "tweets":
        return Guess("seq-cls", "the tweets demo data")
    path = Path(dataset).expanduser()
    if path.is_file():
        return _from_file(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file(p))
        return _from_file(files[0]) if files else Guess("seq-cls", f"no data file in {path} to look at")
    return _from_hub(dataset.strip())


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_DATA_SUFFIXES) or any(part in name for part in ("train", "eng."))


def _from_file(path: Path) -> Guess:
    if not path.is_file():
        return Guess("seq-cls", f"{path} cannot be read")  # the data loader names the problem
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        columns = _json_keys(path)
        return _from_columns(columns, f"the fields of {path.name}")
    if suffix in (".csv", ".tsv", ".parquet"):
        return Guess("seq-cls", f"{path.name} is a table")
    if _looks_like_conll(path):
        return Guess("token-cls", f"{path.name} has one token and its tag per line")
    if suffix == ".txt":
        return Guess("causal-lm", f"{path.name} is plain text")
    return Guess("seq-cls", f"{path.name} is neither CoNLL lines nor instruction records")


def _from_columns(columns: set[str], where: str) -> Guess:
    if any(names <= columns for names in _TOKEN_COLUMNS):
        return Guess("token-cls", f"{where} hold tokens and tags")
    if columns >= _INSTRUCTION:
        return Guess("causal-lm", f"{where} hold instruction records")
    if columns == {"text"}:
        return Guess("causal-lm", f"{where} hold text without labels")
    return Guess("seq-cls", f"{where} are {', '.join(sorted(columns)) or 'none'}")


def _json_keys(path: Path) -> set[str]:
    """The keys of the first record of a JSON list / JSON lines file (empty when there is none)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 20)
    except OSError:
        return set()
    stripped = head.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(head)  # a list shorter than the peek
        except ValueError:  # longer: decode its first record only
            try:
                records = [json.JSONDecoder().raw_decode(stripped[1:].lstrip())[0]]
            except ValueError:
                return set()
        first = records[0] if records else None
    else:
        line = next((x for x in head.splitlines() if x.strip()), "")
        try:
            first = json.loads(line)
        except ValueError:
            return set()
    return set(first) if isinstance(first, dict) else set()


def _looks_like_conll(path: Path) -> bool:
    """Whether the first lines are ``token ... tag`` lines (or ``-DOCSTART-``), most ending in an IOB tag."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines = [line.split() for _, line in zip(range(PEEK_LINES), fh, strict=False)]
    except OSError:
        return False
    rows = [cols for cols in lines if cols and cols[0] != "-DOCSTART-"]
    if not rows or any(len(cols) < 2 for cols in rows):
        return False
    return sum(bool(_TAG.match(cols[-1])) for cols in rows) >= 0.9 * len(rows)


def _from_hub(name: str) -> Guess:
    """A hub dataset's task from its column names; offline, from its name (seq-cls when unknown)."""
    features = None
    if hub_reachable():
        try:
            import datasets

            features = datasets.load_dataset_builder(name).info.features
        except Exception:  # gated, missing, or a loading script: fall back on the name
            features = None
    if features:
        return _from_columns(set(features), f"the columns of {name}")
    base = name.lower().rsplit("/", 1)[-1]
    if base in _KNOWN_TOKEN_SETS:
        return Guess("token-cls", f"{name} is a named-entity dataset")
    return Guess("seq-cls", f"{name}'s columns could not be read")
