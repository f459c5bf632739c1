"""The split policy of every task: which records train, which are evaluated and which choose the checkpoint.

A :class:`Plan` holds indices into the splits that were read; a task takes its records by them.

* **Drawn** (:func:`drawn`; classification and tagging): without an eval split, ``--eval-size`` records
  (default ``eval_fraction``) are drawn out of train with ``seed``. The validation split is the data's
  own when it has a test split and a validation split; else ``--val-size`` records drawn out of train
  with ``[seed, 1]``; else, by default when the eval split is a separate test split, 10 % of train (at
  most 2000); ``--val-size 0``: none. Then ``--train-size``/``--eval-size`` keep the first records of a
  ``seed`` permutation.
* **In file order** (:func:`in_file_order`; causal LM): nothing is shuffled. Without an eval file,
  ``--train-size N`` trains on records ``0..N-1`` and evaluates on the ``--eval-size`` after them
  (default: all the rest); without it, the last ``--eval-size`` records (default 10 %) are the eval split.
  With an eval file, the first records of each. ``--val-size N``: the last N train records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from loratune.data.options import DataOptions
from loratune.errors import DataError

log = logging.getLogger(__name__)

AUTO_VAL_FRACTION, AUTO_VAL_MAX = 0.1, 2000  # the validation split held out of train by default
AUTO_EVAL_FRACTION = 0.1


class Split(Protocol):
    """A split as read: its records' count, its name (a file name, ``name [test]``) and what the data calls it."""

    name: str
    kind: str  # "test" or "validation"

    def __len__(self) -> int: ...


@dataclass
class Plan:
    """Indices of the records each split takes: ``train`` and ``val`` into the train split, ``eval`` into the
    eval split (into the train split when ``eval_from_train``); ``own_val``: the data's validation split is
    taken whole. ``selection``: where the best checkpoint is chosen, in words."""

    train: list[int]
    eval: list[int]
    val: list[int] | None
    selection: str
    eval_from_train: bool = False
    own_val: bool = False


