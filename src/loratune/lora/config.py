"""``LoraConfig``: what to adapt and how, with validation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

ALL_LINEAR = "all-linear"


@dataclass
class LoraConfig:
    """Settings of one LoRA adapter.

    Each targeted linear layer computes ``y = W x + b + scaling * B A dropout(x)`` with
    ``A: r x in``, ``B: out x r`` and ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).

    Args:
        r: rank of the update ``B A``.
        alpha: numerator of the scaling.
        dropout: dropout probability on the LoRA branch's input, in ``[0, 1)``.
        target_modules: which layers get LoRA: a list of names, each naming a module as
            ``module_matches`` says (``"query"`` names ``bert.encoder.layer.0.attention.self.query``);
            a regex string that must match the full path (PEFT's rule for a string); or
            ``"all-linear"`` (every linear layer of the trunk: not the output head such as ``lm_head``,
            no layer outside the ``base_model_prefix`` module such as ``classifier`` or ``score``, and
            none of ``modules_to_save``).
        modules_to_save: modules trained in full and saved with the adapter (the task head, e.g.
            ``["classifier"]``). Each adapter gets its own copy.
        use_rslora: scale by ``alpha / sqrt(r)`` (rank-stabilised LoRA).
        init_lora_weights: ``True``: A Kaiming-uniform (a = sqrt(5)), B zero; ``"gaussian"``: A
            normal with std ``1/r``, B zero; ``False``: both random (tests only: the model changes).
        task_type, base_model_name_or_path: metadata written to ``adapter_config.json``.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | Literal["gaussian"] = True
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple | set):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.modules_to_save, tuple | set | str):
            mods = [self.modules_to_save] if isinstance(self.modules_to_save, str) else self.modules_to_save
            self.modules_to_save = list(mods)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}; use e.g. r=8")
        if not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}; a common choice is alpha = 2 * r")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}; use e.g. dropout=0.1")
        if not self.target_modules or (
            isinstance(self.target_modules, list) and not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError(
                "target_modules is empty: pass module names such as ['query', 'value'], a regex string, or 'all-linear'"
            )
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(f"init_lora_weights must be True, False or 'gaussian', got {self.init_lora_weights!r}")
        for name, rank in self.rank_pattern.items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"rank_pattern[{name!r}] must be an integer >= 1, got {rank!r}")
        for name, alpha in self.alpha_pattern.items():
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
                raise ValueError(f"alpha_pattern[{name!r}] must be a number > 0, got {alpha!r}")

    def rank_for(self, module_path: str) -> int:
        """The rank of one module: ``rank_pattern`` overrides ``r`` (PEFT semantics)."""
        key = _pattern_key(self.rank_pattern, module_path)
        return self.rank_pattern[key] if key is not None else self.r

    def scaling_for(self, module_path: str) -> float:
        """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA) for one module."""
        key = _pattern_key(self.alpha_pattern, module_path)
        alpha = self.alpha_pattern[key] if key is not None else self.alpha
        r = self.rank_for(module_path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def module_matches(path: str, name: str) -> bool:
    """Whether ``name`` names the module at dotted ``path``: the path itself or a dotted suffix of it.

    ``"query"`` and ``"self.query"`` name ``bert.encoder.layer.0.attention.self.query``; ``"uery"``
    does not. As in PEFT, a name may be a regex for such a suffix (``"layer\\.[01]\\.output\\.dense"``).
    This is the one rule for ``target_modules`` lists, ``modules_to_save`` and the rank and alpha patterns.
    """
    if path == name or path.endswith("." + name):
        return True
    try:
        return re.fullmatch(rf"(?:.*\.)?(?:{name})", path) is not None
    except re.error:
        return False


def module_within(path: str, names: list[str]) -> bool:
    """Whether a module that one of ``names`` names holds the module at ``path`` (or is it)."""
    parts = path.split(".")
    return any(module_matches(".".join(parts[:i]), n) for i in range(1, len(parts) + 1) for n in names)


def _pattern_key(patterns: dict, module_path: str) -> str | None:
    """The first pattern key that names ``module_path``."""
    return next((key for key in patterns if module_matches(module_path, key)), None)
