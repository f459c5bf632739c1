"""``RunConfig``: every option of a training run, from defaults, a YAML recipe and flags.

Precedence: flags > recipe > defaults. Defaults are the offline demo: the packaged MiniLM on the
packaged tweets. A recipe is a flat YAML mapping of the same names (dashes or underscores).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratune.errors import LoratuneError

METHODS = ("lora", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KERNELS = ("lean", "torch")
PADDINGS = ("longest", "max_length")


@dataclass
class RunConfig:
    """One training run. Field names are the CLI flags with dashes turned into underscores."""

    # what to train on
    model: str = "minilm"
    dataset: str | None = None  # None and no files: the demo's "tweets" (see DEMO)
    train_file: str | None = None
    eval_file: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    train_size: int | None = None
    eval_size: int | None = None
    max_length: int = 256
    padding: str = "longest"  # "longest": each batch to its longest sequence; "max_length": all to max_length
    group_by_length: bool = True  # batches of similar lengths (less padding)
    pad_to_multiple_of: int = 16  # batch lengths round up to this: few distinct shapes (time, memory)
    # how
    method: str = "lora"
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: list[str] | str | None = None  # None: the architecture's default
    rslora: bool = False
    epochs: int = 3
    max_steps: int | None = None
    pause_at_step: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float | None = None  # None: 5e-4 for LoRA, 2e-5 for full fine-tuning
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "auto"
    device: str | None = None
    gradient_checkpointing: bool = False
    kernels: str = "lean"  # "lean": loratune.kernels for attention and dropout; "torch": the model's own
    trust_remote_code: bool = False
    # run management
    output: str = "runs/demo"
    resume: bool = False
    overwrite: bool = False
    eval_every: int | None = None
    save_every: int | None = None
    early_stopping_patience: int | None = None
    log_every: int = 10
    progress: bool | None = None  # None: a bar on a terminal, plain lines otherwise
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-4 if self.method == "lora" else 2e-5

    def validate(self) -> RunConfig:
        """Raise ``LoratuneError`` naming the flag and the fix for any out-of-range value."""
        checks = [
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.padding in PADDINGS, f"--padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}"),
            (self.kernels in KERNELS, f"--kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}"),
            (self.r >= 1, f"--r must be >= 1, got {self.r}"),
            (self.alpha > 0, f"--alpha must be > 0, got {self.alpha}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"--max-steps must be >= 1, got {self.max_steps}",
            ),
            (
                self.pause_at_step is None or self.pause_at_step >= 1,
                f"--pause-at-step must be >= 1, got {self.pause_at_step}",
            ),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (self.learning_rate > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.pad_to_multiple_of >= 1, f"--pad-to-multiple-of must be >= 1, got {self.pad_to_multiple_of}"),
            (self.max_length >= 8, f"--max-length must be >= 8, got {self.max_length}"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other; pick one"),
        ]
        for ok, message in checks:
            if not ok:
                raise LoratuneError(message)
        return self


def _field_names() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into RunConfig field names; unknown keys are an error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LoratuneError(f"recipe {path} does not exist; see the recipes/ folder for examples") from None
    except (OSError, yaml.YAMLError) as err:
        detail = str(err).splitlines()[0]
        raise LoratuneError(f"recipe {path} is not readable YAML ({detail}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoratuneError(f"recipe {path} must be a mapping of option: value; fix the file")
    fields = _field_names()
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise LoratuneError(f"recipe {path} has unknown option {key!r}; known options: {', '.join(sorted(fields))}")
        out[name] = value
    return out


# The offline demo (`loratune train` with no data options): a subsample of the packaged tweets, sized
# to finish in a few minutes on 2 CPU cores. recipes/demo.yaml spells the same run out.
DEMO = {"dataset": "tweets", "train_size": 4000, "eval_size": 1000, "max_length": 128}


def build_config(recipe: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the recipe, then ``overrides`` (flags; None means "not given").

    When neither the recipe nor the flags name any data, the run is the offline demo (``DEMO``).
    """
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not any(values.get(k) for k in ("dataset", "train_file", "eval_file")):
        values = {**DEMO, **values}
    if isinstance(values.get("target_modules"), str) and "," in values["target_modules"]:
        values["target_modules"] = [t.strip() for t in values["target_modules"].split(",") if t.strip()]
    try:
        return RunConfig(**values).validate()
    except TypeError as err:  # a recipe value of the wrong type
        raise LoratuneError(f"bad option value: {err}; fix the recipe or flag") from None
