"""The flags of ``loratune train`` (also taken by ``loratune compare``), built from ``RunConfig``'s table.

Each flag's ``dest`` is a ``RunConfig`` field. Every flag defaults to None ("not given"), so that a
recipe can set it; values arrive as strings and are checked by ``train.config`` (one set of rules and
messages for flags and recipes).
"""

from __future__ import annotations

import argparse
from typing import Any

from loratune.train.config import flag_of, options, range_text

_METAVAR = {"int": "N", "float": "X", "str": None, "list": "NAMES"}


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per ``RunConfig`` field, in argument groups."""
    groups: dict[str, Any] = {}
    for name, (option, kind, default) in options().items():
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
            if len(groups) == 1:  # the recipe flag opens the first group
                groups[option.group].add_argument("--config", help="YAML recipe (see recipes/); flags override it")
        group = groups[option.group]
        help_text = option.help
        if kind == "bool":
            action = "store_const" if option.flag else "store_true"
            extra = {"const": False} if option.flag else {}
            group.add_argument(flag_of(name), dest=name, action=action, default=None, help=help_text, **extra)
            continue
        facts = (
            [f"default {default:g}" if isinstance(default, float) else f"default {default}"]
            if default is not None
            else []
        )
        if option.low is not None or option.high is not None:
            facts.append(range_text(option))
        if facts:
            help_text += f" ({'; '.join(facts)})".replace("%", "%%")
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else _METAVAR[kind]
        group.add_argument(flag_of(name), dest=name, default=None, metavar=metavar, help=help_text)


def source_paths(cfg: Any, recipe: str | None = None) -> dict[str, Any]:
    """The local paths a run reads, by flag (``--overwrite`` of its output must not delete them)."""
    return {
        "--config": recipe,
        "--model": cfg.model,
        "--dataset": cfg.dataset,
        "--train-file": cfg.train_file,
        "--eval-file": cfg.eval_file,
    }