def take(records: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    """``records`` at ``indices``, in that order."""
    return [records[i] for i in indices]


def drawn(train: Split, ev: Split | None, val: Split | None, options: DataOptions, unit: str, keep_order: bool) -> Plan:
    """The drawn plan (see the module); ``keep_order``: records left after a draw stay in file order
    (else in the drawn order); ``unit``: what a record is called in messages."""
    n, seed, eval_size = len(train), options.seed, options.eval_size
    rest = list(range(n))
    if ev is None:
        n_eval = eval_size if eval_size is not None else max(1, round(n * options.eval_fraction))
        if n < 2 or n_eval >= n:
            raise DataError(
                f"{train.name} has {n} {unit}, too few to split off {n_eval} for eval; pass a larger file, "
                "a smaller --eval-size, or an --eval-file."
            )
        evaluated, rest = _draw(rest, n_eval, np.random.default_rng(seed), keep_order)
        eval_size = None  # already applied
    else:
        evaluated = list(range(len(ev)))
    plan = _validation(train, ev, val, rest, options, unit, keep_order)
    plan.train = _subsample(plan.train, options.train_size, seed, train.name, unit)
    plan.eval = _subsample(evaluated, eval_size, seed, ev.name if ev else train.name, unit)
    plan.eval_from_train = ev is None
    return plan


def _draw(rows: list[int], n: int, rng: np.random.Generator, keep_order: bool) -> tuple[list[int], list[int]]:
    """``n`` rows drawn with ``rng``, and the rows left (in file order with ``keep_order``)."""
    perm = rng.permutation(len(rows))
    kept = np.sort(perm[n:]) if keep_order else perm[n:]
    return take(rows, perm[:n]), take(rows, kept)


def _validation(
    train: Split, ev: Split | None, val: Split | None, rest: list[int], options: DataOptions, unit: str, keep: bool
) -> Plan:
    """The validation rows and the train rows left, as a plan without its eval rows yet."""
    evaluated = ev.name if ev is not None else f"{train.name}, held out"
    shared = f"the eval split ({evaluated}), which is also the one reported"
    val_size = options.val_size
    if val_size == 0:
        return Plan(rest, [], None, f"{shared}: --val-size 0")
    if val is not None and val_size is None:
        return Plan(rest, [], None, f"the dataset's validation split ({val.name})", own_val=True)
    if val_size is None and (ev is None or ev.kind != "test"):
        return Plan(
            rest, [], None, f"{shared}: there is no separate test split (--val-size N holds a validation split out)"
        )
    n = val_size if val_size is not None else min(AUTO_VAL_MAX, max(1, round(AUTO_VAL_FRACTION * len(rest))))
    if n >= len(rest):
        raise DataError(f"--val-size {n} leaves none of the {len(rest)} train {unit} to train on; pass a smaller one.")
    held, left = _draw(rest, n, np.random.default_rng([options.seed, 1]), keep)
    why = "--val-size" if val_size is not None else "10 % by default, as the eval split is a separate test split"
    return Plan(left, [], held, f"{n} {unit} held out of the train split ({why})")


def _subsample(rows: list[int], size: int | None, seed: int, name: str, unit: str) -> list[int]:
    """The first ``size`` rows of a ``seed`` permutation (all rows, in order, when ``size`` is None)."""
    if size is None:
        return rows
    if size > len(rows):
        log.warning("%s has %d %s, fewer than the %d asked for; using all of them", name, len(rows), unit, size)
        size = len(rows)
    return take(rows, np.random.default_rng(seed).permutation(len(rows))[:size])


def in_file_order(n_train: int, n_eval: int | None, train: Path, eval_file: Path | None, options: DataOptions) -> Plan:
    """The in-file-order plan (see the module) of ``n_train`` records of ``train`` and ``n_eval`` of ``eval_file``
    (None: no eval file). ``options.for_eval``: only the eval split matters, so the train split may be empty."""
    if eval_file is None:
        evaluated, kept, where = _tail(n_train, train, options)
    else:
        kept = list(range(n_train))[: options.train_size]
        evaluated = list(range(n_eval or 0))[: options.eval_size]
        where = f"records 0-{len(evaluated) - 1} of {eval_file}"
    val_size = options.val_size if not options.for_eval else None
    if not val_size:
        selection, held = f"the eval split ({where}), which is also the one reported", None
    elif val_size >= len(kept):
        raise DataError(f"--val-size {val_size} leaves none of the {len(kept)} train records; pass a smaller one")
    else:
        kept, held = kept[:-val_size], kept[-val_size:]
        selection = f"the last {val_size} train records (--val-size)"
    if not options.for_eval and not kept:
        raise DataError(f"no train records are left in {train}; pass a smaller --eval-size or an --eval-file")
    return Plan(kept, evaluated, held, selection, eval_from_train=eval_file is None)


def _tail(n: int, path: Path, options: DataOptions) -> tuple[list[int], list[int], str]:
    """The eval records, the train records and where the eval records are, from one file of ``n`` records."""
    train_size, eval_size = options.train_size, options.eval_size
    if train_size is not None:
        if train_size >= n:
            raise DataError(
                f"--train-size {train_size} leaves none of the {n} records of {path} for eval; "
                "pass a smaller --train-size or an --eval-file"
            )
        end = n if eval_size is None else min(n, train_size + eval_size)
        if eval_size is not None and train_size + eval_size > n:
            log.warning(
                "%s has %d records: the eval split is records %d-%d, fewer than --eval-size %d",
                path,
                n,
                train_size,
                n - 1,
                eval_size,
            )
        return list(range(train_size, end)), list(range(train_size)), f"records {train_size}-{end - 1} of {path.name}"
    n_eval = eval_size if eval_size is not None else max(1, round(n * AUTO_EVAL_FRACTION))
    if n_eval > n or (n_eval == n and not options.for_eval):
        raise DataError(
            f"{path} has {n} records, too few to hold {n_eval} out for eval; "
            "pass a larger file, a smaller --eval-size, or an --eval-file"
        )
    return list(range(n - n_eval, n)), list(range(n - n_eval)), f"records {n - n_eval}-{n - 1} of {path.name}"
